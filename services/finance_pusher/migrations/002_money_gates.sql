-- Money gates (docs/architecture.md): completed revisions the pusher refused because their reconciliation does
-- not prove them complete. Kept whole, so an admin's release pushes exactly the revision that was held.
CREATE TABLE holds (
    invoice_uuid   text        NOT NULL,
    revision       integer     NOT NULL,
    account        text        NOT NULL,
    completion     jsonb       NOT NULL,
    reason         text        NOT NULL,
    held_at        timestamptz NOT NULL DEFAULT now(),
    released_at    timestamptz,
    released_by    text,
    release_reason text,
    PRIMARY KEY (invoice_uuid, revision)
);

-- This ledger's identity as a sender: part of every Idempotency-Key. A crash re-push from this ledger reuses its
-- key (finance replays its answer); a new deployment (a new ledger) pushing the same revision again is a new
-- request (finance answers "updated"), never a replay of another deployment's answer.
CREATE TABLE sender (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id        text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sender (id) VALUES (md5(random()::text || clock_timestamp()::text));

-- Poller state (schema "poller"): the last poll per (job, account), read by `cloudbill status`,
-- and the inventory of the previous sync per account, from which tombstones are derived.

CREATE TABLE poll_status (
    job             text        NOT NULL,            -- balance | history | resources
    account         text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('running', 'ok', 'partial', 'failed')),
    last_tick       timestamptz,                     -- latest scheduled tick claimed: one poll per tick across replicas
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    last_success_at timestamptz,
    error           text,                            -- token-free error text of the last failure
    events          integer     NOT NULL DEFAULT 0,  -- events produced (and flushed) by the last poll
    detail          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    replica         text,
    PRIMARY KEY (job, account)
);

CREATE TABLE inventory (
    account       text        NOT NULL,
    kind          text        NOT NULL,
    resource_id   text        NOT NULL,
    name          text        NOT NULL,
    event_id      text        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, kind, resource_id)
);

-- Commit verification (services/ingester/verify.py). Applied with search_path = ingester.
-- A revision is *verified* once a read_committed reader of the cost-lines topic saw its end marker: a
-- broker restart can complete a transaction without writing its partition's COMMIT marker, and a later
-- abort then discards records whose commit the producer was told had succeeded. An unverified revision
-- the verifier has read past is re-emitted (same revision, same event ids), at most INGESTER_VERIFY_MAX_REEMITS times.
ALTER TABLE invoice_revisions ADD COLUMN verified_at timestamptz;
ALTER TABLE invoice_revisions ADD COLUMN reemits integer NOT NULL DEFAULT 0 CHECK (reemits >= 0);
ALTER TABLE invoice_revisions ADD COLUMN reemit_requested_at timestamptz;

-- Revisions committed before verification existed are taken as verified: their records may be past the topic's
-- retention, and re-emitting them would only repeat history.
UPDATE invoice_revisions SET verified_at = committed_at WHERE state = 'committed';

CREATE INDEX invoice_revisions_unverified ON invoice_revisions (committed_at)
    WHERE state = 'committed' AND verified_at IS NULL;

-- Where the verifier has read the cost-lines topic to (the next offset per partition), written in the same
-- transaction as the revisions it verified there: a restart reads on from here.
CREATE TABLE verify_positions (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (topic, partition)
);

-- Dead letters sent back to their source topic by `cloudbill dlq redrive`: one row per dead letter, so a
-- second redrive of the same dead letter is refused (unless asked again), and who/why/when is kept.
CREATE TABLE redrives (
    dead_letter_id text        PRIMARY KEY,   -- <dlq topic>:<partition>:<offset>
    source_topic   text        NOT NULL,
    state          text        NOT NULL CHECK (state IN ('pending', 'sent')),
    times          integer     NOT NULL DEFAULT 1,
    requested_by   text        NOT NULL,
    reason         text        NOT NULL DEFAULT '',
    requested_at   timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz
);

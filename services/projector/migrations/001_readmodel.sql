-- Read models projected from every topic by the projector (services/api/projector.py).
-- Every row is derived from event content only (no now()), so a replay into empty tables rebuilds them identically.

CREATE TABLE balance_snapshots (
    account                     text        NOT NULL,
    generated_at                timestamptz NOT NULL,
    month_to_date_balance_minor bigint      NOT NULL,
    account_balance_minor       bigint      NOT NULL,
    month_to_date_usage_minor   bigint      NOT NULL,
    currency                    text        NOT NULL,
    raw                         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    event_id                    text        NOT NULL,
    PRIMARY KEY (account, generated_at)
);
CREATE INDEX balance_snapshots_generated_at ON balance_snapshots (generated_at);

CREATE TABLE history_entries (
    event_id     text        PRIMARY KEY,
    account      text        NOT NULL,
    entry_type   text        NOT NULL,
    description  text        NOT NULL,
    amount_minor bigint      NOT NULL,
    currency     text        NOT NULL,
    date         timestamptz NOT NULL,
    invoice_id   text,
    invoice_uuid text
);
CREATE INDEX history_entries_date ON history_entries (date, event_id);

-- One row per invoice. status = the highest (status_revision, status_rank) seen: never moves backwards.
-- ranks: 0 discovered, 1 ingested, 2 matched, 3 completed, 4 pushed.
CREATE TABLE invoices (
    invoice_uuid               text        PRIMARY KEY,
    account                    text        NOT NULL,
    invoice_id                 text,
    period                     date,
    invoice_date               date,
    description                text,
    history_date               timestamptz,
    currency                   text,            -- unknown while only a push is in
    amount_minor               bigint,          -- from the billing history (InvoiceDiscovered)
    status_revision            integer     NOT NULL,
    status_rank                smallint    NOT NULL,
    revision                   integer,         -- the served revision: the highest completed one
    ingested_revision          integer,         -- the highest revision whose end marker is in
    ingested_lines_count       integer,
    csv_sha256                 text,
    parser_version             text,
    lines_count                integer,
    matched_count              integer,
    amount_net_minor           bigint,
    amount_tax_minor           bigint,
    amount_gross_minor         bigint,
    reconciliation_status      text,
    reconciliation_expected_minor   bigint,
    reconciliation_difference_minor bigint,
    pushed_revision            integer,
    pushed_to_finance_at       timestamptz,
    finance_invoice_id         text,
    finance_action             text,
    payload_sha256             text
);
CREATE INDEX invoices_period ON invoices (period DESC, invoice_uuid);
CREATE INDEX invoices_status ON invoices (status_rank, period DESC, invoice_uuid);

-- Cost lines of every revision still relevant. Only the invoice's served revision is `current` (and has `period`);
-- a newer revision's lines wait, not served, until its completion makes it current and deletes the older ones.
CREATE TABLE cost_lines (
    invoice_uuid      text        NOT NULL,
    revision          integer     NOT NULL,
    line_index        integer     NOT NULL,
    account           text        NOT NULL,
    current           boolean     NOT NULL DEFAULT false,
    period            date,
    product           text        NOT NULL,
    group_description text        NOT NULL,
    description       text        NOT NULL,
    hours             integer,
    start_at          timestamptz,
    end_at            timestamptz,
    amount_minor      bigint      NOT NULL,
    currency          text        NOT NULL,
    project_name      text        NOT NULL,
    category          text        NOT NULL,
    is_tax            boolean     NOT NULL,
    kind              text,
    name              text,
    resource_id       text,
    resource_key      text,
    rule              text,
    unmatched_reason  text,
    event_id          text        NOT NULL,
    PRIMARY KEY (invoice_uuid, revision, line_index)
);
-- The cost-lines endpoint: WHERE current AND period = ? [AND kind = ?] AND (invoice_uuid, line_index) > cursor
-- ORDER BY invoice_uuid, line_index. One partial index per shape keeps it an index range scan at millions of rows.
CREATE INDEX cost_lines_period_kind_cursor ON cost_lines (period, kind, invoice_uuid, line_index) WHERE current;
CREATE INDEX cost_lines_period_cursor ON cost_lines (period, invoice_uuid, line_index) WHERE current;

CREATE TABLE resources (
    account     text  NOT NULL,
    kind        text  NOT NULL,
    resource_id text  NOT NULL,
    name        text  NOT NULL,
    region      text  NOT NULL,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    event_id    text  NOT NULL,
    PRIMARY KEY (account, kind, resource_id)
);

-- Every dead-lettered record, once per (source record, failing service): a replay that dead-letters the same
-- poison record again adds a DLQ record but no row. Headers missing: keyed by the record's place in the DLQ.
CREATE TABLE dead_letters (
    dedup_key        text    PRIMARY KEY,
    dlq_topic        text    NOT NULL,
    dlq_partition    integer NOT NULL,
    dlq_offset       bigint  NOT NULL,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    error_class      text,
    error_message    text,
    service          text,
    failed_at        timestamptz,
    record_key       text,
    record_value     bytea
);
CREATE INDEX dead_letters_failed_at ON dead_letters (failed_at DESC);

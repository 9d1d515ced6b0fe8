-- The ingester's ledger: one row per invoice revision it reserved (see services/ingester/ledger.py).
-- Applied with search_path = ingester.
CREATE TABLE invoice_revisions (
    invoice_uuid       text        NOT NULL,
    revision           integer     NOT NULL CHECK (revision >= 1),
    account            text        NOT NULL,
    csv_sha256         text        NOT NULL,
    parser_version     text        NOT NULL,
    line_count         integer     NOT NULL CHECK (line_count >= 0),
    currency           text        NOT NULL,
    amount_net_minor   bigint      NOT NULL,
    amount_tax_minor   bigint      NOT NULL,
    amount_gross_minor bigint      NOT NULL,
    -- pending: reserved before the Kafka transaction; committed: the transaction is known to have committed;
    -- superseded: a pending revision abandoned for newer content (its number is never reused).
    state              text        NOT NULL CHECK (state IN ('pending', 'committed', 'superseded')),
    reserved_at        timestamptz NOT NULL,
    committed_at       timestamptz,
    PRIMARY KEY (invoice_uuid, revision),
    CHECK (amount_net_minor + amount_tax_minor = amount_gross_minor)
);

CREATE INDEX invoice_revisions_state ON invoice_revisions (state) WHERE state = 'pending';

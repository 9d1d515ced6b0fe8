-- The finance pusher's ledger: every push finance accepted, and per invoice what finance has now.

CREATE TABLE pushes (
    id                 bigserial PRIMARY KEY,
    invoice_uuid       text        NOT NULL,
    revision           integer     NOT NULL,
    payload_sha256     text        NOT NULL,
    idempotency_key    text        NOT NULL,
    finance_invoice_id text        NOT NULL,
    action             text        NOT NULL CHECK (action IN ('created', 'updated')),
    account            text        NOT NULL,
    pushed_at          timestamptz NOT NULL,
    -- Set once the invoice-pushed event is delivered; NULL means "re-emit it" (crash between the two).
    published_at       timestamptz
);
CREATE INDEX pushes_invoice ON pushes (invoice_uuid, id);

-- One row per invoice: the highest revision settled (pushed, or found unchanged) and the content finance has.
CREATE TABLE invoices (
    invoice_uuid       text        PRIMARY KEY,
    revision           integer     NOT NULL,
    payload_sha256     text        NOT NULL,
    finance_invoice_id text        NOT NULL,
    last_push_id       bigint      NOT NULL REFERENCES pushes (id),
    pushed_to_finance_at timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

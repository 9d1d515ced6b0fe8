-- Finance simulator: vendors and imported invoices, deduplicated on (tenant_id, source, external_id).
CREATE TABLE vendors (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    category    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX vendors_tenant_name ON vendors (tenant_id, lower(name));

CREATE TABLE invoices (
    id                   text PRIMARY KEY,
    tenant_id            text NOT NULL,
    source               text NOT NULL,
    external_id          text NOT NULL,
    invoice_number       text,
    invoice_date         date NOT NULL,
    period_start         date NOT NULL,
    period_end           date NOT NULL,
    currency             text NOT NULL,
    vendor_id            text NOT NULL REFERENCES vendors (id),
    amount_net_minor     bigint NOT NULL,
    amount_tax_minor     bigint NOT NULL,
    amount_gross_minor   bigint NOT NULL,
    lines_count          integer NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    update_count         integer NOT NULL DEFAULT 0,
    last_idempotency_key text,
    UNIQUE (tenant_id, source, external_id)
);

-- Every import call that reached the database (outcome created/updated), with its Idempotency-Key.
CREATE TABLE import_calls (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    tenant_id       text NOT NULL,
    source          text NOT NULL,
    external_id     text NOT NULL,
    action          text NOT NULL,
    invoice_id      text NOT NULL,
    idempotency_key text
);

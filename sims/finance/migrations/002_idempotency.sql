-- Idempotency-Key as a real service honours it: a key names one request body for one tenant. The same key with
-- the same body gets the stored answer again (nothing changes); the same key with another body is refused (422).
CREATE TABLE idempotency_keys (
    tenant_id       text        NOT NULL,
    idempotency_key text        NOT NULL,
    body_sha256     text        NOT NULL,
    response        jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);

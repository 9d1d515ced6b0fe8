-- The alerter's own state (services/alerter): the balance snapshots it evaluates, and the alert ledger that makes
-- every alert happen once per (account, kind, subject, threshold, period) across restarts and replicas.

CREATE TABLE balances (
    account         text        NOT NULL,
    generated_at    timestamptz NOT NULL,
    mtd_usage_minor bigint      NOT NULL,
    currency        text        NOT NULL,
    PRIMARY KEY (account, generated_at)
);

-- alert_id = uuid5(account, kind, subject, threshold, period): the primary key is the once-only guarantee. A row is
-- inserted once (ON CONFLICT DO NOTHING); only the inserter publishes it and queues its webhook.
CREATE TABLE alerts (
    alert_id            text        PRIMARY KEY,
    seq                 bigserial   NOT NULL,
    account             text        NOT NULL,
    kind                text        NOT NULL,
    period              date        NOT NULL,
    event               jsonb       NOT NULL,  -- the BillingAlert data, as published
    raised_at           timestamptz NOT NULL DEFAULT now(),
    published_at        timestamptz,           -- NULL: the billing.alerts.v1 event is not confirmed yet (re-sent)
    webhook_state       text        NOT NULL CHECK (webhook_state IN ('pending', 'delivered', 'failed', 'disabled')),
    webhook_attempts    integer     NOT NULL DEFAULT 0,
    webhook_next_at     timestamptz NOT NULL DEFAULT now(),
    webhook_lease_until timestamptz,           -- a replica delivering it holds it until then
    webhook_delivered_at timestamptz,
    webhook_last_error  text
);
CREATE INDEX alerts_unpublished ON alerts (seq) WHERE published_at IS NULL;
CREATE INDEX alerts_webhook_due ON alerts (webhook_next_at, seq) WHERE webhook_state = 'pending';

-- Completed invoice revisions to check for new products and resources, once the read model serves their lines
-- (the projector may be behind the alerter: the check waits here instead of blocking the partition).
CREATE TABLE invoice_checks (
    invoice_uuid text        NOT NULL,
    revision     integer     NOT NULL,
    account      text        NOT NULL,
    period       date        NOT NULL,
    invoice_date date        NOT NULL,
    net_minor    bigint      NOT NULL,
    currency     text        NOT NULL,
    checked_at   timestamptz,           -- NULL: still to check
    outcome      text,                  -- checked | superseded
    PRIMARY KEY (invoice_uuid, revision)
);
CREATE INDEX invoice_checks_pending ON invoice_checks (invoice_uuid, revision) WHERE checked_at IS NULL;

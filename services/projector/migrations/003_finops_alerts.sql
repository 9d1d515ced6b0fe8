-- FinOps alerts (services/alerter, billing.alerts.v1): one row per alert_id however often the event is re-sent.
CREATE TABLE alerts (
    alert_id        text        PRIMARY KEY,
    account         text        NOT NULL,
    kind            text        NOT NULL,
    period          date        NOT NULL,
    subject         text        NOT NULL,
    threshold_pct   integer,
    currency        text        NOT NULL,
    budget_minor    bigint,
    observed_minor  bigint      NOT NULL,
    reference_minor bigint,
    detected_at     timestamptz NOT NULL,
    message         text        NOT NULL,
    event_id        text        NOT NULL
);
CREATE INDEX alerts_detected ON alerts (detected_at DESC, alert_id);
CREATE INDEX alerts_account_period ON alerts (account, period DESC);

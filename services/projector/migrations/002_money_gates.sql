-- Money gates (docs/architecture.md): a completed revision that its reconciliation does not prove is `held`
-- (status_rank stays "completed", `held` says which of the two), with the evidence to show; admin actions
-- (release, refetch) with who and why; billing-history entries served by type.
ALTER TABLE invoices ADD COLUMN held boolean NOT NULL DEFAULT false;
ALTER TABLE invoices ADD COLUMN hold_reason text;
ALTER TABLE invoices ADD COLUMN reconciliation_actual_minor bigint;
ALTER TABLE invoices ADD COLUMN reconciliation_tolerance_minor bigint;
ALTER TABLE invoices ADD COLUMN reconciliation_reason text;
ALTER TABLE invoices ADD COLUMN reconciliation_checks jsonb;
CREATE INDEX invoices_held ON invoices (period DESC, invoice_uuid) WHERE held;

CREATE TABLE invoice_actions (
    event_id     text        PRIMARY KEY,
    invoice_uuid text        NOT NULL,
    action       text        NOT NULL CHECK (action IN ('release', 'refetch')),
    revision     integer,
    actor        text        NOT NULL,
    reason       text        NOT NULL,
    at           timestamptz NOT NULL
);
CREATE INDEX invoice_actions_invoice ON invoice_actions (invoice_uuid, at, event_id);

CREATE INDEX history_entries_type_date ON history_entries (entry_type, date, event_id);

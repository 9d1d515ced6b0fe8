-- Money gates (docs/architecture.md, "Money gates"). Applied with search_path = ingester.
-- The evidence each revision was emitted with: the same CSV with different evidence is a new revision.
ALTER TABLE invoice_revisions ADD COLUMN evidence_sha256 text;
ALTER TABLE invoice_revisions ADD COLUMN reconciliation_status text;

-- Per invoice: its last discovery (what a re-fetch runs again) and, while it is held, when its CSV is fetched
-- again (doubling backoff) and why it is held.
CREATE TABLE invoices (
    invoice_uuid     text        PRIMARY KEY,
    account          text        NOT NULL,
    discovered       jsonb       NOT NULL,
    held_revision    integer,
    held_since       timestamptz,
    hold_reason      text,
    refetch_attempts integer     NOT NULL DEFAULT 0,
    next_refetch_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_next_refetch ON invoices (next_refetch_at) WHERE next_refetch_at IS NOT NULL;

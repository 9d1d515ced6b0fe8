-- The inventory's history: the last record sent per resource, so a resource that disappears is sent once more
-- with exists=false and its first/last seen times (services/poller/domain.py gone_record) instead of a tombstone.
ALTER TABLE inventory ADD COLUMN resource jsonb;

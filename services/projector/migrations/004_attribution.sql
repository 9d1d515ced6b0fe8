-- Exact attribution (issue 17): how each line was attributed, the invoice items' ids and duration it carries,
-- and the inventory's history (resources gone are kept, exists_now = false, with their first/last seen times).
ALTER TABLE cost_lines
    ADD COLUMN attributed_by      text,     -- resource_id | item_resource_id | name | name_period_history
    ADD COLUMN still_exists       boolean,  -- the resource was current when the line was matched (null: not inventoried)
    ADD COLUMN item_resource_id   text,     -- the invoice item's resource_id / resource_uuid, as DigitalOcean sent them
    ADD COLUMN item_resource_uuid text,
    ADD COLUMN duration           text,
    ADD COLUMN duration_unit      text,
    ADD COLUMN item_join          text,     -- exact | period_relaxed | identical_rows | no_item | items_unavailable | ...
    ADD COLUMN item_note          text;
-- A resource's cost over months: WHERE current AND account/kind/resource_id.
CREATE INDEX cost_lines_resource ON cost_lines (resource_id, period) WHERE current AND resource_id IS NOT NULL;

ALTER TABLE resources
    ADD COLUMN exists_now boolean NOT NULL DEFAULT true,
    ADD COLUMN first_seen timestamptz,
    ADD COLUMN last_seen  timestamptz;

-- recorded is when gatewatch wrote an alert's row (wall clock), so the history ages by
-- when it was recorded, not by the alert's event time: alerts that notify sends from a
-- replay of last quarter's logs must not expire on the next retention pass. Rows
-- written before this column existed read their last_seen, which is what dated them
-- until now. 18.16 cannot say ADD COLUMN IF NOT EXISTS; Migrate treats "already
-- exists" as done.
ALTER TABLE alerts ADD COLUMN recorded DateTime('UTC') DEFAULT last_seen;

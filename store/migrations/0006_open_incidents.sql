-- open_incidents keeps each detector's open incidents, so that after a restart (or on
-- the instance a partition moved to) an attack still under way continues under its
-- alert id instead of paging again. The engine writes an incident's whole state, as
-- JSON, each time it changes and before it commits the offsets of the events behind
-- it; an ended incident is written with an empty state. The newest row per (scope,
-- detector, key) is the truth: read with argMax(state, version). Like the base schema it
-- runs on 18.16 and on current releases, and running it again changes nothing.
CREATE TABLE IF NOT EXISTS open_incidents (
    scope    String,
    detector String,
    key      String,
    state    String,
    version  UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (scope, detector, key);

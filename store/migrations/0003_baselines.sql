-- What the detectors learned, beyond key_countries and key_stats: route rates, the
-- start of traffic, and the milliseconds of every baseline time. Like the base schema
-- it runs on 18.16 and on current releases.
--
-- 18.16 has no ADD COLUMN IF NOT EXISTS; adding a column that exists fails with
-- "column with this name already exists", which Migrate takes as done (see
-- execIdempotent), so running this again, or from several instances at once, changes
-- nothing that exists.
--
-- Every baseline row carries the version of the UpdateBaselines call that wrote it: a
-- hybrid logical clock (wall-clock nanoseconds, kept strictly increasing, and never
-- below a version the writer has seen in ClickHouse or in its spill), so a later upsert
-- wins over an earlier one however late the earlier one is written (a write replayed
-- from the spill after ClickHouse came back). Read with FINAL; see
-- ClickHouse.LoadBaselines for why FINAL and not argMax.
--
-- A key's baseline is one key_stats row and a key_countries row per country, all with
-- the same version. When the detector forgets a country, its row keeps the older
-- version; readers take a key's countries whose version is at least the key's.

ALTER TABLE key_stats ADD COLUMN first_seen_ms UInt16;
ALTER TABLE key_stats ADD COLUMN last_seen_ms UInt16;
ALTER TABLE key_countries ADD COLUMN first_seen_ms UInt16;
ALTER TABLE key_countries ADD COLUMN last_seen_ms UInt16;

-- key_last_seen is the last time the row's key was seen, as of the row's version: the
-- baselines' retention drops a key's countries together with the key, by it.
ALTER TABLE key_countries ADD COLUMN key_last_seen DateTime('UTC');
ALTER TABLE key_countries ADD COLUMN key_last_seen_ms UInt16;

-- route_baselines is quiet_endpoint_spike's baseline: the raw exponentially weighted
-- request rate of each route ("GET /v1/users/{id}", method and route template as the
-- detector keys them), as of as_of.
CREATE TABLE IF NOT EXISTS route_baselines (
    route           String,
    rate_per_minute Float64,
    as_of           DateTime('UTC'),
    as_of_ms        UInt16,
    version         UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY route;

-- baseline_meta holds single values of the baselines by name. traffic_since (when
-- quiet_endpoint_spike first saw traffic) only ever moves earlier, so each report of it
-- is a row and the value is min(): exact before and after merges, which fold equal rows.
CREATE TABLE IF NOT EXISTS baseline_meta (
    name     String,
    value    DateTime('UTC'),
    value_ms UInt16
) ENGINE = ReplacingMergeTree
ORDER BY (name, value, value_ms);

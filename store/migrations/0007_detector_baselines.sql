-- What the detectors added after the first four learn, so that a restart starts warm:
-- the peaks of quiet_endpoint_spike's routes, client_volume_spike's rates and peaks
-- per client key, object_enumeration's peaks per client and route, and
-- privilege_anomaly's history of privileged requests per client key. Like the base
-- schema it runs on 18.16 and on current releases: DateTime with a _ms companion, no
-- TTL, no codecs.
--
-- Running it again, or from several instances at once, changes nothing that exists:
-- CREATE TABLE IF NOT EXISTS, and ADD COLUMN, which 18.16 cannot say IF NOT EXISTS
-- for, fails with "already exists" on a second run, which Migrate takes as done (see
-- execIdempotent).
--
-- Every row carries the version of the UpdateBaselines call that wrote it, as in
-- 0003: ReplacingMergeTree keeps the newest, read with FINAL.

-- A route's peak: the largest request count it had in a window, as of peak_at. Rows
-- written before this migration read 0: no peak, which the detector also starts from.
ALTER TABLE route_baselines ADD COLUMN peak Float64;
ALTER TABLE route_baselines ADD COLUMN peak_at DateTime('UTC');
ALTER TABLE route_baselines ADD COLUMN peak_at_ms UInt16;

-- client_volume_spike, per client key: when it was first seen (its learning period
-- counts from here), its raw exponentially weighted request rate as of as_of, and its
-- peak window count as of peak_at.
CREATE TABLE IF NOT EXISTS client_baselines (
    key             String,
    first_seen      DateTime('UTC'),
    first_seen_ms   UInt16,
    rate_per_minute Float64,
    as_of           DateTime('UTC'),
    as_of_ms        UInt16,
    peak            Float64,
    peak_at         DateTime('UTC'),
    peak_at_ms      UInt16,
    version         UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY key;

-- object_enumeration, per client (its client key, else its IP) and route ("GET
-- /v1/invoices/{id}"): the most distinct objects it requested in a window, as of
-- peak_at. Only pairs that had a window worth remembering are written.
CREATE TABLE IF NOT EXISTS object_baselines (
    client     String,
    route      String,
    peak       Float64,
    peak_at    DateTime('UTC'),
    peak_at_ms UInt16,
    version    UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (client, route);

-- privilege_anomaly, per client key that made privileged requests: its first and last
-- successful one and how many.
CREATE TABLE IF NOT EXISTS privilege_baselines (
    key           String,
    first_seen    DateTime('UTC'),
    first_seen_ms UInt16,
    last_seen     DateTime('UTC'),
    last_seen_ms  UInt16,
    events        UInt64,
    version       UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY key;

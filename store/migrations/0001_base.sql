-- The base schema. It must run on ClickHouse 18.16.1 (Debian's) and on current
-- releases, so it uses nothing newer: no TTL, DateTime64, codecs, LowCardinality,
-- toStartOfInterval or JSON functions (gated migrations add such extras), and every
-- statement is CREATE ... IF NOT EXISTS, so running it again, or from several
-- instances at once, changes nothing that exists.
--
-- Times are DateTime('UTC') (seconds) plus a UInt16 millisecond column where the
-- milliseconds matter, because 18.16 has no DateTime64. The explicit 'UTC' makes day
-- partitions and toStartOfMinute buckets UTC days and minutes whatever the server's
-- time zone.

-- events is the archive: every normalised Event, for replay and forensics.
--
-- Sorting key: the hour bucket first, then the client key. Replay reads every key over
-- a time range, and with the hour first such a read touches only the hours asked for
-- instead of whole days; forensics on one key over a range is still a key lookup per
-- hour (toStartOfHour is monotonic, so the primary index serves conditions on time).
-- Per-route questions are answered by route_minute (rates per route and minute); raw
-- events of one route in a range read only the hours in range and, of those, only the
-- route column until they match. A second copy sorted by route (a materialized view
-- into another table) would double the archive's size and insert cost for queries that
-- route_minute already answers.
--
-- Identity: each row carries (batch_id, seq): the piece of a block the archive writer
-- sent it in (a block goes in one INSERT as pieces of 16,384 rows, piece k with batch_id
-- block id + k; the server squashes them into one block by default, or commits them one
-- by one if set to squash less) and its position in the block. The writer may
-- send a block twice (an insert that failed on the client after the server had
-- committed some or all of it, then replayed from the spill); it checks archive_batches
-- first and sends only the pieces missing there. One gap remains: a piece committed
-- only in part (a piece that spans two days is written as two parts, and the connection
-- may die between them) leaves no complete marker, so the piece is sent again and the
-- rows already there exist twice. ReplacingMergeTree, whose sorting key ends with
-- batch_id and seq, folds such copies into one row when parts merge, and readers do not
-- wait for that: ReadEvents drops adjacent rows with the same (batch_id, seq). (The
-- per-minute counters below count such rows twice.)
CREATE TABLE IF NOT EXISTS events (
    time       DateTime('UTC'),
    ms         UInt16,
    source     String,
    client_key String,
    token_fp   String,
    device     String,
    client_ip  String,
    country    String,
    method     String,
    host       String,
    route      String,
    path       String,
    status     UInt16,
    action     String,
    rule_id    String,
    user_agent String,
    request_id String,
    batch_id   UInt64,
    seq        UInt32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(time)
ORDER BY (toStartOfHour(time), client_key, time, batch_id, seq);

-- archive_batches records each piece that reached events, written by a materialized view
-- in the same INSERT, so a marker exists exactly when the piece's rows do. Before the
-- writer sends a block again it looks its pieces' batch_ids up here (a primary key
-- lookup): a piece already written is not sent twice, so neither events nor the
-- per-minute counters below, which cannot fold duplicates, ever count it twice.
-- Partitioned by the piece's newest event, a marker expires with the last of its events,
-- never before.
CREATE TABLE IF NOT EXISTS archive_batches (
    batch_id UInt64,
    rows     UInt64,
    max_time DateTime('UTC')
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(max_time)
ORDER BY batch_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS archive_batches_mv TO archive_batches AS
SELECT batch_id, count() AS rows, max(time) AS max_time
FROM events
GROUP BY batch_id;

-- route_minute and client_minute are request counts per minute, summed by
-- SummingMergeTree and fed from events by materialized views, so live runs and replays
-- that archive the same events produce the same counts. quiet_endpoint_spike's baseline
-- rate comes from route_minute; per-client volume and forbidden bursts from
-- client_minute. Read them with sum() ... GROUP BY: rows of one key and minute are
-- only folded when parts merge.
CREATE TABLE IF NOT EXISTS route_minute (
    minute        DateTime('UTC'),
    method        String,
    route         String,
    requests      UInt64,
    client_errors UInt64,
    forbidden     UInt64,
    server_errors UInt64
) ENGINE = SummingMergeTree((requests, client_errors, forbidden, server_errors))
PARTITION BY toYYYYMM(minute)
ORDER BY (method, route, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS route_minute_mv TO route_minute AS
SELECT
    toStartOfMinute(time) AS minute,
    method,
    route,
    count() AS requests,
    countIf(status >= 400 AND status < 500) AS client_errors,
    countIf(status = 401 OR status = 403) AS forbidden,
    countIf(status >= 500) AS server_errors
FROM events
GROUP BY minute, method, route;

-- client is the client key, else the client IP: how forbidden_burst keys clients.
CREATE TABLE IF NOT EXISTS client_minute (
    minute        DateTime('UTC'),
    client        String,
    requests      UInt64,
    client_errors UInt64,
    forbidden     UInt64,
    server_errors UInt64
) ENGINE = SummingMergeTree((requests, client_errors, forbidden, server_errors))
PARTITION BY toYYYYMM(minute)
ORDER BY (client, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS client_minute_mv TO client_minute AS
SELECT
    toStartOfMinute(time) AS minute,
    if(client_key != '', client_key, client_ip) AS client,
    count() AS requests,
    countIf(status >= 400 AND status < 500) AS client_errors,
    countIf(status = 401 OR status = 403) AS forbidden,
    countIf(status >= 500) AS server_errors
FROM events
GROUP BY minute, client;

-- key_countries is new_country's baseline: the countries each key was seen from.
-- The detector owns a key's baseline and writes whole rows (first and last seen, the
-- running count), so the newest row per (key, country) is the truth and
-- ReplacingMergeTree(version) keeps it; rewriting a row after a retry or a replay is
-- harmless. AggregatingMergeTree with min/max/sum states would need the states' binary
-- form from Go (clickhouse-go cannot write AggregateFunction columns, and 18.16 has no
-- SimpleAggregateFunction), and summed deltas would double on every retried write.
-- Read with FINAL or argMax(..., version).
CREATE TABLE IF NOT EXISTS key_countries (
    key        String,
    country    String,
    first_seen DateTime('UTC'),
    last_seen  DateTime('UTC'),
    events     UInt64,
    version    UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (key, country);

-- key_stats is each key's age and volume, for new_country's learning_period and
-- min_events; written and read like key_countries.
CREATE TABLE IF NOT EXISTS key_stats (
    key        String,
    first_seen DateTime('UTC'),
    last_seen  DateTime('UTC'),
    events     UInt64,
    version    UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY key;

-- alerts is the alert history, one row per alert id, updated by writing the whole row
-- again with a higher version (a later last_seen, a delivery that succeeded).
-- evidence and labels are the alert's JSON objects as strings; delivery holds one
-- entry per receiver. Read with FINAL or argMax(..., version).
CREATE TABLE IF NOT EXISTS alerts (
    id            String,
    detector      String,
    severity      String,
    key           String,
    first_seen    DateTime('UTC'),
    first_seen_ms UInt16,
    last_seen     DateTime('UTC'),
    last_seen_ms  UInt16,
    summary       String,
    evidence      String,
    runbook_url   String,
    labels        String,
    delivery Nested (
        receiver String,
        state    String,
        attempts UInt32,
        updated  DateTime('UTC')
    ),
    version       UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(first_seen)
ORDER BY id;

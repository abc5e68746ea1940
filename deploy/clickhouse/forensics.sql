-- gatewatch forensic queries, for the analyst working an alert (the runbooks in
-- deploy/runbooks/ point here). They read the schema `gatewatch migrate` creates:
-- events (every archived request), route_minute (requests per route and minute),
-- key_stats and key_countries (new_country's baselines).
--
-- Parameters are ClickHouse query parameters, {name:Type}. ClickHouse 19.11 and
-- later fill them from the client:
--
--   clickhouse-client --database gatewatch --param_key=3f2a... \
--     --param_from='2026-03-01 12:00:00' --param_to='2026-03-01 13:00:00' \
--     --query "$(sed -n '/^-- name: requests_of_key$/,/;$/p' forensics.sql)"
--
-- ClickHouse 18.16 (Debian's clickhouse-server) has no query parameters: replace each
-- {name:String} with a quoted string ('...', with ' and \ escaped by a backslash) and
-- each {name:UInt32} with a number. Times are strings 'YYYY-MM-DD hh:mm:ss' in UTC; the
-- queries convert them with toDateTime(..., 'UTC') whatever the server's time zone, so
-- a window [from, to) means UTC. Event times are whole seconds (time) plus
-- milliseconds (ms).
--
-- Each query starts at a "-- name:" line and ends with ";". store/forensics_test.go
-- runs every one of them against a real ClickHouse with real parameters and checks
-- the rows it returns, so they keep working as the schema moves.

-- name: requests_of_key
-- Every request of one client key or token fingerprint (the alert's key) in a window,
-- oldest first. key: a client_key or token_fp as the alert shows it; from, to: the
-- window. The archive can hold a request twice for a moment after a failed insert
-- (see migrations/0001_base.sql); LIMIT 1 BY shows it once.
SELECT
    time, ms, source, client_key, token_fp, device, client_ip, country,
    method, host, route, path, status, action, rule_id, user_agent, request_id
FROM events
WHERE time >= toDateTime({from:String}, 'UTC') AND time < toDateTime({to:String}, 'UTC')
  AND (client_key = {key:String} OR token_fp = {key:String})
ORDER BY time, ms, batch_id, seq
LIMIT 1 BY batch_id, seq;

-- name: countries_of_key
-- The countries one client key was seen from, day by day (UTC), with the first and
-- last request of each day: when a new country started and whether the old ones
-- stopped. key: the client key; from, to: the window.
SELECT
    toDate(time) AS day,
    country,
    count() AS requests,
    min(time) AS first_seen,
    max(time) AS last_seen,
    uniqExact(client_ip) AS client_ips,
    uniqExact(device) AS devices
FROM events
WHERE client_key = {key:String}
  AND time >= toDateTime({from:String}, 'UTC') AND time < toDateTime({to:String}, 'UTC')
GROUP BY day, country
ORDER BY day, country;

-- name: baseline_countries_of_key
-- What new_country currently knows of one client key: the countries of its baseline,
-- when each was first and last seen and how many requests came from it (rows of
-- countries it has forgotten carry an older version than the key and are left out).
-- key: the client key.
SELECT country, first_seen, last_seen, events
FROM key_countries FINAL
WHERE key = {key:String}
  AND version >= (SELECT max(version) FROM key_stats WHERE key = {key:String})
ORDER BY country;

-- name: forbidden_of_client
-- The 403s of one client, as forbidden_burst keys clients: its client key, or, for
-- requests without one, its IP address. client: the key or IP; from, to: the window.
SELECT
    time, ms, client_key, client_ip, country, method, host, route, path, status,
    action, rule_id, user_agent, request_id
FROM events
WHERE time >= toDateTime({from:String}, 'UTC') AND time < toDateTime({to:String}, 'UTC')
  AND status = 403
  AND (client_key = {client:String} OR (client_key = '' AND client_ip = {client:String}))
ORDER BY time, ms, batch_id, seq
LIMIT 1 BY batch_id, seq;

-- name: route_around_alert
-- A route's traffic minute by minute around an alert (quiet_endpoint_spike's
-- evidence): before_minutes before the minute of at and after_minutes from it, every
-- minute listed, quiet ones with zeros. method and route as the alert names them
-- ("GET", "/v1/export/{id}"); at: the alert's first_seen.
SELECT
    minute,
    if(minute < toStartOfMinute(toDateTime({at:String}, 'UTC')), 'before', 'after') AS phase,
    requests, client_errors, forbidden, server_errors
FROM
(
    SELECT toDateTime(toStartOfMinute(toDateTime({at:String}, 'UTC')) - {before_minutes:UInt32} * 60
        + arrayJoin(range(toUInt32({before_minutes:UInt32} + {after_minutes:UInt32}))) * 60, 'UTC') AS minute
)
ANY LEFT JOIN
(
    SELECT minute, sum(requests) AS requests, sum(client_errors) AS client_errors,
        sum(forbidden) AS forbidden, sum(server_errors) AS server_errors
    FROM route_minute
    WHERE method = {method:String} AND route = {route:String}
      AND minute >= toStartOfMinute(toDateTime({at:String}, 'UTC')) - {before_minutes:UInt32} * 60
      AND minute < toStartOfMinute(toDateTime({at:String}, 'UTC')) + {after_minutes:UInt32} * 60
    GROUP BY minute
) USING minute
ORDER BY minute;

-- name: route_before_after
-- The same window in two rows: the route's requests, and requests a minute, before the
-- alert and from it on. Parameters as route_around_alert.
SELECT
    if(minute < toStartOfMinute(toDateTime({at:String}, 'UTC')), 'before', 'after') AS phase,
    sum(requests) AS total_requests,
    total_requests / if(phase = 'before', {before_minutes:UInt32}, {after_minutes:UInt32}) AS per_minute,
    sum(forbidden) AS total_forbidden,
    uniqExact(minute) AS active_minutes
FROM route_minute
WHERE method = {method:String} AND route = {route:String}
  AND minute >= toStartOfMinute(toDateTime({at:String}, 'UTC')) - {before_minutes:UInt32} * 60
  AND minute < toStartOfMinute(toDateTime({at:String}, 'UTC')) + {after_minutes:UInt32} * 60
GROUP BY phase
ORDER BY phase DESC;

-- name: alerts_in_window
-- The alerts open at some time in a window (first seen before its end, last seen at
-- or after its start), each in its latest version, with the newest delivery to each
-- receiver (the largest alert version, then reminder round) and its state: pending,
-- delivered, or failed (parked for an operator). detector: a detector name, or '' for
-- all; from, to: the window. An alert with no delivery recorded shows one row with an
-- empty receiver.
SELECT
    id, detector, severity, key, first_seen, last_seen, summary, runbook_url,
    receiver, state, attempts, last_error, updated
FROM
(
    SELECT id, detector, severity, key, first_seen, last_seen, summary, runbook_url
    FROM alerts FINAL
    WHERE first_seen < toDateTime({to:String}, 'UTC') AND last_seen >= toDateTime({from:String}, 'UTC')
      AND ({detector:String} = '' OR detector = {detector:String})
)
ALL LEFT JOIN
(
    SELECT id, receiver,
        argMax(state, alert_version * 1000000 + least(round, 999999)) AS state,
        argMax(attempts, alert_version * 1000000 + least(round, 999999)) AS attempts,
        argMax(last_error, alert_version * 1000000 + least(round, 999999)) AS last_error,
        argMax(updated, alert_version * 1000000 + least(round, 999999)) AS updated
    FROM alert_deliveries FINAL
    GROUP BY id, receiver
) USING id
ORDER BY first_seen, id, receiver;

-- Delivery states of the alert history. Like the base schema it runs on 18.16 and on
-- current releases, and running it again changes nothing that exists.
--
-- alerts (0001) keeps one row per alert id, its latest version winning by version
-- (the alert's last_seen in Unix milliseconds). Its delivery Nested column would need
-- the whole row written again at every delivery: a read-modify-write from two
-- independent streams (alerts accepted, deliveries done), exact only if nothing else
-- wrote in between. alert_deliveries instead keeps one row per delivery (alert id,
-- receiver, alert version, reminder round), written whole at each change of its
-- state; version is a clock of the writer that grows with every record, so the state
-- recorded last wins. Read with FINAL; the newest delivery per (id, receiver) is the
-- one with the largest (alert_version, round). The delivery column of alerts stays
-- empty.
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id            String,
    receiver      String,
    alert_version UInt64,
    round         UInt32,
    first_seen    DateTime('UTC'),
    state         String,
    attempts      UInt32,
    last_error    String,
    updated       DateTime('UTC'),
    updated_ms    UInt16,
    version       UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(first_seen)
ORDER BY (id, receiver, alert_version, round);

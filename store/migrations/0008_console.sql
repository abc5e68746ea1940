-- What analysts decide while gatewatch runs, and who decided it: the silences made in
-- the console or from Slack, the acknowledgements of incidents, and the console's audit
-- log. Like the base schema it runs on 18.16 and on current releases, and running it
-- again changes nothing that exists.
--
-- silences keeps every version of a silence record (JSON, alerting.SilenceRecord); the
-- one with the largest updated (Unix ns) is the truth: read with argMax.
CREATE TABLE IF NOT EXISTS silences (
    id      String,
    record  String,
    updated UInt64
) ENGINE = ReplacingMergeTree(updated)
ORDER BY id;
-- acks keeps each acknowledgement of an incident (alert id); the first one stands:
-- read with argMin over at_ns.
CREATE TABLE IF NOT EXISTS acks (
    id    String,
    by    String,
    via   String,
    at_ns UInt64
) ENGINE = MergeTree
ORDER BY (id, at_ns);
-- audit_log keeps every change made through the console or Slack: who, when, what.
CREATE TABLE IF NOT EXISTS audit_log (
    at     DateTime('UTC'),
    at_ns  UInt64,
    who    String,
    action String,
    object String,
    detail String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, at_ns);

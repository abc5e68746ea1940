-- slack_threads keeps, in cluster mode, where each incident lives in Slack for every
-- replica: a task that moves to another replica carries its open incidents (0006), and
-- the replica that takes it must update the incident's message, not post a second one.
-- thread is the receiver's state of the incident (JSON, slack.Thread); the row with the
-- largest version (a clock of the writers) is the truth: read with argMax. Rows expire
-- with the alert history, by when they were written. Like the base schema it runs on
-- 18.16 and on current releases, and running it again changes nothing.
CREATE TABLE IF NOT EXISTS slack_threads (
    receiver String,
    id       String,
    thread   String,
    updated  DateTime('UTC'),
    version  UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(updated)
ORDER BY (receiver, id);

// Package store keeps what gatewatch remembers. It archives events for replay and
// forensics, and owns the ClickHouse schema for baselines and alert history.
//
// Two archives share one behaviour (the same test suite runs against both):
//   - ClickHouse, for production, over the native protocol through clickhouse-go. It
//     works with Debian's clickhouse-server 18.16.1 as well as current releases: the
//     base schema (migrations/0001_base.sql) uses only what 18.16 has, and Migrate
//     applies newer extras only after asking the server its version. Its writer
//     buffers events, inserts them in batches, spills batches to local disk while
//     ClickHouse is down and replays them when it is back, writing each event once.
//   - Local, the embedded default when the config has no clickhouse section: one
//     bbolt file under data_dir, with retention.
//
// Only replay and cmd/gatewatch import store.
package store

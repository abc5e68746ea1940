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
// Both also keep the detectors' baselines, implementing detectors.BaselineStore with the
// semantics of detectors.MemoryBaselines (the same suite runs against both), and
// rebuild past baselines for replay and forensics (BaselinesAsOf):
//   - ClickHouse keeps them in key_stats, key_countries, route_baselines and
//     baseline_meta, every row versioned so that the newest update wins whatever order
//     writes land in, read with FINAL. UpdateBaselines returns once an update is in
//     ClickHouse or, when ClickHouse is slow or down, in the spill, which Run writes
//     in order once it is back; LoadBaselines writes what waits there first.
//   - Local keeps them in three buckets of its bbolt file, and drops what the
//     detectors forget (keys not seen within new_country's history, idle routes).
//
// deploy/clickhouse/forensics.sql holds the analyst's queries over this schema;
// forensics_test.go runs each one.
//
// Only replay and cmd/gatewatch import store.
package store

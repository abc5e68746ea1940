// Package alerting turns the detectors' Alerts into notifications that reach people and
// the SIEM, once, durably. It routes alerts to named receivers the way Alertmanager does
// (first matching route wins unless it says continue), applies silences, and makes every
// alert durable in an outbox before any delivery is tried; each receiver then has its
// own delivery state, retries with backoff, rate limit and dedup by alert id, so a
// restart resumes where delivery stopped and an alert is never lost.
//
// The receivers themselves live in subpackages (slack, splunkhec, syslog, kafkasink,
// webhook, file); their configuration types live here, so that the config file has one
// place to describe them. alerting imports detectors (for Alert) and nothing else of
// gatewatch.
package alerting

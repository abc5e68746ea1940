// Package alerting turns the detectors' Alerts into notifications that reach people and
// the SIEM, once, durably. It routes alerts to named receivers the way Alertmanager does
// (first matching route wins unless it says continue), applies silences, and makes every
// alert durable in an outbox before any delivery is tried; each receiver then has its
// own delivery state, retries with backoff, rate limit and dedup by alert id, so a
// restart resumes where delivery stopped and an alert is never lost.
//
// # Pipeline
//
// The Router is the engine's detectors.AlertSink. Put runs the alerts through stages:
// silences mute, routes pick receivers (no routes: every receiver), and the outbox
// (an OutboxStore) stores one Delivery per receiver and alert version, all before Put
// returns. Run drives one goroutine per receiver, which takes that receiver's queue in
// order: a rate limit (receivers[].rate_limit, one token per alert), one Notify call
// per batch under a timeout (receivers[].timeout, with a cause that says so), then the
// outcome is recorded: delivered; retried after exponential backoff with jitter (or the
// destination's Retry-After, if longer); or parked as failed, with an error in the log
// and gatewatch_alerting_deliveries_failed_total, when the receiver says retrying
// cannot help or the delivery has failed for give_up_after. Parked deliveries stay in
// the outbox until an operator requeues them (Router.Requeue). A final error on a
// batch makes the Router try each of its alerts alone, so one bad alert parks only
// itself.
//
// # Delivery guarantees
//
// A version of an alert is its ID and LastSeen: the detectors re-emit an incident under
// the same ID with a later LastSeen when it changes. The outbox never queues the same
// version twice for a receiver, across restarts (for outbox.retention after it was
// delivered), so a replay from the last committed offset, or `gatewatch notify` run
// twice, delivers nothing new. A version is handed to a receiver again only when the
// Router cannot know whether the destination got it: an attempt that failed or timed
// out, or a process that stopped between the destination accepting and the outbox
// recording it. Delivery is therefore at least once; a receiver whose destination
// deduplicates (Slack, by alert ID and version) delivers exactly once, and one that
// appends (file, syslog) may show a duplicate after such a crash. Receiver documents
// what a receiver may rely on.
//
// repeat_interval (global, or per route) re-sends an incident that is still open and
// unchanged, as a reminder: the same version with the label ReminderLabel set to the
// reminder's number. An incident counts as open while its newest version's LastSeen is
// within resolve_timeout of the clock, so a replay of old history sends no reminders.
//
// # Implementations and helpers
//
// MemoryOutbox keeps the outbox in memory (tests, dry runs); the outbox subpackage has
// the durable one on local disk. alertingtest holds receiver doubles and the suite every
// OutboxStore passes, with crash-and-restart tests of a Router on top of it.
//
// The receivers live in subpackages (slack, splunkhec, syslog, kafkasink, webhook,
// file); their configuration types live here, so that the config file has one place to
// describe them, together with what they share: the secret references of each kind
// (SlackConfig.Token, ...), CheckResponse (HTTP status to retry decision), RedactURL and
// ClientTLS. Secrets, TLS and SASL mean what they mean everywhere in gatewatch
// (internal/config). alerting imports detectors (for Alert) and nothing else of
// gatewatch's parts.
package alerting

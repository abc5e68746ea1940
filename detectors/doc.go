// Package detectors runs sliding-window detectors over normalised ingest.Events and
// raises Alerts for a security operations team.
//
// The Engine is driven by event time only: it keeps a watermark (the largest event time
// seen minus allowed_lateness), and a window is evaluated once the watermark has passed
// its end, when no event that is not late can still change it. That is what makes a
// replay reproduce live alerts byte for byte, and a reordering of events within
// allowed_lateness raise the same alerts.
//
// # Windows
//
// A windowed detector (token_reuse, forbidden_burst, quiet_endpoint_spike) splits its
// window into N buckets of window/N (12, 20 and 10 buckets respectively, fewer when a
// large allowed_lateness would not fit in 64). Each key keeps a ring of per-bucket
// counts, and a window is the N consecutive buckets ending at a bucket boundary: the
// window slides by one bucket. Counts and thresholds are exact; times are exact to the
// bucket. An alert's first_seen and last_seen are the start of the earliest and the end
// of the latest bucket that held a counted event of the incident.
//
// # Late events
//
// An event is late when its time is before the watermark at the moment it arrives.
// A late event is counted (gatewatch_detectors_late_events_total) and updates the
// baselines: the key's first-seen time and event count, its known countries, the
// route's request rate. It never enters a window, not even one that is still open, so
// it cannot open, extend or complete a window. new_country is the exception that is not
// a window: a late event from a country the key's baseline does not hold is still
// checked, so a delayed log line cannot teach the baseline an attacker's country
// silently.
//
// # Incidents and updates
//
// While a detector keeps firing for one key, it is one incident with one alert id,
// AlertID(detector, key, incident start). The first firing emits the alert. Later
// firings update the incident (last_seen, the evidence of the strongest window,
// severity) and re-emit it as an update: the same id with a later last_seen, at most
// once per window of event time, at once when the severity rises, and once more when
// the incident ends with anything not yet emitted. An incident ends when the key has
// not fired for the detector's cooldown; the next firing opens a new incident with a new
// id. Receivers that keep only the newest version of an alert key it by id and prefer
// the larger last_seen.
//
// # Determinism
//
// The engine never reads a clock. Alerts returned by one call are sorted by the event
// time at which they were raised, then detector, key and id; evidence lists are sorted;
// times are UTC milliseconds. Every decision (which alerts, their ids, times, severity,
// counts, ratios and p-values) depends only on the set of events that are not late, not
// on their order. The samples in the evidence (paths, request ids, client addresses) are
// chosen by hash among the events of the window, so they are order-independent as well,
// except for a quiet_endpoint_spike route that was not quiet when its current run of
// traffic began: it samples only from the moment it became a candidate.
//
// # State
//
// Every detector caps its keys (max_keys) and evicts the coldest, counting evictions;
// idle keys expire, driven by the watermark, once no open window needs them. Distinct
// counts use exact sets of 64-bit hashes up to 32 members and HyperLogLog sketches
// beyond. Observe allocates nothing per event for keys it already tracks.
//
// detectors imports ingest and no other part of gatewatch. It declares the interfaces it
// needs around it: EventSource, AlertSink and BaselineStore.
package detectors

// Package detectors runs sliding-window detectors over normalised ingest.Events and
// raises Alerts for a security operations team.
//
// The Engine is driven by event time only; it never reads a clock. It keeps a
// watermark, the largest event time seen minus allowed_lateness, and evaluates a window
// once the watermark has passed its end, when no event that is not late can change it
// any more. That is what makes a replay reproduce live alerts byte for byte, and a
// reordering of events within allowed_lateness raise the same alerts.
//
// # Windows
//
// A windowed detector (token_reuse, forbidden_burst, quiet_endpoint_spike) cuts event
// time into buckets of window/N, N being 20, 12 and 10 (fewer when a large
// allowed_lateness would not fit a key's ring of 64 buckets; always a whole number of
// milliseconds). A window is N consecutive buckets, and it slides one bucket at a time.
// Counts and thresholds are exact; window edges are exact to the bucket: 20 403s
// within one minute fire when they fall in 12 consecutive 5-second buckets. An alert's
// first_seen is the start of the earliest bucket, and last_seen the end of the latest
// bucket, that held a counted event of the incident. new_country is not windowed: its
// first_seen and last_seen are the times of the first events from the new countries.
//
// # Late events
//
// An event is late when its time is before the watermark at the moment it arrives (an
// event exactly at the watermark is not late). A late event is counted
// (gatewatch_detectors_late_events_total) and updates the baselines: the client key's
// first-seen time, event count and countries, the route's request rate and the start
// of traffic. It never enters a window, not even one that is still open, so it can
// neither open, extend nor complete one. new_country, which has no window, still checks
// a late event against the key's baseline, at once, so that a delayed log line cannot
// teach the baseline an attacker's country silently.
//
// new_country decides a country that a key's baseline does not hold once the
// watermark passes the earliest event from it, when every event before it has arrived.
// min_events counts the key's events in slots of allowed_lateness/2 before the slot of
// that event, so the count does not depend on arrival order either.
//
// # Incidents and updates
//
// While a detector keeps firing for one key, that is one incident with one alert id,
// AlertID(detector, key, incident start). The first firing emits the alert. Later
// firings update the incident: last_seen moves on, the evidence is that of the
// strongest firing (most forbidden responses, devices, requests, new countries), and
// the severity may rise (new_country escalates one step when two new countries come
// within an hour). An update is the same alert id emitted again with a last_seen that
// is never earlier; it is emitted at once when the severity rises or a new country
// joins, else at most once per window of event time, and once more when the incident
// ends with something not yet emitted. Receivers keep the latest version of an id. An
// incident ends when its key has not fired for the detector's cooldown (30 minutes;
// new_country: one hour, so that the countries of one hour share an incident); its
// key's next firing opens a new incident with a new id.
//
// Incidents live in memory. After a restart, replaying from the last committed
// offset rebuilds every open window exactly, so an attack still under way is raised
// again with the same id if its incident started after that offset, and as a new
// incident otherwise.
//
// # Determinism
//
// Alerts returned by one call are sorted by the event time they were raised at (a
// window's end, a new country's first event), then detector, key and id. Evidence
// lists are sorted, times are UTC with milliseconds, JSON comes from structs.
//
// Every decision (which alerts, their ids, times, severity, counts, ratios, p-values)
// depends on the set of events that are not late, not on their order. So do the
// samples in the evidence: forbidden_burst keeps, per bucket, the values of smallest
// hash; token_reuse keeps per device the client IP of smallest hash and the first two
// countries in code order from its current burst of activity (events closer together
// than the ring spans); quiet_endpoint_spike samples, per bucket, a run of traffic that
// started while the route was quiet (at most 1024 routes at once, so that an attacker
// inventing routes cannot make it sample everything); new_country samples the first
// events from the new country.
//
// # State
//
// Every detector caps its keys at max_keys and evicts the coldest, counting
// evictions (gatewatch_detectors_evictions_total); idle keys expire, driven by the
// watermark, once no open window needs them. Distinct counts are exact sets of 64-bit
// hashes up to 32 members, HyperLogLog sketches beyond (token_reuse's devices,
// forbidden_burst's distinct paths, quiet_endpoint_spike's distinct clients). The
// benchmarks measure about 190-250 bytes per tracked key. Observe allocates nothing
// per event for keys it already tracks.
//
// Baselines load before the first event and, while Run runs, again each time the
// watermark has advanced by baseline_refresh (5m of event time; 0: never): keys and
// routes this instance does not track, such as keys whose partition moved here in a
// rebalance, are adopted from the store, and the countries other instances learned are
// merged into the keys it tracks. A store holding only this engine's own writes merges
// to no change, so replays stay byte for byte.
//
// detectors imports ingest and no other part of gatewatch. It declares the interfaces
// it needs around it: EventSource, AlertSink and BaselineStore.
package detectors

package alerting

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

// A Group is what one notification carries: alert versions of one aggregation group
// that a receiver had waiting, delivered together.
type Group struct {
	// Key names the group, stable across restarts and replicas: a hash of the
	// group_by settings and the values the alerts share. Empty: the alerts are not
	// grouped, and each is a notification of its own.
	Key string
	// Labels are the values the alerts share, by group_by setting ("detector" →
	// "forbidden_burst"); nil when Key is empty.
	Labels map[string]string
	// Alerts are the versions to deliver now (new incidents, later versions, reminders),
	// in queue order. A receiver that lists a group's incidents (Slack) keeps those it
	// showed before itself.
	Alerts []detectors.Alert
	// Acks tells who acknowledged an incident; nil when nobody can.
	Acks AckLookup
}

// A GroupReceiver is a Receiver that renders a group as one notification: a Slack
// message listing its incidents, a single HEC request, a syslog summary line. The
// Router hands it every delivery through NotifyGroup, grouped or not (Key empty), and
// never calls its Notify. Receivers that are not GroupReceivers get a group's alerts in
// one Notify call, up to their batch size. The delivery contract of Receiver holds.
type GroupReceiver interface {
	Receiver
	NotifyGroup(ctx context.Context, g Group) (retry bool, err error)
}

// Bounds of grouping. groupScan is how far into a receiver's queue the Router looks
// for deliveries whose group is due; maxGroupAlerts bounds one notification. A group
// that has more waiting sends the rest in the next notifications, right away.
const (
	groupScan       = 5000
	maxGroupAlerts  = 1000
	maxFlushedKeys  = 100_000
	maxKeyPrefixLen = 256
)

// groupField is one parsed group_by setting.
type groupField struct {
	name   string // as configured
	kind   string // detector, severity, key, route, key_prefix, label
	arg    string // the label name
	prefix int    // key_prefix's length
}

func parseGroupField(s string) (groupField, error) {
	f := groupField{name: s, kind: s}
	switch {
	case s == "detector", s == "severity", s == "key", s == "route":
	case strings.HasPrefix(s, "labels."):
		f.kind, f.arg = "label", strings.TrimPrefix(s, "labels.")
		if f.arg == "" {
			return f, fmt.Errorf("labels. needs a label name")
		}
	case strings.HasPrefix(s, "key_prefix:"):
		n, err := strconv.Atoi(strings.TrimPrefix(s, "key_prefix:"))
		if err != nil || n < 1 || n > maxKeyPrefixLen {
			return f, fmt.Errorf("key_prefix:N needs N between 1 and %d", maxKeyPrefixLen)
		}
		f.kind, f.prefix = "key_prefix", n
	default:
		return f, fmt.Errorf("unknown %q (want detector, severity, key, route, key_prefix:N or labels.NAME)", s)
	}
	return f, nil
}

func (f *groupField) value(a *detectors.Alert) string {
	switch f.kind {
	case "detector":
		return a.Detector
	case "severity":
		return string(a.Severity)
	case "key":
		return a.Key
	case "route":
		return strings.TrimSpace(a.Evidence.Method + " " + a.Evidence.Route)
	case "key_prefix":
		if len(a.Key) <= f.prefix {
			return a.Key
		}
		return a.Key[:f.prefix]
	}
	return a.Labels[f.arg]
}

func (g *Grouping) validate(prefix string) []error {
	var errs []error
	for i, s := range g.GroupBy {
		if _, err := parseGroupField(s); err != nil {
			errs = append(errs, cfgErr(fmt.Sprintf("%sgroup_by[%d]", prefix, i), "%v", err))
		}
	}
	if g.GroupWait < 0 {
		errs = append(errs, cfgErr(prefix+"group_wait", "must not be negative"))
	}
	if g.GroupInterval < 0 {
		errs = append(errs, cfgErr(prefix+"group_interval", "must not be negative"))
	}
	return errs
}

// grouping is a parsed Grouping in force for one route; nil: no grouping.
type grouping struct {
	fields   []groupField
	wait     time.Duration
	interval time.Duration
}

// compileGrouping merges a route's grouping over the alerting section's; nil when
// the result groups nothing. cfg passed Validate.
func compileGrouping(route, global Grouping) *grouping {
	g := global
	if len(route.GroupBy) > 0 {
		g.GroupBy = route.GroupBy
	}
	if route.GroupWait > 0 {
		g.GroupWait = route.GroupWait
	}
	if route.GroupInterval > 0 {
		g.GroupInterval = route.GroupInterval
	}
	if len(g.GroupBy) == 0 {
		return nil
	}
	out := &grouping{wait: g.GroupWait, interval: g.GroupInterval}
	for _, s := range g.GroupBy {
		f, _ := parseGroupField(s)
		out.fields = append(out.fields, f)
	}
	return out
}

// key returns a's group: its key and the shared values. Fields are length-prefixed
// in the hash, so no two different groupings collide by concatenation.
func (g *grouping) key(a *detectors.Alert) (string, map[string]string) {
	h := sha256.New()
	labels := make(map[string]string, len(g.fields))
	var n [4]byte
	for i := range g.fields {
		f := &g.fields[i]
		v := f.value(a)
		labels[f.name] = v
		for _, s := range []string{f.name, v} {
			binary.BigEndian.PutUint32(n[:], uint32(len(s)))
			h.Write(n[:])
			h.Write([]byte(s))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:12]), labels
}

// groupOf returns the grouping of a's delivery to receiver under the current config:
// that of the route that sends it there; nil when it is not grouped.
func (r *Router) groupOf(a *detectors.Alert, receiver string) *grouping {
	for _, t := range r.routes.match(a, nil) {
		if t.receiver == receiver {
			return t.group
		}
	}
	return nil
}

// pendingGroup is the deliveries of one group found in a scan of a receiver's queue.
type pendingGroup struct {
	key    string
	labels map[string]string
	g      *grouping
	ds     []Delivery
	oldest time.Time // the earliest Queued among ds
}

// nextGroup picks from ds (a receiver's queue, oldest first) what to deliver now:
// the deliveries that are not grouped (up to the worker's batch), or else the first
// group in queue order that is due. A new group is due group_wait after its oldest
// delivery was queued; a group notified within the last group_interval, that long
// after that notification. When nothing is due it returns when the first group falls
// due.
func (r *Router) nextGroup(w *worker, ds []Delivery, now time.Time) (Group, []Delivery, time.Time) {
	var loose []Delivery
	groups := map[string]*pendingGroup{}
	var order []*pendingGroup
	// After a final error on a batch, alerts go one at a time (as deliver does), so
	// that only the bad one parks; a batch again would split again, for ever.
	limit := w.batch
	if w.single > 0 {
		limit = 1
	}
	for i := range ds {
		d := &ds[i]
		g := r.groupOf(&d.Alert, w.name)
		if g == nil || w.single > 0 {
			if len(loose) < limit {
				loose = append(loose, *d)
			}
			continue
		}
		key, labels := g.key(&d.Alert)
		pg := groups[key]
		if pg == nil {
			pg = &pendingGroup{key: key, labels: labels, g: g, oldest: d.Queued}
			groups[key] = pg
			order = append(order, pg)
		}
		if len(pg.ds) < w.groupCap() {
			pg.ds = append(pg.ds, *d)
		}
		if d.Queued.Before(pg.oldest) {
			pg.oldest = d.Queued
		}
	}
	if len(loose) > 0 {
		return Group{}, loose, time.Time{}
	}
	var next time.Time
	for _, pg := range order {
		due := pg.oldest.Add(pg.g.wait)
		if last, ok := w.flushed[pg.key]; ok && last.Add(pg.g.interval).After(due) {
			due = last.Add(pg.g.interval)
		}
		if !due.After(now) {
			return Group{Key: pg.key, Labels: pg.labels}, pg.ds, time.Time{}
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return Group{}, nil, next
}

// groupCap is how many alerts one notification of a group carries: maxGroupAlerts
// for a receiver that renders groups, else its batch size.
func (w *worker) groupCap() int {
	if _, ok := w.rcv.(GroupReceiver); ok {
		return maxGroupAlerts
	}
	return w.batch
}

// groupFlushed notes that group key was notified at now, and forgets groups whose
// interval is over (they are due at once when they come back), so the index holds
// only the groups notified recently.
func (w *worker) groupFlushed(key string, now time.Time, longest time.Duration) {
	if w.flushed == nil {
		w.flushed = map[string]time.Time{}
	}
	if len(w.flushed) >= maxFlushedKeys/2 {
		for k, t := range w.flushed {
			if now.Sub(t) > longest {
				delete(w.flushed, k)
			}
		}
		if len(w.flushed) >= maxFlushedKeys {
			// More groups within one interval than any storm has: forget them all;
			// the cost is one notification sooner per group.
			clear(w.flushed)
		}
	}
	w.flushed[key] = now
}

// deliverGrouped drains the queue of a receiver that groups, or that renders groups
// itself (a GroupReceiver), until wctx ends: each round scans the head of the queue,
// delivers what is due, and otherwise waits until the next group falls due or
// something new is queued.
func (r *Router) deliverGrouped(ctx, wctx context.Context, w *worker) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		ds, err := r.nextPending(ctx, wctx, w, func() int { return groupScan })
		if ds == nil {
			return err
		}
		now := r.now()
		g, batch, next := r.nextGroup(w, ds, now)
		if len(batch) == 0 {
			timer.Reset(max(next.Sub(now), time.Millisecond))
			select {
			case <-timer.C:
			case <-w.wake:
			case <-wctx.Done():
				return nil
			}
			continue
		}
		if w.lim != nil {
			n := 1 // a group is one notification
			if g.Key == "" {
				n = len(batch)
			}
			if err := w.lim.WaitN(wctx, min(n, w.lim.Burst())); err != nil {
				return nil
			}
		}
		g.Acks = r.acks
		wait, err := r.attemptGroup(ctx, w, g, batch)
		if err != nil {
			return err
		}
		if w.single > 0 {
			w.single--
		}
		if wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-wctx.Done():
				return nil
			}
		}
	}
}

// attemptGroup delivers ds as g: through NotifyGroup for a GroupReceiver, else one
// Notify call. On success a grouped delivery marks its group notified.
func (r *Router) attemptGroup(ctx context.Context, w *worker, g Group, ds []Delivery) (time.Duration, error) {
	var wait time.Duration
	var err error
	if gr, ok := w.rcv.(GroupReceiver); ok {
		g.Alerts = make([]detectors.Alert, len(ds))
		for i := range ds {
			g.Alerts[i] = ds[i].Alert
		}
		wait, err = r.attemptWith(ctx, w, ds, func(actx context.Context) (bool, error) { return gr.NotifyGroup(actx, g) })
	} else {
		wait, err = r.attempt(ctx, w, ds)
	}
	// A group with more waiting than one notification takes sends the rest at once;
	// the interval starts with its last part.
	if err == nil && g.Key != "" && ds[0].State == Delivered && len(ds) < w.groupCap() {
		w.groupFlushed(g.Key, r.now(), r.longestInterval)
	}
	return wait, err
}

// groupingFor reports whether any route may group the deliveries to receiver.
func (t *routeTable) groupingFor(receiver string) bool {
	if len(t.routes) == 0 {
		return t.group != nil
	}
	for i := range t.routes {
		if t.routes[i].group != nil && slices.Contains(t.routes[i].Receivers, receiver) {
			return true
		}
	}
	return false
}

// longestGroupInterval is the longest group_interval in force, how long a group's
// last notification matters.
func (t *routeTable) longestGroupInterval() time.Duration {
	var d time.Duration
	if t.group != nil {
		d = t.group.interval
	}
	for i := range t.routes {
		if g := t.routes[i].group; g != nil {
			d = max(d, g.interval)
		}
	}
	return d
}

// GroupLabels returns the labels of g in a stable order, for display: "detector=x".
func GroupLabels(labels map[string]string) []string {
	out := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out = append(out, k+"="+labels[k])
	}
	return out
}

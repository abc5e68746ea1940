package replay

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// Options says what to replay and where the alerts go.
type Options struct {
	Source    detectors.EventSource // required: where the events come from, in order
	Detectors detectors.Config
	// Variants are more detector configs run over the same events in the same pass,
	// each by an engine of its own (--compare, --sweep): the input is read once.
	Variants []Variant
	// Baselines is the snapshot every engine starts from: what the store says the
	// baselines were at From (or at From minus Warmup). Zero: empty baselines.
	Baselines detectors.Baselines
	// Incidents are the incidents open at From (or at From minus Warmup) as live had
	// them (IncidentsAsOf): a firing for one of their keys continues the incident
	// under its id instead of opening one, as it did live.
	Incidents   []detectors.IncidentState
	RunbookBase string    // alerting.runbook_base_url
	From, To    time.Time // zero: unbounded; events outside [From-Warmup, To) are skipped
	// Warmup is read before From to teach the detectors what normal looks like: its
	// events go through the engines, but the incidents that ended before From are not
	// printed (they are counted in Summary.WarmupIncidents).
	Warmup time.Duration
	Out    io.Writer // required: the alerts of Detectors, as JSON lines
	// Updates prints every version of an incident as the engine emits it (what a
	// receiver gets live). Otherwise each incident is printed once, in its final state,
	// after the input ends, sorted by first_seen, detector and key.
	Updates bool
	// Progress, when set, is called after every batch with where the replay is.
	Progress func(Progress)
}

// A Variant is one more detector config a replay runs alongside Options.Detectors.
type Variant struct {
	Name      string
	Detectors detectors.Config
}

// Progress is where a replay is, for a progress bar.
type Progress struct {
	Events    int       // events observed so far
	EventTime time.Time // the newest event time observed
}

// Summary is what a replay saw, for the human report on stderr.
type Summary struct {
	Events       int // events observed inside [From, To), warm-up excluded
	WarmupEvents int // events observed in the warm-up before From
	Skipped      int // events outside the range
	Late         int // events behind the watermark
	// KeyedNoCountry counts the events with a client key and no country: new_country
	// cannot judge them (their format logs no country, and no GeoIP database gave one).
	KeyedNoCountry  int
	WarmupIncidents int // incidents that ended before From: not printed
	Incidents       map[string]int
	Updates         map[string]int // alert versions beyond the first, per detector
	First           time.Time
	Last            time.Time
	WallTime        time.Duration
	EventsRate      float64 // events (warm-up included) per second of wall time
	// Results holds what each engine raised: Detectors' first, then each Variant's.
	Results []Result
}

// Result is what one engine raised over the replayed range.
type Result struct {
	Name      string // "" for Options.Detectors, else the Variant's
	Detectors detectors.Config
	// Alerts are the incidents in their final state, sorted as printed; incidents
	// that ended before From (in the warm-up) are left out.
	Alerts    []detectors.Alert
	Incidents map[string]int // per detector
}

// Run replays opts.Source through fresh engines, one per config, and writes the alerts
// of opts.Detectors to opts.Out. The source is read once: every engine observes every
// batch.
func Run(ctx context.Context, opts Options) (*Summary, error) {
	if opts.Source == nil || opts.Out == nil {
		return nil, errors.New("replay: Source and Out are required")
	}
	sum := &Summary{Incidents: map[string]int{}, Updates: map[string]int{}}
	configs := append([]Variant{{Detectors: opts.Detectors}}, opts.Variants...)
	lanes := make([]*lane, len(configs))
	for i, v := range configs {
		l, err := newLane(ctx, v, opts, sum, i == 0)
		if err != nil {
			return nil, err
		}
		lanes[i] = l
	}
	start := time.Now()
	src := &window{src: opts.Source, from: opts.From.Add(-opts.Warmup), warm: opts.From, to: opts.To, sum: sum}
	if err := drive(ctx, src, lanes, opts.Progress, sum); err != nil {
		return sum, err
	}
	for _, l := range lanes {
		if err := l.out.flush(); err != nil {
			return sum, err
		}
		sum.Results = append(sum.Results, l.result())
	}
	sum.WallTime = time.Since(start)
	if s := sum.WallTime.Seconds(); s > 0 {
		sum.EventsRate = float64(sum.Events+sum.WarmupEvents) / s
	}
	sum.Late = int(counterSum(lanes[0].reg, "gatewatch_detectors_late_events_total"))
	return sum, nil
}

// drive reads src to its end and has every lane observe every batch. A single lane
// observes on this goroutine; several run on goroutines of their own, a few batches
// behind the reader at most.
func drive(ctx context.Context, src *window, lanes []*lane, progress func(Progress), sum *Summary) error {
	var wg sync.WaitGroup
	if len(lanes) > 1 {
		for _, l := range lanes {
			l.in = make(chan *ingest.Batch, 4)
			wg.Go(func() {
				for b := range l.in {
					l.observe(b)
				}
			})
		}
	}
	var err error
	for {
		var b *ingest.Batch
		b, err = src.Next(ctx)
		if b != nil {
			for _, l := range lanes {
				if l.in != nil {
					l.in <- b
				} else {
					l.observe(b)
				}
			}
			if len(lanes) == 1 {
				b.Release() // its one engine is done with it: a file source parses into it again
			}
			if progress != nil {
				progress(Progress{Events: sum.Events + sum.WarmupEvents, EventTime: sum.Last})
			}
		}
		if err != nil {
			break
		}
	}
	for _, l := range lanes {
		if l.in != nil {
			close(l.in)
		}
	}
	wg.Wait()
	if !errors.Is(err, io.EOF) {
		return fmt.Errorf("replay: reading the input: %w", err)
	}
	for _, l := range lanes {
		l.out.put(l.eng.Flush())
		if l.out.err != nil {
			return l.out.err
		}
	}
	return nil
}

// A lane is one engine of a replay and what it raised.
type lane struct {
	ctx  context.Context
	name string
	cfg  detectors.Config
	eng  *detectors.Engine
	reg  *prometheus.Registry
	out  *collector
	in   chan *ingest.Batch // nil when the lane observes on the reading goroutine
	// batches counts the batches observed, for syncEvery.
	batches int
}

func newLane(ctx context.Context, v Variant, opts Options, sum *Summary, printed bool) (*lane, error) {
	reg := prometheus.NewRegistry()
	cfg := v.Detectors
	// The engine learns in memory from the snapshot it starts with: a refresh would
	// merge that snapshot and its own writes back in, which changes nothing.
	cfg.BaselineRefresh = 0
	// The store is bounded (MemoryLimits), as the detectors are: it keeps what they
	// evicted a while longer, for when those keys come back.
	mem := detectors.NewMemoryBaselines(opts.Baselines, detectors.MemoryLimits(cfg))
	eo := detectors.Options{Baselines: mem, Registerer: reg, RunbookBaseURL: opts.RunbookBase}
	if len(opts.Incidents) > 0 {
		// Handed to the engine as a restart finds them; what it saves stays here.
		inc := detectors.NewMemoryIncidents()
		if err := inc.SaveIncidents(ctx, "", opts.Incidents, nil); err != nil {
			return nil, err
		}
		eo.Incidents = inc
	}
	eng, err := detectors.NewEngine(cfg, eo)
	if err != nil {
		if v.Name != "" {
			return nil, fmt.Errorf("replay: %s: %w", v.Name, err)
		}
		return nil, err
	}
	if err := eng.LoadBaselines(ctx); err != nil {
		return nil, err
	}
	if err := eng.LoadIncidents(ctx); err != nil {
		return nil, err
	}
	c := &collector{from: opts.From, final: map[string]detectors.Alert{}, incidents: map[string]int{}}
	if printed {
		c.out, c.updates, c.sum = opts.Out, opts.Updates, sum
	}
	return &lane{ctx: ctx, name: v.Name, cfg: v.Detectors, eng: eng, reg: reg, out: c}, nil
}

// observe runs b through the lane's engine as Run does live: the baselines of the keys
// it brings that the detectors do not hold are looked up first, and what the batches
// taught is written every syncEvery batches.
func (l *lane) observe(b *ingest.Batch) {
	if l.out.err != nil {
		return
	}
	if err := l.eng.FetchBaselines(l.ctx, b.Events); err != nil {
		l.out.err = err
		return
	}
	l.out.put(l.eng.ObserveBatch(b))
	if l.batches++; l.batches%syncEvery != 0 && !l.eng.HoldsEvicted() {
		return
	}
	if err := l.eng.SyncBaselines(l.ctx); err != nil && l.out.err == nil {
		l.out.err = err
	}
}

// syncEvery is how many batches a lane observes between writes of what they taught
// to its baselines, which live in memory and which only its own lookups read: a key
// active in every batch is written once, not sixteen times. In a CPU profile of 30
// replays of BenchmarkReplayAWSWAF's file, the writes took 0.06s instead of 0.68s
// and the allocations fell from 69,000 to 13,000 a replay. Keys evicted with changes
// are written at the next batch, as live.
var syncEvery = 16

func (l *lane) result() Result {
	return Result{Name: l.name, Detectors: l.cfg, Alerts: l.out.alerts, Incidents: l.out.incidents}
}

// window drops the events outside [from, to) and keeps the summary's counts; events
// before warm are the warm-up.
type window struct {
	src            detectors.EventSource
	from, warm, to time.Time
	sum            *Summary
}

func (w *window) Next(ctx context.Context) (*ingest.Batch, error) {
	b, err := w.src.Next(ctx)
	if b == nil {
		return nil, err
	}
	if !w.from.IsZero() || !w.to.IsZero() {
		w.sum.Skipped += b.Filter(func(ev *ingest.Event) bool { return inRange(ev.Time, w.from, w.to) })
	}
	for i := range b.Events {
		t := b.Events[i].Time
		if !w.warm.IsZero() && t.Before(w.warm) {
			w.sum.WarmupEvents++
			continue
		}
		w.sum.Events++
		if ev := &b.Events[i]; ev.ClientKey != "" && ev.Country == "" {
			w.sum.KeyedNoCountry++
		}
		if w.sum.First.IsZero() || t.Before(w.sum.First) {
			w.sum.First = t
		}
		if t.After(w.sum.Last) {
			w.sum.Last = t
		}
	}
	return b, err
}

// collector is an engine's AlertSink: it keeps each incident's final state and, for
// the printed engine, writes the alerts.
type collector struct {
	from      time.Time // incidents whose last version ends before it are the warm-up's
	final     map[string]detectors.Alert
	incidents map[string]int
	alerts    []detectors.Alert // after flush: the final states, sorted
	out       io.Writer         // nil: an engine whose alerts are not printed
	updates   bool
	sum       *Summary
	err       error
}

func (c *collector) put(alerts []detectors.Alert) {
	for _, a := range alerts {
		_, seen := c.final[a.ID]
		c.final[a.ID] = a
		if c.sum != nil && seen {
			c.sum.Updates[a.Detector]++
		}
		if c.out != nil && c.updates && c.err == nil && !c.warmup(a) {
			c.err = writeAlert(c.out, a)
		}
	}
}

// warmup reports whether a's incident was over before the range began.
func (c *collector) warmup(a detectors.Alert) bool {
	return !c.from.IsZero() && a.LastSeen.Before(c.from)
}

// flush sorts the final states and, unless every version was printed as it came,
// writes them.
func (c *collector) flush() error {
	if c.err != nil {
		return c.err
	}
	for _, a := range c.final {
		if c.warmup(a) {
			if c.sum != nil {
				c.sum.WarmupIncidents++
			}
			continue
		}
		c.alerts = append(c.alerts, a)
		c.incidents[a.Detector]++
		if c.sum != nil {
			c.sum.Incidents[a.Detector]++
		}
	}
	sortAlerts(c.alerts)
	if c.out == nil || c.updates {
		return nil
	}
	for _, a := range c.alerts {
		if err := writeAlert(c.out, a); err != nil {
			return err
		}
	}
	return nil
}

// sortAlerts orders alerts as replay prints them: by first_seen, detector, key, id.
func sortAlerts(all []detectors.Alert) {
	slices.SortFunc(all, func(a, b detectors.Alert) int {
		return cmp.Or(a.FirstSeen.Compare(b.FirstSeen), strings.Compare(a.Detector, b.Detector),
			strings.Compare(a.Key, b.Key), strings.Compare(a.ID, b.ID))
	})
}

func writeAlert(w io.Writer, a detectors.Alert) error {
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("replay: encode alert: %w", err)
	}
	if _, err = w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("replay: write alert: %w", err)
	}
	return nil
}

// topKeys is how many keys the summary names per detector.
const topKeys = 3

// WriteSummary writes the human report of a replay, its first line starting with label:
// the events read, and per detector the incidents, the updates and the keys with the
// most incidents.
func (s *Summary) WriteSummary(w io.Writer, label string) {
	fmt.Fprintf(w, "%s: %d events", label, s.Events)
	if !s.First.IsZero() {
		fmt.Fprintf(w, " from %s to %s", s.First.UTC().Format(time.RFC3339), s.Last.UTC().Format(time.RFC3339))
	}
	if s.WarmupEvents > 0 {
		fmt.Fprintf(w, ", %d in the warm-up before them", s.WarmupEvents)
	}
	if s.Skipped > 0 {
		fmt.Fprintf(w, ", %d outside --from/--to", s.Skipped)
	}
	fmt.Fprintf(w, ", %d late", s.Late)
	if s.WallTime > 0 {
		fmt.Fprintf(w, " (%.0f events/s)", s.EventsRate)
	}
	fmt.Fprintln(w)
	var top map[string][]string
	if len(s.Results) > 0 {
		top = s.Results[0].topKeys(topKeys)
	}
	fmt.Fprintf(w, "  %-22s %9s %8s  %s\n", "detector", "incidents", "updates", "top keys (incidents)")
	for _, d := range slices.Sorted(slices.Values(detectors.Names)) {
		fmt.Fprintf(w, "  %-22s %9d %8d  %s\n", d, s.Incidents[d], s.Updates[d], strings.Join(top[d], ", "))
	}
	if s.WarmupIncidents > 0 {
		noun := "incidents"
		if s.WarmupIncidents == 1 {
			noun = "incident"
		}
		fmt.Fprintf(w, "  %d %s ended in the warm-up, before --from: not printed\n", s.WarmupIncidents, noun)
	}
}

// topKeys returns, per detector, the n keys with the most incidents, as "key (n)".
func (r *Result) topKeys(n int) map[string][]string {
	count := map[string]map[string]int{}
	for _, a := range r.Alerts {
		if count[a.Detector] == nil {
			count[a.Detector] = map[string]int{}
		}
		count[a.Detector][a.Key]++
	}
	out := map[string][]string{}
	for d, keys := range count {
		ks := slices.SortedFunc(maps.Keys(keys), func(a, b string) int {
			return cmp.Or(keys[b]-keys[a], strings.Compare(a, b))
		})
		for _, k := range ks[:min(n, len(ks))] {
			out[d] = append(out[d], fmt.Sprintf("%s (%d)", k, keys[k]))
		}
	}
	return out
}

// counterSum adds up every series of one counter in reg.
func counterSum(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += counterValue(m)
		}
	}
	return total
}

func counterValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return 0
}

// IncidentsAsOf returns the incidents of alerts (the latest version of each, from the
// alert history) that were open at t, as an engine starting at t restores them: those
// first seen before t, last firing at their last evidence before t (t itself when
// they went on after it), so that a firing within the detector's cooldown continues
// the incident under its id and one after it opens a new incident. Evidence, summary
// and strength start empty: the replay's own firings fill them.
func IncidentsAsOf(alerts []detectors.Alert, t time.Time) []detectors.IncidentState {
	var out []detectors.IncidentState
	before := t.Add(-time.Millisecond)
	for _, a := range alerts {
		if !a.FirstSeen.Before(t) {
			continue
		}
		last := a.LastSeen
		if last.After(before) {
			last = before
		}
		out = append(out, detectors.IncidentState{
			IncidentRef: detectors.IncidentRef{Detector: a.Detector, Key: a.Key},
			ID:          a.ID, Start: a.FirstSeen, Last: last, LastFire: last, LastEmit: last,
			Severity: a.Severity, Labels: a.Labels,
		})
	}
	return out
}

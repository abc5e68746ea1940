package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// Options says what to replay and where the alerts go.
type Options struct {
	Source      detectors.EventSource // required: where the events come from, in order
	Detectors   detectors.Config
	Baselines   detectors.BaselineStore // nil: start from empty in-memory baselines
	RunbookBase string                  // alerting.runbook_base_url
	From, To    time.Time               // zero: unbounded; events outside [From, To) are skipped
	Out         io.Writer               // required: alerts as JSON lines
	// Updates prints every version of an incident as the engine emits it (what a
	// receiver gets live). Otherwise each incident is printed once, in its final state,
	// after the input ends, sorted by first_seen, detector and key.
	Updates bool
}

// Summary is what a replay saw, for the human report on stderr.
type Summary struct {
	Events     int            // events observed (inside From/To)
	Skipped    int            // events outside From/To
	Late       int            // events behind the watermark
	Incidents  map[string]int // per detector
	Updates    map[string]int // alert versions beyond the first, per detector
	First      time.Time
	Last       time.Time
	WallTime   time.Duration
	EventsRate float64 // events per second of wall time
}

// Run replays opts.Source through a fresh engine and writes the alerts to opts.Out.
func Run(ctx context.Context, opts Options) (*Summary, error) {
	if opts.Source == nil || opts.Out == nil {
		return nil, errors.New("replay: Source and Out are required")
	}
	reg := prometheus.NewRegistry()
	if opts.Baselines == nil {
		// The engine's own in-memory baselines hold only what it wrote itself, so a
		// refresh could change nothing; skip the reloads.
		opts.Detectors.BaselineRefresh = 0
	}
	eng, err := detectors.NewEngine(opts.Detectors, detectors.Options{
		Baselines: opts.Baselines, Registerer: reg, RunbookBaseURL: opts.RunbookBase,
	})
	if err != nil {
		return nil, err
	}
	sum := &Summary{Incidents: map[string]int{}, Updates: map[string]int{}}
	src := &window{src: opts.Source, from: opts.From, to: opts.To, sum: sum}
	sink := &printer{out: opts.Out, updates: opts.Updates, sum: sum, final: map[string]detectors.Alert{}}
	start := time.Now()
	if err := eng.Run(ctx, src, sink); err != nil {
		return sum, err
	}
	if err := sink.flush(); err != nil {
		return sum, err
	}
	sum.WallTime = time.Since(start)
	if s := sum.WallTime.Seconds(); s > 0 {
		sum.EventsRate = float64(sum.Events) / s
	}
	sum.Late = int(counterSum(reg, "gatewatch_detectors_late_events_total"))
	return sum, nil
}

// window drops the events outside [from, to) and keeps the summary's counts.
type window struct {
	src      detectors.EventSource
	from, to time.Time
	sum      *Summary
}

func (w *window) Next(ctx context.Context) (*ingest.Batch, error) {
	b, err := w.src.Next(ctx)
	if b == nil {
		return nil, err
	}
	if !w.from.IsZero() || !w.to.IsZero() {
		w.sum.Skipped += b.Filter(func(ev *ingest.Event) bool {
			return (w.from.IsZero() || !ev.Time.Before(w.from)) && (w.to.IsZero() || ev.Time.Before(w.to))
		})
	}
	for i := range b.Events {
		t := b.Events[i].Time
		if w.sum.First.IsZero() || t.Before(w.sum.First) {
			w.sum.First = t
		}
		if t.After(w.sum.Last) {
			w.sum.Last = t
		}
	}
	w.sum.Events += len(b.Events)
	return b, err
}

// printer is the replay's AlertSink.
type printer struct {
	out     io.Writer
	updates bool
	sum     *Summary
	final   map[string]detectors.Alert
}

func (p *printer) Put(_ context.Context, alerts []detectors.Alert) error {
	for _, a := range alerts {
		if _, seen := p.final[a.ID]; seen {
			p.sum.Updates[a.Detector]++
		} else {
			p.sum.Incidents[a.Detector]++
		}
		p.final[a.ID] = a
		if p.updates {
			if err := writeAlert(p.out, a); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *printer) flush() error {
	if p.updates {
		return nil
	}
	all := make([]detectors.Alert, 0, len(p.final))
	for _, a := range p.final {
		all = append(all, a)
	}
	slices.SortFunc(all, func(a, b detectors.Alert) int {
		if c := a.FirstSeen.Compare(b.FirstSeen); c != 0 {
			return c
		}
		if c := strings.Compare(a.Detector, b.Detector); c != 0 {
			return c
		}
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	for _, a := range all {
		if err := writeAlert(p.out, a); err != nil {
			return err
		}
	}
	return nil
}

func writeAlert(w io.Writer, a detectors.Alert) error {
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("replay: encode alert: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteSummary writes the human report of a replay, its first line starting with label.
func (s *Summary) WriteSummary(w io.Writer, label string) {
	fmt.Fprintf(w, "%s: %d events", label, s.Events)
	if !s.First.IsZero() {
		fmt.Fprintf(w, " from %s to %s", s.First.UTC().Format(time.RFC3339), s.Last.UTC().Format(time.RFC3339))
	}
	if s.Skipped > 0 {
		fmt.Fprintf(w, ", %d outside --from/--to", s.Skipped)
	}
	fmt.Fprintf(w, ", %d late", s.Late)
	if s.WallTime > 0 {
		fmt.Fprintf(w, " (%.0f events/s)", s.EventsRate)
	}
	fmt.Fprintln(w)
	names := slices.Clone(detectors.Names)
	sort.Strings(names)
	fmt.Fprintf(w, "  %-22s %9s %8s\n", "detector", "incidents", "updates")
	for _, d := range names {
		fmt.Fprintf(w, "  %-22s %9d %8d\n", d, s.Incidents[d], s.Updates[d])
	}
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

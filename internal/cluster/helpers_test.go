package cluster

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// testParserOptions parses with a fixed token secret, so fingerprints (and alert ids)
// are the same in every run.
func testParserOptions(t testing.TB) ingest.ParserOptions {
	t.Helper()
	s, err := ingest.NewTokenSecret([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	return ingest.ParserOptions{Secret: s}
}

// trafficSpan is how much synthetic traffic the tests generate: two hours, as run's
// end-to-end tests do, or one under -short (the race detector slows the brokers and
// engines of the Kafka tests about tenfold).
func trafficSpan() time.Duration {
	if testing.Short() {
		return time.Hour
	}
	return 2 * time.Hour
}

// testDetectors are the detectors' defaults with learning short enough for the
// synthetic traffic (a quarter of it), as run's end-to-end tests set them.
func testDetectors() detectors.Config {
	cfg := detectors.DefaultConfig()
	cfg.NewCountry.LearningPeriod = trafficSpan() / 4
	cfg.NewCountry.MinEvents = 20
	cfg.QuietEndpointSpike.LearningPeriod = trafficSpan() / 4
	cfg.ObjectEnumeration.LearningPeriod = trafficSpan() / 4
	cfg.PrivilegeAnomaly.LearningPeriod = trafficSpan() / 4
	cfg.ClientVolumeSpike.LearningPeriod = trafficSpan() / 4
	cfg.IdleTimeout = time.Hour // the tests decide no partition is idle by the wall clock
	return cfg
}

// traffic is trafficSpan of seeded synthetic traffic with every attack, from a fixed
// start, and its AWS WAF records.
func traffic(t testing.TB, seed uint64) ([]synth.Request, []synth.Injected, [][]byte) {
	t.Helper()
	reqs, injected, err := synth.Generate(synth.Config{Duration: trafficSpan(), Rate: 3, Seed: seed, Attacks: synth.Attacks})
	if err != nil {
		t.Fatal(err)
	}
	raw := make([][]byte, len(reqs))
	for i := range reqs {
		if raw[i], err = synth.AppendRecord(nil, ingest.FormatAWSWAF, &reqs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return reqs, injected, raw
}

// parseAll parses records with the AWS WAF parser.
func parseAll(t testing.TB, raw [][]byte) []ingest.Event {
	t.Helper()
	p, err := ingest.NewParser(ingest.FormatAWSWAF, testParserOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	evs := make([]ingest.Event, len(raw))
	for i, r := range raw {
		if err := p.Parse(&evs[i], r); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		evs[i] = evs[i].Clone()
	}
	return evs
}

// alertSet collects alerts, as JSON, from any number of tasks.
type alertSet struct {
	mu  sync.Mutex
	all map[string]struct{}
}

func newAlertSet() *alertSet { return &alertSet{all: map[string]struct{}{}} }

func (s *alertSet) Put(_ context.Context, alerts []detectors.Alert) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range alerts {
		b, err := json.Marshal(a)
		if err != nil {
			return err
		}
		s.all[string(b)] = struct{}{}
	}
	return nil
}

// sorted returns every distinct alert version seen, sorted.
func (s *alertSet) sorted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.all))
	for a := range s.all {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/replay"
)

// writeSample writes generated traffic with every attack to a file in format.
func writeSample(t testing.TB, cfg synth.Config, format string) string {
	t.Helper()
	reqs, _, err := synth.Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	var line []byte
	for i := range reqs {
		line, _ = synth.AppendRecord(line[:0], format, &reqs[i])
		buf.Write(line)
		buf.WriteByte('\n')
	}
	path := filepath.Join(t.TempDir(), "sample."+format)
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func demoDetectors() detectors.Config {
	cfg := detectors.DefaultConfig()
	cfg.NewCountry.LearningPeriod = 30 * time.Minute
	cfg.QuietEndpointSpike.LearningPeriod = 30 * time.Minute
	cfg.ObjectEnumeration.LearningPeriod = 30 * time.Minute
	cfg.PrivilegeAnomaly.LearningPeriod = 30 * time.Minute
	cfg.ClientVolumeSpike.LearningPeriod = 30 * time.Minute
	return cfg
}

func secret(t testing.TB) ingest.TokenSecret {
	s, err := ingest.NewTokenSecret([]byte("replay-test-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// run replays the file at path, parsed by workers goroutines (0: the default).
func run(t testing.TB, path, format string, workers int, o replay.Options) ([]byte, *replay.Summary) {
	t.Helper()
	src := fileSource(t, path, format, workers)
	defer src.Close()
	return replayOf(t, src, o)
}

// fileSource opens the file at path as these tests parse it; the caller closes it.
func fileSource(t testing.TB, path, format string, workers int) *ingest.FileSource {
	t.Helper()
	src, err := ingest.NewFileSource([]string{path}, ingest.FileOptions{
		Format: format, Parser: parserOptions(t), Workers: workers, Registerer: prometheus.NewPedanticRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// eachBatch calls fn with the events of every batch of the AWS WAF file at path, in
// order. They share the parser's buffers: fn clones what it keeps.
func eachBatch(t testing.TB, path string, fn func([]ingest.Event)) {
	t.Helper()
	fs := fileSource(t, path, ingest.FormatAWSWAF, 0)
	defer fs.Close()
	for {
		b, err := fs.Next(context.Background())
		if b != nil {
			fn(b.Events)
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplayIsDeterministic replays each file again with other numbers of parsing
// goroutines, and through auto: the alerts are byte-identical, one incident per attack.
func TestReplayIsDeterministic(t *testing.T) {
	cfg := synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}
	var first []byte
	for _, format := range []string{ingest.FormatAWSWAF, ingest.FormatCloudflare} {
		path := writeSample(t, cfg, format)
		want, sum := run(t, path, format, 1, replay.Options{})
		if sum.Events == 0 || sum.Late != 0 {
			t.Errorf("%s: summary %+v", format, sum)
		}
		for _, tc := range []struct {
			as      string
			workers int
		}{{format, 4}, {ingest.FormatAuto, 2}} {
			if got, _ := run(t, path, tc.as, tc.workers, replay.Options{}); !bytes.Equal(got, want) {
				t.Errorf("%s as %s with %d workers: alerts differ\nwant %s\ngot  %s", format, tc.as, tc.workers, want, got)
			}
		}
		if first == nil {
			first = want
		}
	}
	var kinds []string
	for _, l := range strings.Split(strings.TrimSpace(string(first)), "\n") {
		var a detectors.Alert
		if err := json.Unmarshal([]byte(l), &a); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, a.Detector)
	}
	slices.Sort(kinds)
	if want := slices.Sorted(slices.Values(synth.Attacks)); !slices.Equal(kinds, want) {
		t.Errorf("incidents %v, want one per attack %v", kinds, want)
	}
}

// TestReplayMergesPodLogs replays the logs of three replicas of a gateway over the same
// hour (one traffic split among them, a directory of container logs): the alerts are
// byte-identical to the whole traffic's, and nothing is late. Read one file after the
// other, two thirds of the events were late and attacks were missed.
func TestReplayMergesPodLogs(t *testing.T) {
	cfg := synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}
	path := writeSample(t, cfg, ingest.FormatAWSWAF)
	want, _ := run(t, path, ingest.FormatAWSWAF, 0, replay.Options{})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pods := make([]bytes.Buffer, 3)
	for i, line := range bytes.SplitAfter(data, []byte("\n")) {
		pods[i%len(pods)].Write(line)
	}
	dir := t.TempDir()
	for i := range pods {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("ingress-%d.log", i)), pods[i].Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, sum := run(t, dir, ingest.FormatAWSWAF, 0, replay.Options{})
	if sum.Late != 0 {
		t.Errorf("%d events late, want none", sum.Late)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("alerts differ from the whole traffic's\nwant %s\ngot  %s", want, got)
	}
}

func TestReplayTimeRange(t *testing.T) {
	cfg := synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}
	waf := writeSample(t, cfg, ingest.FormatAWSWAF)
	// Stop before the attacks start at 60% of the hour: nothing to find.
	out, sum := run(t, waf, ingest.FormatAWSWAF, 2, replay.Options{To: synth.DefaultStart.Add(30 * time.Minute)})
	if len(out) != 0 {
		t.Errorf("alerts before any attack:\n%s", out)
	}
	if sum.Skipped == 0 || !sum.Last.Before(synth.DefaultStart.Add(30*time.Minute)) {
		t.Errorf("--to not applied: %+v", sum)
	}
	var w strings.Builder
	sum.WriteSummary(&w, "replay")
	if !strings.Contains(w.String(), "outside --from/--to") {
		t.Errorf("summary does not report skipped events:\n%s", w.String())
	}
}

func TestWriteSummaryWarmupIncidents(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string // "": no line about the warm-up
	}{
		{0, ""},
		{1, "\n  1 incident ended in the warm-up, before --from: not printed\n"},
		{2, "\n  2 incidents ended in the warm-up, before --from: not printed\n"},
	} {
		var w strings.Builder
		(&replay.Summary{WarmupIncidents: tc.n}).WriteSummary(&w, "replay")
		if got := w.String(); !strings.Contains(got, tc.want) || (tc.want == "" && strings.Contains(got, "warm-up")) {
			t.Errorf("%d incidents in the warm-up, want %q:\n%s", tc.n, tc.want, got)
		}
	}
}

// TestReplayContinuesIncidentsOpenAtFrom: a replay that starts while an incident is
// under way opens it anew, under another id, unless it is given the incidents open at
// --from (IncidentsAsOf over the alert history): then the attack's alert keeps the id
// the whole replay gave it, as a live service restarted there would.
func TestReplayContinuesIncidentsOpenAtFrom(t *testing.T) {
	cfg := synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}
	waf := writeSample(t, cfg, ingest.FormatAWSWAF)
	out, _ := run(t, waf, ingest.FormatAWSWAF, 2, replay.Options{})
	whole := alertsIn(t, out)
	// The longest incident of a detector that needs no baseline to fire, cut in two.
	var long detectors.Alert
	for _, a := range whole {
		switch a.Detector {
		case detectors.ForbiddenBurst, detectors.TokenReuse, detectors.RouteScan, detectors.AuthFailureSpray:
			if a.LastSeen.Sub(a.FirstSeen) > long.LastSeen.Sub(long.FirstSeen) {
				long = a
			}
		}
	}
	from := long.FirstSeen.Add(long.LastSeen.Sub(long.FirstSeen) / 2).Truncate(time.Second)
	if !from.After(long.FirstSeen) {
		t.Fatalf("no incident long enough to cut: %+v", long)
	}
	find := func(alerts []detectors.Alert) *detectors.Alert {
		for i := range alerts {
			if alerts[i].Detector == long.Detector && alerts[i].Key == long.Key {
				return &alerts[i]
			}
		}
		return nil
	}
	out, _ = run(t, waf, ingest.FormatAWSWAF, 2, replay.Options{From: from})
	cut := find(alertsIn(t, out))
	if cut == nil || cut.ID == long.ID {
		t.Fatalf("from %s, without the open incidents: %+v, want the %s attack under another id than %s", from, cut, long.Detector, long.ID)
	}
	out, _ = run(t, waf, ingest.FormatAWSWAF, 2, replay.Options{From: from, Incidents: replay.IncidentsAsOf(whole, from)})
	got := find(alertsIn(t, out))
	if got == nil || got.ID != long.ID || !got.FirstSeen.Equal(long.FirstSeen) {
		t.Fatalf("from %s, with the open incidents: %+v, want %s first seen %s", from, got, long.ID, long.FirstSeen)
	}
	if n := len(alertsIn(t, out)); n > len(whole) {
		t.Errorf("%d alerts from %s, more than the %d of the whole replay", n, from, len(whole))
	}
}

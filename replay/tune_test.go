package replay_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/replay"
)

func set(t testing.TB, cfg detectors.Config, path, value string) detectors.Config {
	t.Helper()
	if err := cfg.Set(path, value); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestCompareAndSweepAgreeWithSeparateRuns: the engines of --compare and --sweep,
// run over one read of the input, raise what separate replays of each config raise.
func TestCompareAndSweepAgreeWithSeparateRuns(t *testing.T) {
	path := writeSample(t, synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}, ingest.FormatAWSWAF)
	sw, err := replay.ParseSweep("detectors.forbidden_burst.threshold=2,20,500")
	if err != nil {
		t.Fatal(err)
	}
	variants, err := sw.Variants(demoDetectors())
	if err != nil {
		t.Fatal(err)
	}
	loose := set(t, demoDetectors(), "detectors.token_reuse.max_devices", "10")
	variants = append(variants, replay.Variant{Name: "loose", Detectors: loose})
	base, sum := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{Variants: variants})
	if len(sum.Results) != 1+len(variants) {
		t.Fatalf("%d results, want %d", len(sum.Results), 1+len(variants))
	}
	alone, _ := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{})
	if !bytes.Equal(base, alone) {
		t.Error("the printed alerts change when variants run beside them")
	}
	counts := map[string]int{}
	for i, v := range variants {
		want, _ := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{Detectors: v.Detectors})
		var got bytes.Buffer
		for _, a := range sum.Results[1+i].Alerts {
			b, _ := a.MarshalJSON()
			got.Write(append(b, '\n'))
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("variant %s: alerts differ from a replay of its config alone:\nwant %v\ngot  %v", v.Name, ids(t, want), ids(t, got.Bytes()))
		}
		counts[v.Name] = sum.Results[1+i].Incidents[detectors.ForbiddenBurst]
	}
	if !(counts["2"] >= counts["20"] && counts["20"] >= counts["500"] && counts["2"] > counts["500"]) {
		t.Errorf("forbidden_burst incidents per threshold %v: want fewer as it rises", counts)
	}

	// Labels: the base's forbidden_burst alert is the attack; 500 misses it.
	var attack detectors.Alert
	for _, a := range sum.Results[0].Alerts {
		if a.Detector == detectors.ForbiddenBurst {
			attack = a
		}
	}
	labels, err := replay.ReadLabels(strings.NewReader(fmt.Sprintf("{\"id\": %q, \"attack\": true}\n", attack.ID)))
	if err != nil {
		t.Fatal(err)
	}
	if err := replay.ResolveLabels(labels, sum.Results[0].Alerts); err != nil {
		t.Fatal(err)
	}
	rows := replay.SweepRows(sw, sum.Results[1:1+len(sw.Values)], labels)
	if rows[0].Caught != 1 || rows[1].Caught != 1 || rows[2].Caught != 0 || len(rows[2].Missed) != 1 {
		t.Errorf("attacks caught per value: %+v", rows)
	}
	var table strings.Builder
	replay.WriteSweep(&table, sw, rows, labels)
	if !regexp.MustCompile(`(?m)^  500 +0 +\d+ +0 of 1 +0  ` + attack.ID + `$`).MatchString(table.String()) {
		t.Errorf("sweep table:\n%s", table.String())
	}

	var cmp strings.Builder
	d := replay.WriteCompare(&cmp, "base", sum.Results[0], "loose", sum.Results[len(sum.Results)-1])
	if len(d.OnlyA) == 0 || !strings.Contains(cmp.String(), "only in A (base): ") {
		t.Errorf("max_devices 10 still raises every token_reuse incident?\n%s", cmp.String())
	}
	for _, a := range d.OnlyA {
		if a.Detector != detectors.TokenReuse {
			t.Errorf("only in base: %s %s, want only token_reuse incidents", a.Detector, a.Key)
		}
	}
}

func TestParseSweep(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string
	}{
		{"detectors.forbidden_burst.threshold=10,20,50", []string{"10", "20", "50"}, ""},
		{"detectors.forbidden_burst.statuses=[403],[401,403]", []string{"[403]", "[401,403]"}, ""},
		{"detectors.forbidden_burst.threshold", nil, "want detectors.NAME.PARAM"},
		{"forbidden_burst.threshold=1,2", nil, "want detectors.NAME.PARAM"},
		{"detectors.forbidden_burst.threshold=1,,2", nil, "empty value"},
		{"detectors.forbidden_burst.threshold=1,1", nil, "1 twice"},
		{"detectors.allowed_lateness=30s,1m", nil, "engine-wide"},
	} {
		sw, err := replay.ParseSweep(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseSweep(%q) = %v, want an error with %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || strings.Join(sw.Values, " ") != strings.Join(tc.want, " ")):
			t.Errorf("ParseSweep(%q) = %v, %v, want %v", tc.in, sw.Values, err, tc.want)
		}
	}
	sw, _ := replay.ParseSweep("detectors.forbidden_burst.threshold=10,minus")
	if _, err := sw.Variants(demoDetectors()); err == nil {
		t.Error("a value that is no number made a variant")
	}
}

// TestWarmup: a replay that starts at an attack, after a warm-up that covers the
// traffic before it, raises what the whole replay raises from there on; incidents of the
// warm-up are counted, not printed.
func TestWarmup(t *testing.T) {
	cfg := synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}
	path := writeSample(t, cfg, ingest.FormatAWSWAF)
	whole, _ := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{})
	from := synth.DefaultStart.Add(50 * time.Minute)
	var want []string
	for _, l := range strings.Split(strings.TrimSpace(string(whole)), "\n") {
		var a detectors.Alert
		if err := json.Unmarshal([]byte(l), &a); err != nil {
			t.Fatal(err)
		}
		if !a.LastSeen.Before(from) {
			want = append(want, a.ID)
		}
	}
	got, sum := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{From: from, Warmup: 50 * time.Minute})
	if strings.Join(ids(t, got), " ") != strings.Join(want, " ") {
		t.Errorf("after a warm-up: %v, want the whole replay's from --from on: %v", ids(t, got), want)
	}
	if sum.WarmupEvents == 0 || sum.WarmupIncidents != len(ids(t, whole))-len(want) {
		t.Errorf("warm-up: %d events, %d incidents, want %d", sum.WarmupEvents, sum.WarmupIncidents, len(ids(t, whole))-len(want))
	}
	// Without the warm-up the detectors that learn have nothing to go on.
	cold, _ := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{From: from})
	if len(ids(t, cold)) >= len(want) {
		t.Errorf("a cold start at --from raises %d incidents, the warm one %d: the warm-up taught nothing", len(ids(t, cold)), len(want))
	}
}

func TestReadLabels(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // ids, in order
		err      string
	}{
		{"comments and blank lines", "# export of 2026-11-02\n\n{\"id\": \"a\", \"attack\": true}\n{\"id\": \"b\", \"attack\": false}\n", []string{"a", "b"}, ""},
		{"empty", "# nothing labelled yet\n", nil, ""},
		{"labelled twice alike: counted once", "{\"id\": \"a\", \"attack\": true}\n{\"id\": \"a\", \"attack\": true}\n", []string{"a"}, ""},
		{"labelled both ways", "{\"id\": \"a\", \"attack\": true}\n{\"id\": \"b\", \"attack\": true}\n{\"id\": \"a\", \"attack\": false}\n", nil,
			"labels line 3: alert a is labelled attack false, and true on line 1"},
		{"no verdict", "{\"id\": \"a\"}\n", nil, "labels line 1: want"},
		{"not JSON", "a,true\n", nil, "labels line 1: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			labels, err := replay.ReadLabels(strings.NewReader(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			var got []string
			for _, l := range labels {
				got = append(got, l.ID)
			}
			if err != nil || strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("ReadLabels = %v, %v, want %v", got, err, tc.want)
			}
		})
	}
}

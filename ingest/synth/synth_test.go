package synth

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

func render(t *testing.T, cfg Config, format string) ([]byte, []Injected) {
	t.Helper()
	reqs, inj, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for i := range reqs {
		if out, err = AppendRecord(out, format, &reqs[i]); err != nil {
			t.Fatal(err)
		}
		out = append(out, '\n')
	}
	return out, inj
}

func TestGenerateIsDeterministic(t *testing.T) {
	cfg := Config{Duration: 20 * time.Minute, Rate: 5, Seed: 7, Attacks: Attacks}
	a, _ := render(t, cfg, ingest.FormatAWSWAF)
	b, _ := render(t, cfg, ingest.FormatAWSWAF)
	if !bytes.Equal(a, b) {
		t.Fatal("same config, different output")
	}
	cfg.Seed = 8
	c, _ := render(t, cfg, ingest.FormatAWSWAF)
	if bytes.Equal(a, c) {
		t.Fatal("different seeds, same output")
	}
}

func TestGenerateInjectsEachAttackOnceInOrder(t *testing.T) {
	// Office hours: the rate is flat at 1.6 times the day's average.
	start := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	cfg := Config{Start: start, Duration: time.Hour, Rate: 5, Seed: 1, Attacks: Attacks}
	reqs, inj, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(inj) != len(Attacks) {
		t.Fatalf("%d attacks injected, want %d", len(inj), len(Attacks))
	}
	clients := map[string]string{}
	for i, a := range inj {
		if a.Kind != Attacks[i] || a.Count == 0 || !a.End.After(a.Start) || a.ClientIP == "" {
			t.Errorf("attack %d: %+v", i, a)
		}
		if i > 0 && !a.Start.After(inj[i-1].Start) {
			t.Errorf("attack %s starts before the one before", a.Kind)
		}
		if a.Start.Before(start.Add(36 * time.Minute)) {
			t.Errorf("attack %s starts at %s, before the baselines are learnt", a.Kind, a.Start)
		}
		// Each on a client and an address of its own.
		for _, who := range []string{a.Client, a.ClientIP} {
			if other, dup := clients[who]; who != "" && dup {
				t.Errorf("attacks %s and %s share %s", other, a.Kind, who)
			}
			clients[who] = a.Kind
		}
	}
	if !slices.IsSortedFunc(reqs, func(a, b Request) int { return a.Time.Compare(b.Time) }) {
		t.Error("requests are not in time order")
	}
	if n, base := float64(len(reqs)), 5*3600*1.6; n < base*0.9 || n > base*1.3 {
		t.Errorf("%.0f requests for an hour of office hours at 5/s, want about %.0f and the decoys'", n, base)
	}
	for _, bad := range []Config{{Attacks: []string{"ddos"}}, {Clients: 20}, {Duration: time.Hour, AttacksFrom: 2 * time.Hour}} {
		if _, _, err := Generate(bad); err == nil {
			t.Errorf("Generate(%+v) succeeded", bad)
		}
	}
}

// TestGenerateFollowsTheDay: the background's rate follows the hour of day.
func TestGenerateFollowsTheDay(t *testing.T) {
	reqs, _, err := Generate(Config{Start: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), Duration: 24 * time.Hour, Rate: 2, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	var perHour [24]int
	for _, r := range reqs {
		perHour[r.Time.Hour()]++
	}
	night, day := perHour[3], perHour[13]
	if float64(day) < 3.5*float64(night) {
		t.Errorf("%d requests at 13:00 and %d at 03:00: want office hours about five times the night", day, night)
	}
}

// TestRecordsParse writes every request in every format and reads it back with the
// ingest parser of that format (and with auto): the values survive, and the raw
// credentials do not.
func TestRecordsParse(t *testing.T) {
	reqs, _, err := Generate(Config{Duration: 10 * time.Minute, Rate: 3, Seed: 3, Attacks: Attacks})
	if err != nil {
		t.Fatal(err)
	}
	secret, _ := ingest.NewTokenSecret([]byte("synth-test-secret-0123456789"))
	opts := ingest.ParserOptions{Secret: secret, Now: func() time.Time { return DefaultStart }}
	for _, format := range Formats {
		for _, parseAs := range []string{format, ingest.FormatAuto} {
			p, err := ingest.NewParser(parseAs, opts)
			if err != nil {
				t.Fatal(err)
			}
			var line []byte
			for i := range reqs {
				r := &reqs[i]
				line, _ = AppendRecord(line[:0], format, r)
				var ev ingest.Event
				if err := p.Parse(&ev, line); err != nil {
					t.Fatalf("%s as %s: %v\n%s", format, parseAs, err, line)
				}
				if ev.Source != format || !ev.Time.Equal(r.Time) || ev.Method != r.Method || ev.Path != r.Path || ev.Status != r.Status || ev.ClientIP != r.ClientIP || ev.Host != r.Host {
					t.Fatalf("%s as %s: event %+v from request %+v", format, parseAs, ev, *r)
				}
				if (format == ingest.FormatAWSWAF || format == ingest.FormatCloudflare) && ev.Country != r.Country {
					t.Fatalf("%s: country %q, want %q", format, ev.Country, r.Country)
				}
				// Kong knows a client by its consumer, which a request with credentials
				// that are no client's does not have.
				keyless := format == ingest.FormatKong && r.Consumer == ""
				if ev.TokenFP == "" || (ev.ClientKey == "") != keyless || ev.Device == "" {
					t.Fatalf("%s: identity missing: token_fp %q client_key %q device %q", format, ev.TokenFP, ev.ClientKey, ev.Device)
				}
				js := ev.AppendJSON(nil)
				for _, raw := range []string{r.Token, r.APIKey} {
					if raw != "" && bytes.Contains(js, []byte(raw)) {
						t.Fatalf("%s: raw credential in event %s", format, js)
					}
				}
			}
		}
	}
}

func BenchmarkGenerateAWSWAF(b *testing.B) {
	reqs, _, err := Generate(Config{Duration: 10 * time.Minute, Rate: 50, Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	var line []byte
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		line, _ = AppendRecord(line[:0], ingest.FormatAWSWAF, &reqs[i%len(reqs)])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

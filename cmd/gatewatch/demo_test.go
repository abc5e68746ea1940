package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// TestDemoCatchesEveryAttack runs the demo end to end (`run`'s pipeline on the
// embedded broker: three gateways' formats on topics of several partitions, the
// embedded store, the router and outbox) on a short run and checks it raises one
// incident per attack and nothing else.
func TestDemoCatchesEveryAttack(t *testing.T) {
	out, errOut, code := runCmd(t, "", "demo", "--duration", "1h", "--rate", "4", "--seed", "3", "--json")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	incidents := map[string]string{} // id → detector; updates share the id
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var a struct {
			ID, Detector string
		}
		if err := json.Unmarshal([]byte(line), &a); err != nil || a.ID == "" {
			t.Fatalf("stdout line %q is not an alert: %v", line, err)
		}
		incidents[a.ID] = a.Detector
	}
	var detectors []string
	for _, d := range incidents {
		detectors = append(detectors, d)
	}
	slices.Sort(detectors)
	if want := []string{"auth_failure_spray", "client_volume_spike", "forbidden_burst", "new_country", "object_enumeration",
		"privilege_anomaly", "quiet_endpoint_spike", "route_scan", "token_reuse"}; !slices.Equal(detectors, want) {
		t.Errorf("alerts from %v, want one from each of %v\n%s", detectors, want, errOut)
	}
	if strings.Contains(errOut, "MISSED") {
		t.Errorf("demo reports a missed attack:\n%s", errOut)
	}
}

// TestDemoForAPerson: without --json each incident is printed for a person: severity,
// detector and summary, the key facts, the runbook; no colour when stdout is no terminal.
func TestDemoForAPerson(t *testing.T) {
	out, errOut, code := runCmd(t, "", "demo", "--duration", "1h", "--rate", "4", "--seed", "3")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	for _, want := range []string{"HIGH     new_country: Client key", "MEDIUM   forbidden_burst:", "runbook: https://", "caught"} {
		if !strings.Contains(out+errOut, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\033[") {
		t.Error("colour codes written to a stdout that is not a terminal")
	}
}

// TestReportCaughtMatchesKeyAndTime: an attack is caught only by an incident of its
// detector on the key it must raise whose span overlaps the attack; any other
// incident is reported as a false positive.
func TestReportCaughtMatchesKeyAndTime(t *testing.T) {
	start := time.Date(2026, 11, 2, 7, 30, 0, 0, time.UTC)
	inj := []synth.Injected{{Kind: synth.AttackObjectEnumeration, Start: start, End: start.Add(5 * time.Minute), Client: "client-0012"}}
	keys := []string{"k-attacker GET /v1/invoices/{id}"}
	incident := func(key string, from time.Time) detectors.Alert {
		return detectors.Alert{ID: "0123456789abcdef", Detector: synth.AttackObjectEnumeration, Key: key,
			FirstSeen: from, LastSeen: from.Add(4 * time.Minute)}
	}
	for _, c := range []struct {
		name     string
		incident detectors.Alert
		want     []string // in the report
		fails    bool
	}{
		{"its key, during the attack", incident(keys[0], start.Add(time.Minute)), []string{"caught 01234567"}, false},
		{"another key, during the attack", incident("k-bulk-partner GET /v1/invoices/{id}", start.Add(time.Minute)),
			[]string{"MISSED", "1 incidents matched no injected attack"}, true},
		{"its key, an hour later", incident(keys[0], start.Add(time.Hour)),
			[]string{"MISSED", "1 incidents matched no injected attack"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out strings.Builder
			err := reportCaught(&out, inj, keys, []detectors.Alert{c.incident})
			if (err != nil) != c.fails {
				t.Errorf("error %v, want one: %v", err, c.fails)
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("report lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestReportCaughtNamesTheClient: the report names each attack's client, by its
// address when it sent no client key.
func TestReportCaughtNamesTheClient(t *testing.T) {
	start := time.Date(2026, 11, 2, 7, 50, 0, 0, time.UTC)
	for _, c := range []struct {
		inj  synth.Injected
		want string
	}{
		{synth.Injected{Kind: synth.AttackRouteScan, Start: start, End: start.Add(time.Minute), ClientIP: "203.0.113.9", Count: 80}, "(80 requests from 203.0.113.9)"},
		{synth.Injected{Kind: synth.AttackObjectEnumeration, Start: start, End: start.Add(time.Minute), Client: "client-0012", ClientIP: "198.51.100.4", Count: 100}, "(100 requests from client-0012)"},
	} {
		var out strings.Builder
		reportCaught(&out, []synth.Injected{c.inj}, []string{"k"}, nil) // missed: the report still names the client
		if !strings.Contains(out.String(), c.want) {
			t.Errorf("report lacks %q:\n%s", c.want, out.String())
		}
	}
}

// TestAlertKeysOfKongRoutes: Kong logs a route's name, not its template, so the
// incident an attack on a Kong gateway must raise is keyed by the name, as the parser
// reads it; the demo took those incidents for missed attacks and false positives.
func TestAlertKeysOfKongRoutes(t *testing.T) {
	secret, err := ingest.NewTokenSecret([]byte(demoSecret))
	if err != nil {
		t.Fatal(err)
	}
	client := ""
	for i := range 1000 {
		if c := fmt.Sprintf("client-%04d", i); gatewayOf(c, nil).Format == ingest.FormatKong {
			client = c
			break
		}
	}
	at := time.Date(2026, 11, 2, 7, 30, 0, 0, time.UTC)
	injected := []synth.Injected{
		{Kind: synth.AttackObjectEnumeration, Start: at, End: at.Add(5 * time.Minute), Client: client, APIKey: "k-raw", Route: "GET /v1/invoices/{id}"},
		{Kind: synth.AttackQuietSpike, Start: at, End: at.Add(5 * time.Minute), Client: client, Route: "POST /v1/reports/export"},
	}
	keys, err := alertKeys(secret, injected)
	if err != nil {
		t.Fatal(err)
	}
	if want := client + " GET get-v1-invoices-id"; keys[0] != want {
		t.Errorf("object_enumeration on Kong: key %q, want %q", keys[0], want)
	}
	if want := "POST post-v1-reports-export"; keys[1] != want {
		t.Errorf("quiet_endpoint_spike on Kong: key %q, want %q", keys[1], want)
	}
}

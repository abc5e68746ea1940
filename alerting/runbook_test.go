package alerting_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// engineAlerts drives the real detectors engine over a synthetic hour and a half in
// which every detector fires once, and returns what it raised.
func engineAlerts(t *testing.T, runbookBase string) []detectors.Alert {
	t.Helper()
	cfg := detectors.DefaultConfig()
	cfg.NewCountry.LearningPeriod = time.Hour
	cfg.NewCountry.MinEvents = 5
	cfg.QuietEndpointSpike.LearningPeriod = time.Hour
	cfg.ObjectEnumeration.LearningPeriod = time.Hour
	cfg.PrivilegeAnomaly.LearningPeriod = time.Hour
	cfg.ClientVolumeSpike.LearningPeriod = time.Hour
	e, err := detectors.NewEngine(cfg, detectors.Options{Registerer: prometheus.NewRegistry(), RunbookBaseURL: runbookBase})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	ev := func(at time.Duration, key, token, device, country, method, route string, status int) ingest.Event {
		return ingest.Event{
			Time: start.Add(at), Source: "apigw", ClientKey: key, TokenFP: token, Device: device,
			ClientIP: "198.51.100.7", Country: country, Method: method, Host: "api.example.com",
			Route: route, Path: route, Status: status, RequestID: fmt.Sprintf("req-%d", at.Milliseconds()),
		}
	}
	var evs []ingest.Event
	// An established key, used from NL for 90 minutes: the baseline.
	for m := range 90 {
		evs = append(evs, ev(time.Duration(m)*time.Minute, "key-established", "tok-a", "dev-a", "NL", "GET", "/v1/orders", 200))
	}
	// new_country: the same key from BR.
	evs = append(evs, ev(90*time.Minute, "key-established", "tok-a", "dev-a", "BR", "GET", "/v1/orders", 200))
	// token_reuse: one token from three devices within the window.
	for i, d := range []string{"dev-1", "dev-2", "dev-3"} {
		evs = append(evs, ev(91*time.Minute+time.Duration(i)*time.Second, "key-shared", "tok-shared", d, "DE", "GET", "/v1/profile", 200))
	}
	// forbidden_burst: 30 forbidden responses to one key within a minute.
	for i := range 30 {
		evs = append(evs, ev(92*time.Minute+time.Duration(i)*time.Second, "key-prober", "tok-p", "dev-p", "US", "GET", fmt.Sprintf("/v1/accounts/%d", i), 403))
	}
	// quiet_endpoint_spike: a route never seen before gets 40 requests.
	for i := range 40 {
		evs = append(evs, ev(93*time.Minute+time.Duration(i)*time.Second, fmt.Sprintf("key-%d", i%4), "tok-q", "dev-q", "US", "POST", "/v1/admin/export", 200))
	}
	// object_enumeration: one key walks 60 invoice ids within two minutes.
	for i := range 60 {
		r := ev(94*time.Minute+time.Duration(i)*2*time.Second, "key-walker", "tok-w", "dev-w", "US", "GET", "/v1/invoices/{id}", 200)
		r.Path, r.ClientIP = fmt.Sprintf("/v1/invoices/%d", 1000+i), "203.0.113.10"
		evs = append(evs, r)
	}
	// auth_failure_spray: one address fails with 15 keys.
	for i := range 15 {
		r := ev(94*time.Minute+time.Duration(i)*3*time.Second, fmt.Sprintf("key-guess-%d", i), "", "", "US", "POST", "/v1/login", 401)
		r.ClientIP = "203.0.113.20"
		evs = append(evs, r)
	}
	// privilege_anomaly: a key with no admin work in its history changes roles.
	for i := range 4 {
		r := ev(96*time.Minute+time.Duration(i)*10*time.Second, "key-staff", "tok-s", "dev-s", "US", "POST", "/v1/admin/users/{id}/roles", 200)
		r.Path, r.ClientIP = fmt.Sprintf("/v1/admin/users/%d/roles", 7+i), "203.0.113.40"
		evs = append(evs, r)
	}
	// route_scan: one address asks for 25 routes that do not exist.
	for i := range 25 {
		r := ev(97*time.Minute+time.Duration(i)*2*time.Second, "", "", "", "US", "GET", fmt.Sprintf("/.probe-%d", i), 404)
		r.ClientIP = "203.0.113.30"
		evs = append(evs, r)
	}
	// client_volume_spike: the established key, one request a minute so far, makes 300
	// within five minutes.
	for i := range 300 {
		evs = append(evs, ev(100*time.Minute+time.Duration(i)*time.Second, "key-established", "tok-a", "dev-a", "NL", "GET", "/v1/orders", 200))
	}
	// Quiet traffic to move the watermark past every window.
	for m := 95; m < 130; m++ {
		evs = append(evs, ev(time.Duration(m)*time.Minute, "key-established", "tok-a", "dev-a", "NL", "GET", "/v1/orders", 200))
	}
	slices.SortStableFunc(evs, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	alerts := e.Observe(evs)
	return append(alerts, e.Flush()...)
}

// runbookSections are the headings every runbook has, in this order: the first 30
// minutes of an on-call analyst, from understanding the alert to closing it.
var runbookSections = []string{
	"## What this alert means",
	"## Evidence in the alert",
	"## First 30 minutes",
	"## Confirm or dismiss",
	"## Contain",
	"## Who to tell",
	"## When to close",
}

// runbookDir is deploy/runbooks from this package's directory.
const runbookDir = "../deploy/runbooks"

func readRunbook(t *testing.T, detector string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(runbookDir, detector+".md"))
	if err != nil {
		t.Fatalf("detector %s has no runbook: %v", detector, err)
	}
	return string(b)
}

func TestEveryDetectorHasARunbook(t *testing.T) {
	for _, name := range detectors.Names {
		rb := readRunbook(t, name)
		if !strings.HasPrefix(rb, "# "+name+": ") {
			t.Errorf("%s.md does not start with its title \"# %s: ...\"", name, name)
		}
		at := 0
		for _, sec := range runbookSections {
			i := strings.Index(rb, "\n"+sec+"\n")
			if i < 0 {
				t.Errorf("%s.md has no section %q", name, sec)
				continue
			}
			if i < at {
				t.Errorf("%s.md: section %q is out of order", name, sec)
			}
			at = i
		}
		for _, must := range []string{
			"gatewatch replay --config gatewatch.yaml --input", "--from", "--to", // replay the window
			"deploy/clickhouse/forensics.sql", "FROM events", // forensic queries
			"aws apigateway update-api-key", "kong-admin", "envoy.filters.http.rbac", "aws wafv2", // containment
			"alerting.silences", // how to mute a known benign case, with an expiry
		} {
			if !strings.Contains(rb, must) {
				t.Errorf("%s.md does not mention %q", name, must)
			}
		}
	}
	// The named forensic queries a runbook sends the analyst to exist.
	sql, err := os.ReadFile("../deploy/clickhouse/forensics.sql")
	if err != nil {
		t.Fatalf("the runbooks point to deploy/clickhouse/forensics.sql: %v", err)
	}
	// A query is named in a sed pattern (/^-- name: X$/) or in a bullet ("- `X` (").
	named := regexp.MustCompile("(?m)-- name: ([A-Za-z0-9_]+)\\$/|^- `([A-Za-z0-9_]+)` \\(")
	for _, name := range detectors.Names {
		refs := named.FindAllStringSubmatch(readRunbook(t, name), -1)
		if len(refs) == 0 {
			t.Errorf("%s.md names no query of forensics.sql", name)
		}
		for _, m := range refs {
			q := m[1] + m[2]
			if !strings.Contains(string(sql), "\n-- name: "+q+"\n") {
				t.Errorf("%s.md refers to query %s, which forensics.sql does not have", name, q)
			}
		}
	}
	entries, err := os.ReadDir(runbookDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".md"); ok && !slices.Contains(detectors.Names, n) {
			t.Errorf("runbook %s is for no detector", e.Name())
		}
	}
}

// TestAlertsLinkToTheirRunbook raises an alert of every detector with the real
// engine and checks that its runbook_url, built by the engine's rule (base + "/" +
// detector + ".md"), names a runbook this repository ships, and that the runbook
// explains every evidence field and label the alert carries.
func TestAlertsLinkToTheirRunbook(t *testing.T) {
	base := alerting.DefaultConfig().RunbookBaseURL
	// The default base is this repository's runbook directory on GitHub.
	const repoPrefix = "/gatewatch/gatewatch/blob/main/"
	alerts := engineAlerts(t, base)
	seen := map[string]bool{}
	for _, a := range alerts {
		if want := base + "/" + a.Detector + ".md"; a.RunbookURL != want {
			t.Errorf("%s alert links to %q, want %q", a.Detector, a.RunbookURL, want)
			continue
		}
		u, err := url.Parse(a.RunbookURL)
		if err != nil || !strings.HasPrefix(u.Path, repoPrefix) {
			t.Fatalf("runbook_url %q is not under %s", a.RunbookURL, repoPrefix)
		}
		if _, err := os.Stat(filepath.Join("..", filepath.FromSlash(strings.TrimPrefix(u.Path, repoPrefix)))); err != nil {
			t.Errorf("%s alert links to %s, which the repository does not have: %v", a.Detector, a.RunbookURL, err)
		}
		rb := readRunbook(t, a.Detector)
		b, err := json.Marshal(a.Evidence)
		if err != nil {
			t.Fatal(err)
		}
		var ev map[string]any
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatal(err)
		}
		for _, f := range slices.Sorted(maps.Keys(ev)) {
			if !strings.Contains(rb, "`evidence."+f+"`") {
				t.Errorf("%s.md does not explain evidence field %s", a.Detector, f)
			}
		}
		for _, l := range slices.Sorted(maps.Keys(a.Labels)) {
			if !strings.Contains(rb, "`labels."+l+"`") {
				t.Errorf("%s.md does not explain label %s", a.Detector, l)
			}
		}
		seen[a.Detector] = true
	}
	for _, name := range detectors.Names {
		if !seen[name] {
			t.Errorf("the scenario raised no %s alert: extend engineAlerts so every runbook is checked", name)
		}
	}
	// A base with a trailing slash gives the same links.
	for _, a := range engineAlerts(t, "https://runbooks.example.com/gatewatch/") {
		if want := "https://runbooks.example.com/gatewatch/" + a.Detector + ".md"; a.RunbookURL != want {
			t.Errorf("with a trailing slash, %s links to %q, want %q", a.Detector, a.RunbookURL, want)
		}
	}
}

package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

func openIncident(detector, key string, fire time.Time) detectors.IncidentState {
	return detectors.IncidentState{
		IncidentRef: detectors.IncidentRef{Detector: detector, Key: key},
		ID:          detectors.AlertID(detector, key, h0),
		Start:       h0, Last: fire, LastFire: fire, LastEmit: fire,
		Severity: detectors.SeverityHigh, Strength: 30, Summary: "s",
		Evidence: detectors.Evidence{Window: "1m0s", ForbiddenCount: 30},
		Labels:   map[string]string{"key_type": "client_key"},
	}
}

// testIncidents checks a store's open incidents: upserts, ends and scopes.
func testIncidents(t *testing.T, s detectors.IncidentStore) {
	ctx := testContext(t)
	load := func(scope string) string {
		t.Helper()
		got, err := s.LoadIncidents(ctx, scope)
		if err != nil {
			t.Fatal(err)
		}
		var out string
		for _, st := range got {
			out += fmt.Sprintf("%s/%s@%s %d %v;", st.Detector, st.Key, st.LastFire.Format("15:04"), st.Evidence.ForbiddenCount, st.Labels)
		}
		return out
	}
	a, b := openIncident(detectors.ForbiddenBurst, "a", h0), openIncident(detectors.TokenReuse, "b", h0)
	if err := s.SaveIncidents(ctx, "g", []detectors.IncidentState{a, b}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveIncidents(ctx, "other", []detectors.IncidentState{openIncident(detectors.NewCountry, "c", h0)}, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := load("g"), "forbidden_burst/a@12:00 30 map[key_type:client_key];token_reuse/b@12:00 30 map[key_type:client_key];"; got != want {
		t.Errorf("loaded %s, want %s", got, want)
	}
	b2 := openIncident(detectors.TokenReuse, "b", h0.Add(time.Hour))
	b2.Evidence.ForbiddenCount = 31
	if err := s.SaveIncidents(ctx, "g", []detectors.IncidentState{b2}, []detectors.IncidentRef{a.IncidentRef}); err != nil {
		t.Fatal(err)
	}
	if got, want := load("g"), "token_reuse/b@13:00 31 map[key_type:client_key];"; got != want {
		t.Errorf("after an end and an update: loaded %s, want %s", got, want)
	}
	if got, want := load("other"), "new_country/c@12:00 30 map[key_type:client_key];"; got != want {
		t.Errorf("other scope: loaded %s, want %s", got, want)
	}
	if got := load("nobody"); got != "" {
		t.Errorf("empty scope: loaded %s", got)
	}
}

func TestLocalIncidents(t *testing.T) {
	testIncidents(t, newTestLocal(t, Config{DataDir: t.TempDir()}))
}

func TestClickHouseIncidents(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	testIncidents(t, startClickHouse(t, testConfig(t, addr, db), nil))
}

// While ClickHouse is down a save is kept in memory and reported as done (detection goes
// on); loads see it, and the next save once ClickHouse answers writes it.
func TestClickHouseIncidentsDuringOutage(t *testing.T) {
	srv := clickhousetest.Start(t)
	db := clickhousetest.NewDatabase(t, srv.Addr())
	cfg := testConfig(t, srv.Addr(), db)
	cfg.ClickHouse.DialTimeout = 500 * time.Millisecond
	cfg.ClickHouse.WriteTimeout = 2 * time.Second
	c := startClickHouse(t, cfg, nil)
	ctx := testContext(t)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	a := openIncident(detectors.ForbiddenBurst, "a", h0)
	if err := c.SaveIncidents(ctx, "g", []detectors.IncidentState{a}, nil); err != nil {
		t.Fatalf("SaveIncidents during the outage = %v, want nil (kept in memory)", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	b := openIncident(detectors.ForbiddenBurst, "b", h0)
	if err := c.SaveIncidents(ctx, "g", []detectors.IncidentState{b}, nil); err != nil {
		t.Fatal(err)
	}
	// A new process sees both.
	c2 := startClickHouse(t, cfg, nil)
	got, err := c2.LoadIncidents(context.Background(), "g")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Key != "a" || got[1].Key != "b" {
		t.Errorf("after the outage a new process loads %+v, want a and b", got)
	}
}

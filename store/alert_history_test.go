package store

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

type alertHistory interface {
	alerting.History
	Alerts(ctx context.Context, from, to time.Time, detector string) ([]AlertRecord, error)
}

var h0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func historyAlert(detector, key string, first, last time.Time) detectors.Alert {
	return detectors.Alert{
		ID:         detectors.AlertID(detector, key, first),
		Detector:   detector,
		Severity:   detectors.SeverityHigh,
		Key:        key,
		FirstSeen:  first,
		LastSeen:   last,
		Summary:    "test alert of " + key,
		Evidence:   detectors.Evidence{Window: "1m0s", ForbiddenCount: 25, TotalCount: 30, ClientIPs: []string{"192.0.2.7"}},
		RunbookURL: "https://runbooks.example.com/" + detector + ".md",
		Labels:     map[string]string{"key_type": "client_key"},
	}
}

func delivery(receiver string, a detectors.Alert, round int, st alerting.DeliveryState, attempts int, done time.Time) alerting.Delivery {
	k := alerting.KeyOf(receiver, &a)
	k.Round = round
	return alerting.Delivery{DeliveryKey: k, Alert: a, State: st, Attempts: attempts, Done: done}
}

// testAlertHistory checks a store's alert history: latest versions win, for alerts
// and for delivery states, and the window and detector filters.
func testAlertHistory(t *testing.T, h alertHistory) {
	ctx := testContext(t)
	a1 := historyAlert(detectors.ForbiddenBurst, "k1", h0, h0.Add(time.Minute+5*time.Millisecond))
	a1v2 := a1
	a1v2.LastSeen, a1v2.Summary = h0.Add(10*time.Minute), "grew"
	a2 := historyAlert(detectors.NewCountry, "k2", h0.Add(2*time.Hour), h0.Add(2*time.Hour))
	// The newer version first, then the older one late: the newer stays.
	for _, as := range [][]detectors.Alert{{a1v2, a2}, {a1}} {
		if err := h.RecordAlerts(ctx, as); err != nil {
			t.Fatal(err)
		}
	}
	steps := [][]alerting.Delivery{
		{delivery("slack", a1, 0, alerting.Pending, 0, time.Time{}), delivery("siem", a1, 0, alerting.Pending, 0, time.Time{})},
		{delivery("slack", a1, 0, alerting.Delivered, 1, h0.Add(2*time.Minute))},
		{delivery("siem", a1, 0, alerting.Failed, 5, h0.Add(3*time.Minute))},
		{delivery("slack", a1v2, 0, alerting.Pending, 0, time.Time{})},
		{delivery("slack", a1v2, 0, alerting.Delivered, 2, h0.Add(11*time.Minute))},
		{delivery("slack", a1, 1, alerting.Delivered, 1, h0.Add(4*time.Minute))}, // older version, late
		{delivery("slack", a2, 0, alerting.Pending, 0, time.Time{})},
	}
	for _, ds := range steps {
		if err := h.RecordDeliveries(ctx, ds); err != nil {
			t.Fatal(err)
		}
	}
	got, err := h.Alerts(ctx, h0, h0.Add(24*time.Hour), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Alert.ID != a1.ID || got[1].Alert.ID != a2.ID {
		t.Fatalf("Alerts = %+v, want a1 then a2", got)
	}
	if a := got[0].Alert; a.Summary != "grew" || !a.LastSeen.Equal(a1v2.LastSeen) || !a.FirstSeen.Equal(a1.FirstSeen) ||
		a.Evidence.ForbiddenCount != 25 || a.Labels["key_type"] != "client_key" || a.Severity != detectors.SeverityHigh || a.RunbookURL != a1.RunbookURL {
		t.Errorf("a1 = %+v, want its latest version, whole", a)
	}
	ds := got[0].Deliveries
	if len(ds) != 2 {
		t.Fatalf("a1 deliveries %+v, want siem and slack", ds)
	}
	if d := ds[0]; d.Receiver != "siem" || d.State != alerting.Failed || d.Attempts != 5 || !d.Updated.Equal(h0.Add(3*time.Minute)) {
		t.Errorf("siem delivery %+v, want failed after 5 attempts", d)
	}
	if d := ds[1]; d.Receiver != "slack" || d.State != alerting.Delivered || !d.Version.Equal(a1v2.LastSeen) || d.Round != 0 || d.Attempts != 2 {
		t.Errorf("slack delivery %+v, want the delivered second version", d)
	}
	if ds := got[1].Deliveries; len(ds) != 1 || ds[0].State != alerting.Pending {
		t.Errorf("a2 deliveries %+v, want one pending", ds)
	}
	// Filters.
	for _, c := range []struct {
		from, to time.Time
		detector string
		want     []string
	}{
		{h0.Add(time.Hour), h0.Add(3 * time.Hour), "", []string{a2.ID}},
		{h0.Add(5 * time.Minute), h0.Add(time.Hour), "", []string{a1.ID}}, // only the latest version reaches in
		{h0, h0.Add(24 * time.Hour), detectors.NewCountry, []string{a2.ID}},
		{h0.Add(3 * time.Hour), h0.Add(4 * time.Hour), "", nil},
	} {
		got, err := h.Alerts(ctx, c.from, c.to, c.detector)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range got {
			ids = append(ids, r.Alert.ID)
		}
		if fmt.Sprint(ids) != fmt.Sprint(c.want) {
			t.Errorf("Alerts(%v, %v, %q) = %v, want %v", c.from, c.to, c.detector, ids, c.want)
		}
	}
}

func TestLocalAlertHistory(t *testing.T) {
	testAlertHistory(t, newTestLocal(t, Config{DataDir: t.TempDir()}))
}

// The history ages by when it was written, whatever the alerts' event time: an alert
// that notify sends from a replay of logs years old is kept as long as a live one.
func TestLocalAlertHistoryRetention(t *testing.T) {
	for _, skew := range []time.Duration{0, -5 * 365 * 24 * time.Hour, 5 * 365 * 24 * time.Hour} {
		t.Run(fmt.Sprint(skew), func(t *testing.T) {
			now := h0.Add(skew) // the wall clock; the alerts' event times stay at h0
			l, err := NewLocal(Config{DataDir: t.TempDir(), Retention: 24 * time.Hour}, LocalOptions{Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close(context.Background())
			ctx := testContext(t)
			old := historyAlert(detectors.TokenReuse, "old", h0, h0)
			delivered := historyAlert(detectors.TokenReuse, "delivered", h0, h0)
			if err := l.RecordAlerts(ctx, []detectors.Alert{old, delivered}); err != nil {
				t.Fatal(err)
			}
			if err := l.RecordDeliveries(ctx, []alerting.Delivery{delivery("slack", old, 0, alerting.Delivered, 1, now)}); err != nil {
				t.Fatal(err)
			}
			if n, err := l.deleteExpiredAlerts(ctx, now.Add(time.Hour)); err != nil || n != 0 {
				t.Fatalf("an hour after recording, deleteExpiredAlerts = %d, %v; want 0", n, err)
			}
			// A day and more later: "delivered" was delivered again just now, "old" not.
			now = now.Add(47 * time.Hour)
			fresh := historyAlert(detectors.TokenReuse, "fresh", h0.Add(time.Hour), h0.Add(time.Hour))
			if err := l.RecordAlerts(ctx, []detectors.Alert{fresh}); err != nil {
				t.Fatal(err)
			}
			if err := l.RecordDeliveries(ctx, []alerting.Delivery{
				delivery("slack", delivered, 1, alerting.Delivered, 1, now),
				delivery("slack", fresh, 0, alerting.Pending, 0, time.Time{}),
			}); err != nil {
				t.Fatal(err)
			}
			n, err := l.deleteExpiredAlerts(ctx, now)
			if err != nil || n != 1 {
				t.Fatalf("deleteExpiredAlerts = %d, %v; want 1", n, err)
			}
			got, err := l.Alerts(ctx, h0.Add(-time.Hour), h0.Add(72*time.Hour), "")
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range got {
				ids = append(ids, r.Alert.ID)
			}
			if want := []string{delivered.ID, fresh.ID}; !sameSet(ids, want) {
				t.Fatalf("Alerts after retention = %v; want %v (the delivered one and the fresh one)", ids, want)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	return fmt.Sprint(slices.Sorted(slices.Values(a))) == fmt.Sprint(slices.Sorted(slices.Values(b)))
}

func TestClickHouseAlertHistory(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	testAlertHistory(t, startClickHouse(t, testConfig(t, addr, db), prometheus.NewRegistry()))
}

func TestAlertHistorySurvivesOutage(t *testing.T) {
	srv := clickhousetest.Start(t)
	db := clickhousetest.NewDatabase(t, srv.Addr())
	cfg := testConfig(t, srv.Addr(), db)
	cfg.ClickHouse.DialTimeout = 500 * time.Millisecond
	cfg.ClickHouse.WriteTimeout = 2 * time.Second
	ctx := testContext(t)
	var as []detectors.Alert
	for i := range 30 {
		as = append(as, historyAlert(detectors.ForbiddenBurst, fmt.Sprintf("k%02d", i), h0.Add(time.Duration(i)*time.Second), h0.Add(time.Minute)))
	}
	record := func(c *ClickHouse, as []detectors.Alert, st alerting.DeliveryState) {
		t.Helper()
		if err := c.RecordAlerts(ctx, as); err != nil {
			t.Fatal(err)
		}
		var ds []alerting.Delivery
		for _, a := range as {
			ds = append(ds, delivery("slack", a, 0, st, 1, h0.Add(time.Hour)))
		}
		if err := c.RecordDeliveries(ctx, ds); err != nil {
			t.Fatal(err)
		}
	}

	c1, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: prometheus.NewPedanticRegistry(), MaxRetryInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	run1, stop1 := context.WithCancel(ctx)
	run1Done := make(chan error, 1)
	go func() { run1Done <- c1.Run(run1) }()
	record(c1, as[:10], alerting.Pending)
	if _, err := c1.Alerts(ctx, h0, h0.Add(time.Hour), ""); err != nil { // writes them
		t.Fatal(err)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	record(c1, as[10:20], alerting.Pending)
	record(c1, as[:10], alerting.Delivered)
	time.Sleep(300 * time.Millisecond) // Run meets the outage and spills
	stop1()
	if err := <-run1Done; err != nil {
		t.Fatal(err)
	}
	closeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c1.Close(closeCtx); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(cfg.DataDir, "clickhouse-spill", "alerts", "*.seg"))
	if len(segs) == 0 {
		t.Fatal("no alert history spilled during the outage")
	}

	// gatewatch restarts while ClickHouse is still down, then ClickHouse comes back.
	c2, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: prometheus.NewPedanticRegistry(), MaxRetryInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runClickHouse(t, c2)
	record(c2, as[20:], alerting.Delivered)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	var got []AlertRecord
	for {
		got, err = c2.Alerts(ctx, h0, h0.Add(time.Hour), "")
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(as) {
		t.Fatalf("history holds %d alerts after the outage, want %d", len(got), len(as))
	}
	for i, r := range got {
		want := alerting.Delivered
		if i >= 10 && i < 20 {
			want = alerting.Pending
		}
		if len(r.Deliveries) != 1 || r.Deliveries[0].State != want {
			t.Errorf("alert %d deliveries %+v, want one %v", i, r.Deliveries, want)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(cfg.DataDir, "clickhouse-spill", "alerts", "*")); len(left) != 0 {
		t.Errorf("alert history spill not empty after replay: %v", left)
	}
}

func testAlertByID(t *testing.T, h interface {
	alertHistory
	AlertByID(ctx context.Context, id string) (AlertRecord, bool, error)
}) {
	ctx := testContext(t)
	a := historyAlert(detectors.ForbiddenBurst, "k1", h0, h0.Add(time.Minute))
	later := a
	later.LastSeen, later.Summary = h0.Add(5*time.Minute), "grew"
	if err := h.RecordAlerts(ctx, []detectors.Alert{a, later}); err != nil {
		t.Fatal(err)
	}
	if err := h.RecordDeliveries(ctx, []alerting.Delivery{delivery("slack", later, 0, alerting.Delivered, 1, h0.Add(6*time.Minute))}); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := h.AlertByID(ctx, a.ID)
	if err != nil || !ok || rec.Alert.Summary != "grew" || len(rec.Deliveries) != 1 || rec.Deliveries[0].State != alerting.Delivered {
		t.Errorf("AlertByID = %+v, %v, %v; want the latest version with its delivery", rec, ok, err)
	}
	if _, ok, err := h.AlertByID(ctx, "nope"); ok || err != nil {
		t.Errorf("AlertByID(unknown) = %v, %v", ok, err)
	}
}

func TestLocalAlertByID(t *testing.T) {
	testAlertByID(t, newTestLocal(t, Config{DataDir: t.TempDir()}))
}

func TestClickHouseAlertByID(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	testAlertByID(t, startClickHouse(t, testConfig(t, addr, db), prometheus.NewRegistry()))
}

package alerting_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/promtest"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// lockedBuffer collects log output written by several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// harness is a Router on a MemoryOutbox, its metrics and its log.
type harness struct {
	t     *testing.T
	r     *alerting.Router
	ob    *alerting.MemoryOutbox
	reg   *prometheus.Registry
	logs  *lockedBuffer
	done  chan error
	rcvs  []alerting.Receiver
	cfg   alerting.Config
	clock func() time.Time
}

// newHarness builds a Router over rcvs; ob nil: a new MemoryOutbox; now nil: time.Now.
func newHarness(t *testing.T, cfg alerting.Config, ob *alerting.MemoryOutbox, now func() time.Time, rcvs ...alerting.Receiver) *harness {
	t.Helper()
	if ob == nil {
		ob = alerting.NewMemoryOutbox()
	}
	h := &harness{t: t, ob: ob, reg: prometheus.NewPedanticRegistry(), logs: &lockedBuffer{}, rcvs: rcvs, cfg: cfg, clock: now}
	m := map[string]alerting.Receiver{}
	for _, r := range rcvs {
		m[r.Name()] = r
	}
	r, err := alerting.NewRouter(cfg, alerting.RouterOptions{
		Outbox:     ob,
		Receivers:  m,
		Registerer: h.reg,
		Logger:     slog.New(slog.NewJSONHandler(h.logs, nil)),
		Now:        now,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	return h
}

// run starts Run; stop (registered as a cleanup) closes the Router and waits.
func (h *harness) run() *harness {
	h.done = make(chan error, 1)
	go func() { h.done <- h.r.Run(context.Background()) }()
	h.t.Cleanup(func() { h.stop() })
	return h
}

func (h *harness) stop() {
	if h.done == nil {
		return
	}
	if err := h.r.Close(context.Background()); err != nil {
		h.t.Error(err)
	}
	if err := <-h.done; err != nil {
		h.t.Errorf("Run: %v", err)
	}
	h.done = nil
}

func (h *harness) put(alerts ...detectors.Alert) {
	h.t.Helper()
	if err := h.r.Put(context.Background(), alerts); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) flush() {
	h.t.Helper()
	ctx, cancel := context.WithTimeoutCause(context.Background(), 48*time.Hour, errors.New("flush did not finish"))
	defer cancel()
	if err := h.r.Flush(ctx); err != nil {
		h.t.Fatal(err)
	}
}

// metric returns the value of the series of name with the given label.
func (h *harness) metric(name, label, value string) float64 {
	h.t.Helper()
	return promtest.Value(h.t, h.reg, name, label, value)
}

// testCfg returns the defaults with backoff from 1s to 1m, and a receiver entry per
// name (a file kind, which the Router does not look at: it gets built receivers).
func testCfg(receivers ...string) alerting.Config {
	c := alerting.DefaultConfig()
	c.Outbox.InitialBackoff = time.Second
	c.Outbox.MaxBackoff = time.Minute
	for _, n := range receivers {
		c.Receivers = append(c.Receivers, alerting.ReceiverConfig{Name: n, File: &alerting.FileConfig{Path: n + ".jsonl"}})
	}
	return c
}

// logged reports whether a JSON log line has every attribute of want.
func logged(logs string, want map[string]any) bool {
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var got map[string]any
		if json.Unmarshal([]byte(line), &got) != nil {
			continue
		}
		match := true
		for k, v := range want {
			if fmt.Sprint(got[k]) != fmt.Sprint(v) {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

func alertOf(detector string, sev detectors.Severity, key string, labels map[string]string) detectors.Alert {
	a := alertingtest.NewAlert(detector, key, t0, t0.Add(time.Minute))
	a.Severity = sev
	a.Labels = labels
	return a
}

func recorders(names ...string) []alerting.Receiver {
	var out []alerting.Receiver
	for _, n := range names {
		out = append(out, alertingtest.NewRecorder(n))
	}
	return out
}

func TestRouting(t *testing.T) {
	high := alertOf(detectors.TokenReuse, detectors.SeverityHigh, "tok-1", map[string]string{"key_type": "token_fp"})
	low := alertOf(detectors.ForbiddenBurst, detectors.SeverityLow, "key-7", map[string]string{"key_type": "client_key", "env": "staging"})
	spike := alertOf(detectors.QuietEndpointSpike, detectors.SeverityMedium, "POST /admin/export", map[string]string{"key_type": "route"})
	routes := func(rs ...alerting.Route) []alerting.Route { return rs }
	for _, c := range []struct {
		name   string
		routes []alerting.Route
		alert  detectors.Alert
		want   []string
	}{
		{"no routes: every receiver, sorted", nil, low, []string{"archive", "siem", "slack"}},
		{"first match wins", routes(
			alerting.Route{Match: alerting.Matcher{Severity: []detectors.Severity{"high", "critical"}}, Receivers: []string{"slack"}},
			alerting.Route{Receivers: []string{"archive"}},
		), high, []string{"slack"}},
		{"first match wins, falling through to the catch-all", routes(
			alerting.Route{Match: alerting.Matcher{Severity: []detectors.Severity{"high", "critical"}}, Receivers: []string{"slack"}},
			alerting.Route{Receivers: []string{"archive"}},
		), low, []string{"archive"}},
		{"continue adds the next match", routes(
			alerting.Route{Match: alerting.Matcher{Severity: []detectors.Severity{"high"}}, Receivers: []string{"slack", "siem"}, Continue: true},
			alerting.Route{Receivers: []string{"archive", "siem"}},
		), high, []string{"slack", "siem", "archive"}},
		{"detector matcher", routes(
			alerting.Route{Match: alerting.Matcher{Detector: []string{detectors.QuietEndpointSpike}}, Receivers: []string{"siem"}},
			alerting.Route{Receivers: []string{"archive"}},
		), spike, []string{"siem"}},
		{"key matcher", routes(
			alerting.Route{Match: alerting.Matcher{Key: []string{"key-7"}}, Receivers: []string{"slack"}},
		), low, []string{"slack"}},
		{"label matcher needs every label", routes(
			alerting.Route{Match: alerting.Matcher{Labels: map[string]string{"env": "staging", "key_type": "token_fp"}}, Receivers: []string{"slack"}},
			alerting.Route{Match: alerting.Matcher{Labels: map[string]string{"env": "staging"}}, Receivers: []string{"siem"}},
		), low, []string{"siem"}},
		{"no route matches: nowhere", routes(
			alerting.Route{Match: alerting.Matcher{Detector: []string{detectors.NewCountry}}, Receivers: []string{"slack"}},
		), low, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := testCfg("slack", "siem", "archive")
			cfg.Routes = c.routes
			h := newHarness(t, cfg, nil, nil, recorders("slack", "siem", "archive")...)
			if got := h.r.Plan(c.alert); !slices.Equal(got, c.want) {
				t.Errorf("Plan(%s %s %s) = %v, want %v", c.alert.Detector, c.alert.Severity, c.alert.Key, got, c.want)
			}
		})
	}
}

func TestPutDeliversToEveryRoutedReceiver(t *testing.T) {
	cfg := testCfg("slack", "archive")
	cfg.Routes = []alerting.Route{
		{Match: alerting.Matcher{Severity: []detectors.Severity{"high"}}, Receivers: []string{"slack"}, Continue: true},
		{Receivers: []string{"archive"}},
	}
	rs := recorders("slack", "archive")
	h := newHarness(t, cfg, nil, nil, rs...).run()
	high := alertOf(detectors.TokenReuse, detectors.SeverityHigh, "tok-1", nil)
	low := alertOf(detectors.ForbiddenBurst, detectors.SeverityLow, "key-7", nil)
	h.put(high, low)
	h.flush()
	slack, archive := rs[0].(*alertingtest.Recorder), rs[1].(*alertingtest.Recorder)
	if got := slack.Identities(); len(got) != 1 || got[0].ID != high.ID {
		t.Errorf("slack got %v, want only the high alert", got)
	}
	if got := archive.Identities(); len(got) != 2 {
		t.Errorf("archive got %v, want both alerts", got)
	}
	for _, c := range []struct {
		name, label, value string
		want               float64
	}{
		{"gatewatch_alerting_alerts_total", "result", "routed", 2},
		{"gatewatch_alerting_deliveries_sent_total", "receiver", "slack", 1},
		{"gatewatch_alerting_deliveries_sent_total", "receiver", "archive", 2},
		{"gatewatch_alerting_outbox_depth", "receiver", "archive", 0},
		{"gatewatch_alerting_deliveries_failed_total", "receiver", "slack", 0},
	} {
		if got := h.metric(c.name, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.value, got, c.want)
		}
	}
	ds, err := h.r.Deliveries(context.Background(), high)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].State != alerting.Delivered || ds[1].State != alerting.Delivered || ds[0].Attempts != 1 {
		t.Errorf("Deliveries(high) = %+v, want delivered to slack and archive in one attempt", ds)
	}
	// The log says what was raised and where it went: each alert version once, with
	// its receivers, and each delivery.
	logs := h.logs.String()
	if !slices.ContainsFunc(strings.Split(logs, "\n"), func(l string) bool {
		return strings.Contains(l, `"msg":"alert queued"`) && strings.Contains(l, `"alert_id":"`+high.ID+`"`) && strings.Contains(l, `"receivers":"slack,archive"`)
	}) {
		t.Errorf("the log does not list the high alert queued for slack and archive:\n%s", logs)
	}
	if n := strings.Count(logs, `"msg":"alert queued"`); n != 2 {
		t.Errorf("%d alerts queued in the log, want 2:\n%s", n, logs)
	}
	if n := strings.Count(logs, `"msg":"alert delivered"`); n != 3 {
		t.Errorf("%d deliveries in the log, want 3:\n%s", n, logs)
	}
	// The same alerts again: nothing new.
	h.put(high, low)
	h.flush()
	if n := strings.Count(h.logs.String(), `"msg":"alert queued"`); n != 2 {
		t.Errorf("alerts the receivers have were logged as queued again:\n%s", h.logs.String())
	}
	if n := len(archive.Identities()); n != 2 {
		t.Errorf("archive got %d alerts after a second Put of the same, want 2", n)
	}
	if got := h.metric("gatewatch_alerting_deliveries_duplicate_total", "receiver", "archive"); got != 2 {
		t.Errorf("duplicates for archive = %v, want 2", got)
	}
}

// testClock is a clock the test sets while the Router reads it.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func TestSilences(t *testing.T) {
	clk := &testClock{now: t0}
	clock := clk.Now
	cfg := testCfg()
	cfg.Silences = []alerting.Silence{
		{Match: alerting.Matcher{Detector: []string{detectors.ForbiddenBurst}, Key: []string{"scanner-key"}}, Expires: t0.Add(time.Hour), Comment: "pentest, ticket SEC-42"},
		{Match: alerting.Matcher{Labels: map[string]string{"env": "staging"}, Severity: []detectors.Severity{"low", "medium"}}, Expires: t0.Add(2 * time.Hour)},
	}
	rs := recorders("archive")
	h := newHarness(t, cfg, nil, clock, rs...).run()
	scanner := alertOf(detectors.ForbiddenBurst, detectors.SeverityMedium, "scanner-key", nil)
	otherKey := alertOf(detectors.ForbiddenBurst, detectors.SeverityMedium, "key-2", nil)
	staging := alertOf(detectors.TokenReuse, detectors.SeverityLow, "tok-1", map[string]string{"env": "staging"})
	stagingHigh := alertOf(detectors.TokenReuse, detectors.SeverityHigh, "tok-2", map[string]string{"env": "staging"})
	for _, c := range []struct {
		name  string
		at    time.Time
		alert detectors.Alert
		muted bool
	}{
		{"detector and key match", t0, scanner, true},
		{"another key", t0, otherKey, false},
		{"labels and severity match", t0, staging, true},
		{"severity outside the silence", t0, stagingHigh, false},
		{"first silence expired", t0.Add(time.Hour), scanner, false},
		{"second still in force", t0.Add(time.Hour), staging, true},
		{"second expired", t0.Add(2 * time.Hour), staging, false},
	} {
		clk.Set(c.at)
		if got := len(h.r.Plan(c.alert)) == 0; got != c.muted {
			t.Errorf("%s: muted = %v, want %v", c.name, got, c.muted)
		}
	}
	clk.Set(t0)
	h.put(scanner, otherKey, staging, stagingHigh)
	h.flush()
	if got := h.metric("gatewatch_alerting_alerts_total", "result", "silenced"); got != 2 {
		t.Errorf("silenced = %v, want 2", got)
	}
	var got []string
	for _, id := range rs[0].(*alertingtest.Recorder).Identities() {
		got = append(got, id.ID)
	}
	slices.Sort(got)
	want := []string{otherKey.ID, stagingHigh.ID}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
	// A later version of a silenced incident, once the silence expired, goes out.
	clk.Set(t0.Add(time.Hour))
	later := scanner
	later.LastSeen = later.LastSeen.Add(time.Hour)
	h.put(later)
	h.flush()
	if n := len(rs[0].(*alertingtest.Recorder).Identities()); n != 3 {
		t.Errorf("after the silence expired, %d alerts delivered, want 3", n)
	}
}

func TestRepeatInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testCfg("slack", "archive")
		cfg.RepeatInterval = 4 * time.Hour // global; the route below repeats faster
		cfg.ResolveTimeout = 45 * time.Minute
		cfg.Routes = []alerting.Route{
			{Match: alerting.Matcher{Severity: []detectors.Severity{"high"}}, Receivers: []string{"slack"}, RepeatInterval: 10 * time.Minute, Continue: true},
			{Receivers: []string{"archive"}},
		}
		ob := alerting.NewMemoryOutbox()
		rs := recorders("slack", "archive")
		h := newHarness(t, cfg, ob, nil, rs...).run()
		slack, archive := rs[0].(*alertingtest.Recorder), rs[1].(*alertingtest.Recorder)
		start := time.Now()
		a := alertingtest.NewAlert(detectors.TokenReuse, "tok-1", start.Add(-time.Minute), start)
		h.put(a)
		h.flush()

		reminders := func(r *alertingtest.Recorder) []string {
			var out []string
			for _, id := range r.Identities() {
				out = append(out, id.Reminder)
			}
			return out
		}
		time.Sleep(10*time.Minute + time.Second)
		synctest.Wait()
		h.flush()
		if got, want := reminders(slack), []string{"", "1"}; !slices.Equal(got, want) {
			t.Fatalf("after 10m slack got %q, want the alert and reminder 1", got)
		}
		if got := reminders(archive); len(got) != 1 {
			t.Errorf("archive (repeat 4h) got %q, want the alert only", got)
		}
		if c := slack.Calls(); c[1][0].ID != a.ID || !c[1][0].LastSeen.Equal(a.LastSeen) {
			t.Errorf("the reminder is %s at %v, want the same version %s at %v", c[1][0].ID, c[1][0].LastSeen, a.ID, a.LastSeen)
		}

		// A restart keeps reminding: the outbox tells the new Router what is open.
		h.stop()
		rs2 := []alerting.Receiver{slack, archive}
		h = newHarness(t, cfg, ob, nil, rs2...).run()
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		h.flush()
		if got, want := reminders(slack), []string{"", "1", "2"}; !slices.Equal(got, want) {
			t.Fatalf("after a restart slack got %q, want reminder 2", got)
		}

		// A new version is delivered as such and restarts the interval; its
		// reminders count from 1 again.
		v2 := a
		v2.LastSeen = time.Now()
		h.put(v2)
		h.flush()
		time.Sleep(10*time.Minute + time.Second)
		synctest.Wait()
		h.flush()
		if got, want := reminders(slack), []string{"", "1", "2", "", "1"}; !slices.Equal(got, want) {
			t.Fatalf("after a new version slack got %q, want it and its reminder 1", got)
		}
		// Past resolve_timeout from the newest version, the incident is over.
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		h.flush()
		// v2 was last seen at 0: reminders at 10m, 20m, 30m and 40m; none at 50m,
		// past the 45m resolve_timeout.
		if got, want := reminders(slack), []string{"", "1", "2", "", "1", "2", "3", "4"}; !slices.Equal(got, want) {
			t.Errorf("slack got %q, want %q (no reminder after resolve_timeout)", got, want)
		}
		if got := h.metric("gatewatch_alerting_reminders_total", "receiver", "slack"); got != 1+4 {
			t.Errorf("reminders counted in the second Router = %v, want 5", got)
		}
	})
}

func TestRetriesWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testCfg() // backoff 1s, doubling, at most 1m, ±50% jitter
		rec := alertingtest.NewRecorder("siem")
		rec.Fail(func(call int, _ []detectors.Alert) (bool, error) {
			if call < 5 {
				return true, errors.New("unexpected HTTP status 503 Service Unavailable")
			}
			return false, nil
		})
		h := newHarness(t, cfg, nil, nil, rec).run()
		a := alertOf(detectors.NewCountry, detectors.SeverityHigh, "key-1", nil)
		h.put(a)
		h.flush()
		times := rec.Times()
		if len(times) != 6 {
			t.Fatalf("%d attempts, want 6", len(times))
		}
		for i := 1; i < len(times); i++ {
			gap := times[i].Sub(times[i-1])
			nominal := time.Second << (i - 1)
			if gap < nominal/2 || gap > nominal*3/2 {
				t.Errorf("gap before attempt %d = %v, want %v ±50%%", i+1, gap, nominal)
			}
		}
		if got := h.metric("gatewatch_alerting_deliveries_retried_total", "receiver", "siem"); got != 5 {
			t.Errorf("retried = %v, want 5", got)
		}
		if got := h.metric("gatewatch_alerting_deliveries_sent_total", "receiver", "siem"); got != 1 {
			t.Errorf("sent = %v, want 1", got)
		}
		d, _, _ := h.ob.Lookup(context.Background(), alerting.KeyOf("siem", &a))
		if d.State != alerting.Delivered || d.Attempts != 6 {
			t.Errorf("delivery %s after %d attempts, want delivered after 6", d.State, d.Attempts)
		}
		logs := h.logs.String()
		if n := strings.Count(logs, `"msg":"receiver failing"`); n != 1 {
			t.Errorf("logged receiver failing %d times, want once (a change of state, not every attempt):\n%s", n, logs)
		}
		if !strings.Contains(logs, `"msg":"receiver recovered"`) {
			t.Errorf("recovery not logged:\n%s", logs)
		}
	})
}

func TestRetryAfterIsHonoured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := alertingtest.NewRecorder("slack")
		rec.Fail(func(call int, _ []detectors.Alert) (bool, error) {
			if call == 0 {
				return true, &alerting.RetryAfterError{After: 90 * time.Second, Err: errors.New("ratelimited")}
			}
			return false, nil
		})
		h := newHarness(t, testCfg(), nil, nil, rec).run()
		h.put(alertOf(detectors.NewCountry, detectors.SeverityHigh, "key-1", nil))
		h.flush()
		times := rec.Times()
		if len(times) != 2 {
			t.Fatalf("%d attempts, want 2", len(times))
		}
		if gap := times[1].Sub(times[0]); gap < 90*time.Second {
			t.Errorf("retried after %v, want at least the 90s Retry-After", gap)
		}
	})
}

func TestRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testCfg()
		cfg.Receivers = []alerting.ReceiverConfig{{Name: "slack", RateLimit: 2, Burst: 1, File: &alerting.FileConfig{Path: "unused"}}}
		rec := alertingtest.NewRecorder("slack")
		h := newHarness(t, cfg, nil, nil, rec).run()
		h.put(alertingtest.Alerts(6, t0)...)
		h.flush()
		calls, times := rec.Calls(), rec.Times()
		if len(calls) != 6 {
			t.Fatalf("%d calls, want 6 of one alert each (burst 1)", len(calls))
		}
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < 500*time.Millisecond {
				t.Errorf("call %d came %v after the previous, want at least 500ms at 2/s", i+1, gap)
			}
		}
	})
}

// failUntilFixed makes every attempt on rec fail with err, worth retrying, until fix
// is called.
func failUntilFixed(rec *alertingtest.Recorder, err error) (fix func()) {
	var fixed atomic.Bool
	rec.Fail(func(int, []detectors.Alert) (bool, error) {
		if fixed.Load() {
			return false, nil
		}
		return true, err
	})
	return func() { fixed.Store(true) }
}

func TestGiveUpParksLoudly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testCfg()
		cfg.Outbox.GiveUpAfter = time.Hour
		rec := alertingtest.NewRecorder("siem")
		fix := failUntilFixed(rec, errors.New("dial tcp 192.0.2.1:8088: connect: connection refused"))
		h := newHarness(t, cfg, nil, nil, rec).run()
		start := time.Now()
		as := alertingtest.Alerts(3, t0)
		h.put(as...)
		h.flush() // returns once every delivery is delivered or parked
		if waited := time.Since(start); waited < time.Hour {
			t.Errorf("parked after %v, want give_up_after (1h) of failures first", waited)
		}
		if got := h.metric("gatewatch_alerting_deliveries_failed_total", "receiver", "siem"); got != 3 {
			t.Errorf("failed = %v, want 3", got)
		}
		if got := h.metric("gatewatch_alerting_outbox_depth", "receiver", "siem"); got != 0 {
			t.Errorf("depth = %v, want 0", got)
		}
		logs := h.logs.String()
		for _, a := range as {
			if !logged(logs, map[string]any{"level": "ERROR", "msg": "delivery parked", "receiver": "siem", "alert_id": a.ID, "reason": "gave_up"}) {
				t.Errorf("no error logged for parked alert %s:\n%s", a.ID, logs)
			}
		}
		parked, err := h.r.Parked(context.Background(), "siem", 10)
		if err != nil || len(parked) != 3 {
			t.Fatalf("Parked = %d, %v; want the 3 deliveries kept for an operator", len(parked), err)
		}
		if !strings.Contains(parked[0].LastError, "connection refused") || parked[0].Attempts < 2 {
			t.Errorf("parked delivery keeps %q after %d attempts", parked[0].LastError, parked[0].Attempts)
		}
		// The operator fixes the destination and requeues.
		fix()
		n, err := h.r.Requeue(context.Background(), "siem")
		if err != nil || n != 3 {
			t.Fatalf("Requeue = %d, %v; want 3", n, err)
		}
		h.flush()
		if got := h.metric("gatewatch_alerting_deliveries_sent_total", "receiver", "siem"); got != 3 {
			t.Errorf("sent after requeue = %v, want 3", got)
		}
	})
}

// TestOutboxMetrics: depth, the age of the oldest pending delivery and the parked
// count come from the outbox at scrape time, as a receiver falls behind, gives up
// and is requeued.
func TestOutboxMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testCfg()
		cfg.Outbox.GiveUpAfter = time.Hour
		rec := alertingtest.NewRecorder("siem")
		fix := failUntilFixed(rec, errors.New("unexpected HTTP status 503 Service Unavailable"))
		h := newHarness(t, cfg, nil, nil, rec).run()
		check := func(when string, depth, age, parked float64) {
			t.Helper()
			for name, want := range map[string]float64{
				"gatewatch_alerting_outbox_depth":                      depth,
				"gatewatch_alerting_outbox_oldest_pending_age_seconds": age,
				"gatewatch_alerting_outbox_parked_deliveries":          parked,
			} {
				if got := h.metric(name, "receiver", "siem"); got != want {
					t.Errorf("%s: %s = %v, want %v", when, name, got, want)
				}
			}
		}
		check("before any alert", 0, 0, 0)
		h.put(alertingtest.Alerts(2, t0)...)
		time.Sleep(10 * time.Minute)
		h.put(alertingtest.Alerts(3, t0.Add(time.Hour))[2])
		synctest.Wait()
		check("failing for 10 minutes", 3, 600, 0)
		h.flush() // the first two give up after an hour, the third ten minutes later
		check("given up", 0, 0, 3)
		fix()
		if _, err := h.r.Requeue(context.Background(), "siem"); err != nil {
			t.Fatal(err)
		}
		h.flush()
		check("requeued and delivered", 0, 0, 0)
	})
}

// TestFinalErrorParksOnlyTheBadAlert: a batch (or a group) refused for good is tried
// again one alert at a time, at once, so that only the bad alert parks.
func TestFinalErrorParksOnlyTheBadAlert(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  alerting.Config
	}{
		{"not grouped", testCfg()},
		{"grouped by detector", groupCfg(0, time.Minute, []string{"detector"})},
	} {
		t.Run(c.name, func(t *testing.T) { testFinalErrorParksOnlyTheBadAlert(t, c.cfg) })
	}
}

func testFinalErrorParksOnlyTheBadAlert(t *testing.T, cfg alerting.Config) {
	synctest.Test(t, func(t *testing.T) {
		as := storm(detectors.ForbiddenBurst, 3, t0) // one group
		bad := as[1].ID
		rec := alertingtest.NewRecorder("siem")
		rec.Fail(func(_ int, alerts []detectors.Alert) (bool, error) {
			for _, a := range alerts {
				if a.ID == bad {
					return false, errors.New("unexpected HTTP status 400 Bad Request")
				}
			}
			return false, nil
		})
		h := newHarness(t, cfg, nil, nil, rec).run()
		start := time.Now()
		h.put(as...)
		h.flush()
		if time.Since(start) != 0 {
			t.Errorf("a final error waited %v: it must park at once, without backoff", time.Since(start))
		}
		for i, a := range as {
			d, _, _ := h.ob.Lookup(context.Background(), alerting.KeyOf("siem", &a))
			want := alerting.Delivered
			if a.ID == bad {
				want = alerting.Failed
			}
			if d.State != want {
				t.Errorf("alert %d: %s, want %s", i, d.State, want)
			}
		}
		if got := h.metric("gatewatch_alerting_deliveries_failed_total", "receiver", "siem"); got != 1 {
			t.Errorf("failed = %v, want 1", got)
		}
		if !logged(h.logs.String(), map[string]any{"level": "ERROR", "msg": "delivery parked", "alert_id": bad, "reason": "final_error"}) {
			t.Errorf("final error not logged:\n%s", h.logs.String())
		}
	})
}

func TestAttemptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testCfg()
		cfg.Outbox.GiveUpAfter = time.Minute
		cfg.Receivers = []alerting.ReceiverConfig{{Name: "hung", Timeout: 5 * time.Second, File: &alerting.FileConfig{Path: "unused"}}}
		rec := alertingtest.NewRecorder("hung")
		rec.Block()
		h := newHarness(t, cfg, nil, nil, rec).run()
		start := time.Now()
		h.put(alertOf(detectors.NewCountry, detectors.SeverityHigh, "key-1", nil))
		h.flush()
		times := rec.Times()
		if len(times) < 2 {
			t.Fatalf("%d attempts, want retries after timeouts", len(times))
		}
		if d := times[1].Sub(times[0]); d < 5*time.Second {
			t.Errorf("second attempt %v after the first, want after the 5s timeout", d)
		}
		parked, _ := h.r.Parked(context.Background(), "hung", 1)
		if len(parked) != 1 || !strings.Contains(parked[0].LastError, "attempt took longer than its timeout 5s") {
			t.Errorf("parked = %+v, want the timeout as the reason", parked)
		}
		if time.Since(start) < time.Minute {
			t.Errorf("gave up after %v, before give_up_after", time.Since(start))
		}
	})
}

func TestCloseLetsTheAttemptInFlightFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testCfg()
		cfg.Receivers = []alerting.ReceiverConfig{{Name: "hung", Timeout: 5 * time.Second, File: &alerting.FileConfig{Path: "unused"}}}
		rec := alertingtest.NewRecorder("hung")
		rec.Block()
		ob := alerting.NewMemoryOutbox()
		h := newHarness(t, cfg, ob, nil, rec).run()
		a := alertOf(detectors.NewCountry, detectors.SeverityHigh, "key-1", nil)
		h.put(a)
		synctest.Wait() // the attempt is in flight
		start := time.Now()
		h.stop()
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("Close returned after %v, want when the attempt in flight timed out (5s)", d)
		}
		if err := h.r.Put(context.Background(), []detectors.Alert{a}); !errors.Is(err, alerting.ErrClosed) {
			t.Errorf("Put after Close = %v, want ErrClosed", err)
		}
		d, _, _ := ob.Lookup(context.Background(), alerting.KeyOf("hung", &a))
		if d.State != alerting.Pending || d.Attempts != 1 {
			t.Errorf("after Close the delivery is %s with %d attempts, want pending after 1 for the next Run", d.State, d.Attempts)
		}
	})
}

func TestPutRefusesAlertsWithoutID(t *testing.T) {
	h := newHarness(t, testCfg(), nil, nil, recorders("archive")...)
	good := alertOf(detectors.NewCountry, detectors.SeverityHigh, "key-1", nil)
	bad := good
	bad.ID = ""
	err := h.r.Put(context.Background(), []detectors.Alert{good, bad})
	if err == nil || !strings.Contains(err.Error(), "alert 1") {
		t.Fatalf("Put = %v, want an error naming alert 1", err)
	}
	if depth, _ := h.ob.Stats(context.Background()); len(depth) != 0 {
		t.Errorf("outbox holds %v after a refused Put, want nothing", depth)
	}
}

func TestNewRouterChecks(t *testing.T) {
	rec := alertingtest.NewRecorder("slack")
	ok := alerting.RouterOptions{Outbox: alerting.NewMemoryOutbox(), Registerer: prometheus.NewPedanticRegistry(),
		Receivers: map[string]alerting.Receiver{"slack": rec}}
	for _, c := range []struct {
		name string
		cfg  func(*alerting.Config)
		opts func(*alerting.RouterOptions)
		want string
	}{
		{"no outbox", nil, func(o *alerting.RouterOptions) { o.Outbox = nil }, "Outbox is required"},
		{"no registerer", nil, func(o *alerting.RouterOptions) { o.Registerer = nil }, "Registerer is required"},
		{"configured receiver not built", func(c *alerting.Config) {
			*c = testCfg("slack", "siem")
		}, nil, `receiver "siem" is configured but was not built`},
		{"route to a receiver that is not built", func(c *alerting.Config) {
			*c = testCfg("slack")
			c.Routes = []alerting.Route{{Receivers: []string{"slack"}}, {Receivers: []string{"archive"}}}
		}, func(o *alerting.RouterOptions) {
			o.Receivers = map[string]alerting.Receiver{"slack": rec, "archive": alertingtest.NewRecorder("archive")}
		}, `routes[1].receivers[0]: undefined receiver "archive"`},
		{"receiver under another name", nil, func(o *alerting.RouterOptions) {
			o.Receivers = map[string]alerting.Receiver{"siem": rec}
		}, `receiver "siem" calls itself "slack"`},
		{"invalid config", func(c *alerting.Config) { c.ResolveTimeout = 0 }, nil, "resolve_timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, o := testCfg(), ok
			o.Registerer = prometheus.NewPedanticRegistry()
			if c.cfg != nil {
				c.cfg(&cfg)
			}
			if c.opts != nil {
				c.opts(&o)
			}
			_, err := alerting.NewRouter(cfg, o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("NewRouter = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestOutboxDepthAfterRestart checks that a Router starting on an outbox with a
// backlog reports it and delivers it.
func TestOutboxDepthAfterRestart(t *testing.T) {
	ob := alerting.NewMemoryOutbox()
	rec := alertingtest.NewRecorder("archive")
	h := newHarness(t, testCfg(), ob, nil, rec)
	h.put(alertingtest.Alerts(4, t0)...) // Run never started: the process stopped here
	h = newHarness(t, testCfg(), ob, nil, rec).run()
	h.flush()
	if n := len(rec.Identities()); n != 4 {
		t.Errorf("the restarted Router delivered %d alerts, want the 4 left in the outbox", n)
	}
	if got := h.metric("gatewatch_alerting_outbox_depth", "receiver", "archive"); got != 0 {
		t.Errorf("depth = %v after delivering the backlog, want 0", got)
	}
}

func ExampleRouter_Plan() {
	cfg := alerting.DefaultConfig()
	for _, n := range []string{"soc-slack", "siem", "archive"} {
		cfg.Receivers = append(cfg.Receivers, alerting.ReceiverConfig{Name: n, File: &alerting.FileConfig{Path: n + ".jsonl"}})
	}
	cfg.Routes = []alerting.Route{
		{Match: alerting.Matcher{Severity: []detectors.Severity{"high", "critical"}}, Receivers: []string{"soc-slack", "siem"}, Continue: true},
		{Receivers: []string{"archive"}},
	}
	rcvs := map[string]alerting.Receiver{}
	for _, n := range []string{"soc-slack", "siem", "archive"} {
		rcvs[n] = alertingtest.NewRecorder(n)
	}
	r, err := alerting.NewRouter(cfg, alerting.RouterOptions{
		Outbox: alerting.NewMemoryOutbox(), Receivers: rcvs, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	a := alertingtest.NewAlert(detectors.TokenReuse, "9f2c…", t0, t0.Add(time.Minute))
	fmt.Println(r.Plan(a))
	// Output: [soc-slack siem archive]
}

// TestRequeueDelivery: one parked delivery is sent again on its own; the others stay
// parked, and a delivery that is not parked is left alone.
func TestRequeueDelivery(t *testing.T) {
	rec := alertingtest.NewRecorder("archive")
	rec.Fail(func(int, []detectors.Alert) (bool, error) { return false, errors.New("400 bad request") })
	h := newHarness(t, testCfg("archive"), nil, nil, rec).run()
	as := alertingtest.Alerts(3, t0)
	h.put(as...)
	h.flush()
	parked, err := h.r.Parked(context.Background(), "archive", 10)
	if err != nil || len(parked) != 3 {
		t.Fatalf("Parked = %d, %v; want 3", len(parked), err)
	}
	rec.Fail(nil)
	ok, err := h.r.RequeueDelivery(context.Background(), parked[1].DeliveryKey)
	if err != nil || !ok {
		t.Fatalf("RequeueDelivery = %v, %v", ok, err)
	}
	h.flush()
	if ids := rec.Identities(); ids[len(ids)-1].ID != parked[1].ID {
		t.Errorf("last delivered %s, want the requeued %s", ids[len(ids)-1].ID, parked[1].ID)
	}
	if left, _ := h.r.Parked(context.Background(), "archive", 10); len(left) != 2 {
		t.Errorf("%d still parked, want 2", len(left))
	}
	if ok, err := h.r.RequeueDelivery(context.Background(), parked[1].DeliveryKey); ok || err != nil {
		t.Errorf("requeueing a delivered one = %v, %v; want false, nil", ok, err)
	}
}

package alerting_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/detectors"
)

// historyDouble records what the Router hands its History; with block set, every
// call waits for its context and fails with it.
type historyDouble struct {
	mu     sync.Mutex
	block  bool
	alerts []detectors.Alert
	ds     []alerting.Delivery
	calls  int
}

func (h *historyDouble) RecordAlerts(ctx context.Context, as []detectors.Alert) error {
	h.mu.Lock()
	h.calls++
	block := h.block
	if !block {
		h.alerts = append(h.alerts, as...)
	}
	h.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (h *historyDouble) RecordDeliveries(ctx context.Context, ds []alerting.Delivery) error {
	h.mu.Lock()
	h.calls++
	block := h.block
	if !block {
		h.ds = append(h.ds, ds...)
	}
	h.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

// states returns, per receiver and alert ID, the states recorded in order.
func (h *historyDouble) states() map[string][]alerting.DeliveryState {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]alerting.DeliveryState{}
	for _, d := range h.ds {
		k := d.Receiver + "/" + d.ID
		out[k] = append(out[k], d.State)
	}
	return out
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func newHistoryRouter(t *testing.T, hist alerting.History, logs *lockedBuffer, rcvs ...alerting.Receiver) (*alerting.Router, *prometheus.Registry, func()) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m := map[string]alerting.Receiver{}
	var names []string
	for _, r := range rcvs {
		m[r.Name()] = r
		names = append(names, r.Name())
	}
	r, err := alerting.NewRouter(testCfg(names...), alerting.RouterOptions{
		Outbox:     alerting.NewMemoryOutbox(),
		Receivers:  m,
		Registerer: reg,
		Logger:     slog.New(slog.NewJSONHandler(logs, nil)),
		History:    hist,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	return r, reg, func() {
		if err := r.Close(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

func TestHistoryGetsAlertsAndDeliveryStates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hist := &historyDouble{}
		slack := alertingtest.NewRecorder("slack")
		siem := alertingtest.NewRecorder("siem")
		siem.Fail(func(int, []detectors.Alert) (bool, error) { return false, errors.New("400 bad request") })
		logs := &lockedBuffer{}
		r, _, stop := newHistoryRouter(t, hist, logs, slack, siem)
		synctest.Wait() // Run has resumed from the empty outbox
		as := alertingtest.Alerts(2, t0)
		if err := r.Put(context.Background(), as); err != nil {
			t.Fatal(err)
		}
		if err := r.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		// The same alerts again, as after a crash between the outbox and the history:
		// the outbox skips them, the history records them again, once each.
		if err := r.Put(context.Background(), as); err != nil {
			t.Fatal(err)
		}
		stop() // Run writes what is queued before it returns
		hist.mu.Lock()
		gotAlerts := len(hist.alerts)
		hist.mu.Unlock()
		if gotAlerts != 4 {
			t.Errorf("history got %d alerts, want 4: each once per Put, not once per receiver", gotAlerts)
		}
		states := hist.states()
		for _, a := range as {
			if got := states["slack/"+a.ID]; len(got) != 2 || got[0] != alerting.Pending || got[1] != alerting.Delivered {
				t.Errorf("slack %s: states %v, want [pending delivered]", a.ID, got)
			}
			if got := states["siem/"+a.ID]; len(got) != 2 || got[0] != alerting.Pending || got[1] != alerting.Failed {
				t.Errorf("siem %s: states %v, want [pending failed]", a.ID, got)
			}
		}
	})
}

// TestHistoryCatchesUpAfterACrash: the outbox has two alerts, delivered, whose history
// records were lost in a crash (the history is written after the outbox without
// waiting) and that the engine will not raise again (their batch was committed). The
// next router records them when it starts.
func TestHistoryCatchesUpAfterACrash(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		ob := alerting.NewMemoryOutbox()
		as := alertingtest.Alerts(2, t0)
		var ds []alerting.Delivery
		for i := range as {
			ds = append(ds, alerting.Delivery{DeliveryKey: alerting.KeyOf("slack", &as[i]), Alert: as[i], State: alerting.Pending, Queued: t0})
		}
		if err := ob.Enqueue(ctx, ds); err != nil {
			t.Fatal(err)
		}
		for i := range ds {
			ds[i].State, ds[i].Done = alerting.Delivered, t0
		}
		if err := ob.Update(ctx, ds); err != nil {
			t.Fatal(err)
		}
		hist := &historyDouble{}
		slack := alertingtest.NewRecorder("slack")
		r, err := alerting.NewRouter(testCfg("slack"), alerting.RouterOptions{
			Outbox: ob, Receivers: map[string]alerting.Receiver{"slack": slack}, Registerer: prometheus.NewPedanticRegistry(),
			Logger: slog.New(slog.NewJSONHandler(&lockedBuffer{}, nil)), History: hist,
		})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		synctest.Wait()
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		hist.mu.Lock()
		defer hist.mu.Unlock()
		var ids []string
		for _, a := range hist.alerts {
			ids = append(ids, a.ID)
		}
		if want := []string{as[0].ID, as[1].ID}; !slices.Equal(ids, want) && !slices.Equal(ids, []string{want[1], want[0]}) {
			t.Errorf("history after the restart holds %v, want %v", ids, want)
		}
		if n := len(slack.Calls()); n != 0 {
			t.Errorf("%d deliveries to Slack, want none: the outbox had delivered them", n)
		}
	})
}

// TestHistoryGetsTheLastDeliveriesAtClose: an attempt still running when the router
// is closed finishes (Close lets it), and its outcome reaches the history before Run
// returns: the history writer stops after the workers, not with them.
func TestHistoryGetsTheLastDeliveriesAtClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hist := &historyDouble{}
		release := make(chan struct{})
		slack := alertingtest.NewRecorder("slack")
		slack.Fail(func(int, []detectors.Alert) (bool, error) { <-release; return false, nil })
		r, _, stop := newHistoryRouter(t, hist, &lockedBuffer{}, slack)
		as := alertingtest.Alerts(1, t0)
		if err := r.Put(context.Background(), as); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the attempt is under way
		stopped := make(chan struct{})
		go func() { stop(); close(stopped) }()
		synctest.Wait() // Close waits for the attempt
		close(release)
		<-stopped
		if got := hist.states()["slack/"+as[0].ID]; !slices.Equal(got, []alerting.DeliveryState{alerting.Pending, alerting.Delivered}) {
			t.Errorf("history states %v, want [pending delivered]", got)
		}
	})
}

func TestFailingHistoryNeverStopsDelivery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hist := &historyDouble{block: true} // hangs until its timeout, then fails
		slack := alertingtest.NewRecorder("slack")
		logs := &lockedBuffer{}
		r, reg, stop := newHistoryRouter(t, hist, logs, slack)
		as := alertingtest.Alerts(400, t0)
		for i := range as {
			// One Put per alert: more records than the history queue holds.
			if err := r.Put(context.Background(), as[i:i+1]); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		delivered := 0
		for _, c := range slack.Calls() {
			delivered += len(c)
		}
		if delivered != len(as) {
			t.Errorf("delivered %d alerts, want %d whatever the history does", delivered, len(as))
		}
		synctest.Wait()
		if got := counterValue(t, reg, "gatewatch_alerting_history_dropped_total"); got == 0 {
			t.Error("no history records counted as dropped with the history hanging")
		}
		stop()
		if got := counterValue(t, reg, "gatewatch_alerting_history_errors_total"); got == 0 {
			t.Error("no history errors counted")
		}
		if n := strings.Count(logs.String(), "alert history failing"); n != 1 {
			t.Errorf("history failure logged %d times, want once (a change of state):\n%s", n, logs.String())
		}
	})
}

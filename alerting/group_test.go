package alerting_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/alerting/outbox"
	"github.com/gatewatch/gatewatch/detectors"
)

// groupCfg is testCfg for receivers with grouping by group_by.
func groupCfg(wait, interval time.Duration, by []string, receivers ...string) alerting.Config {
	c := testCfg(receivers...)
	c.GroupBy, c.GroupWait, c.GroupInterval = by, wait, interval
	return c
}

// storm returns n incidents of detector, first seen from base on.
func storm(detector string, n int, base time.Time) []detectors.Alert {
	out := make([]detectors.Alert, n)
	for i := range out {
		first := base.Add(time.Duration(i) * time.Millisecond)
		out[i] = alertingtest.NewAlert(detector, fmt.Sprintf("%s-key-%04d", detector, i), first, first.Add(time.Minute))
	}
	return out
}

func groupIDs(g alerting.Group) []string {
	var ids []string
	for _, a := range g.Alerts {
		ids = append(ids, a.ID)
	}
	return ids
}

func TestGroupWaitAndInterval(t *testing.T) {
	for _, c := range []struct {
		name string
		wait time.Duration
	}{
		{"group_wait 0: the first incident goes at once", 0},
		{"group_wait 30s: the first incident waits for company", 30 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := alertingtest.NewGroupRecorder("slack")
				h := newHarness(t, groupCfg(c.wait, time.Minute, []string{"detector"}, "slack"), nil, nil, rec).run()
				start := time.Now()
				fb := storm(detectors.ForbiddenBurst, 3, t0)
				tr := storm(detectors.TokenReuse, 1, t0)

				h.put(fb[0])
				synctest.Wait()
				if got, want := len(rec.Groups()), map[bool]int{true: 1, false: 0}[c.wait == 0]; got != want {
					t.Fatalf("right after the first incident: %d notifications, want %d", got, want)
				}
				time.Sleep(10 * time.Second)
				h.put(fb[1], fb[2])
				synctest.Wait()
				if c.wait > 0 {
					time.Sleep(c.wait - 10*time.Second)
					synctest.Wait()
					gs := rec.Groups()
					if len(gs) != 1 || !slices.Equal(groupIDs(gs[0]), []string{fb[0].ID, fb[1].ID, fb[2].ID}) {
						t.Fatalf("after group_wait: %v, want one notification of the three incidents", gs)
					}
					if at := rec.Times()[0].Sub(start); at != c.wait {
						t.Errorf("first notification after %s, want group_wait %s", at, c.wait)
					}
					return
				}
				if n := len(rec.Groups()); n != 1 {
					t.Fatalf("incidents joining within group_interval were sent at once: %d notifications", n)
				}
				// Another detector is another group: it does not wait for this one.
				h.put(tr[0])
				synctest.Wait()
				gs := rec.Groups()
				if len(gs) != 2 || gs[1].Key == gs[0].Key || gs[1].Labels["detector"] != detectors.TokenReuse {
					t.Fatalf("a new group of another detector: %+v", gs)
				}
				time.Sleep(time.Minute - 10*time.Second)
				synctest.Wait()
				gs = rec.Groups()
				if len(gs) != 3 {
					t.Fatalf("after group_interval: %d notifications, want 3", len(gs))
				}
				if gs[2].Key != gs[0].Key || !slices.Equal(groupIDs(gs[2]), []string{fb[1].ID, fb[2].ID}) {
					t.Errorf("the group's second notification = %v (key %s), want the two that joined (key %s)", groupIDs(gs[2]), gs[2].Key, gs[0].Key)
				}
				if at := rec.Times()[2].Sub(rec.Times()[0]); at != time.Minute {
					t.Errorf("second notification %s after the first, want group_interval 1m", at)
				}
			})
		})
	}
}

// TestGroupStorm: 500 incidents of one detector arrive over two minutes, ten at a time.
// Grouped, they make five notifications (the first at once, then one per group_interval)
// that carry each incident exactly once; without grouping every put is its own.
func TestGroupStorm(t *testing.T) {
	for _, c := range []struct {
		name    string
		groupBy []string
		want    int
	}{
		{"grouped by detector", []string{"detector"}, 5},
		{"grouped by detector and key prefix", []string{"detector", "key_prefix:6"}, 5},
		{"not grouped", nil, 50},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := alertingtest.NewGroupRecorder("slack")
				file := alertingtest.NewRecorder("archive")
				h := newHarness(t, groupCfg(0, 30*time.Second, c.groupBy, "slack", "archive"), nil, nil, rec, file).run()
				all := storm(detectors.ForbiddenBurst, 500, t0)
				for i := 0; i < len(all); i += 10 {
					h.put(all[i : i+10]...)
					synctest.Wait()
					time.Sleep(2400 * time.Millisecond)
				}
				time.Sleep(time.Minute)
				synctest.Wait()
				seen := map[string]int{}
				keys := map[string]bool{}
				for _, g := range rec.Groups() {
					keys[g.Key] = true
					for _, id := range groupIDs(g) {
						seen[id]++
					}
				}
				if got := len(rec.Groups()); got != c.want {
					t.Errorf("%d notifications to slack, want %d", got, c.want)
				}
				if got := len(file.Calls()); got != c.want {
					t.Errorf("%d calls to the file receiver, want %d", got, c.want)
				}
				if c.groupBy != nil && len(keys) != 1 {
					t.Errorf("the storm made %d groups, want 1", len(keys))
				}
				for _, a := range all {
					if seen[a.ID] != 1 {
						t.Fatalf("incident %s delivered %d times, want once", a.ID, seen[a.ID])
					}
				}
				if n := len(file.Identities()); n != len(all) {
					t.Errorf("the file receiver got %d alerts, want %d", n, len(all))
				}
			})
		})
	}
}

// TestDefaultsDeliverAtOnce: with the default config (no group_by) every incident
// reaches every receiver the moment it is put, as before grouping existed, whether
// the receiver renders groups (Slack) or not; and with group_by set but the default
// group_wait, a group's first incident still goes at once.
func TestDefaultsDeliverAtOnce(t *testing.T) {
	for _, c := range []struct {
		name    string
		groupBy []string
		want    []int // notifications to each receiver after each put
	}{
		{"default config", nil, []int{1, 2, 3}},
		{"group_by, default group_wait", []string{"detector"}, []int{1, 1, 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := testCfg("slack", "archive")
				cfg.GroupBy = c.groupBy
				rec, file := alertingtest.NewGroupRecorder("slack"), alertingtest.NewRecorder("archive")
				h := newHarness(t, cfg, nil, nil, rec, file).run()
				start := time.Now()
				for i, a := range storm(detectors.ForbiddenBurst, len(c.want), t0) {
					h.put(a)
					synctest.Wait()
					if got := len(rec.Groups()); got != c.want[i] {
						t.Errorf("after incident %d: %d notifications to slack, want %d", i+1, got, c.want[i])
					}
					if got := len(file.Calls()); got != c.want[i] {
						t.Errorf("after incident %d: %d calls to the file receiver, want %d", i+1, got, c.want[i])
					}
				}
				if waited := time.Since(start); waited != 0 {
					t.Errorf("the incidents waited %s", waited)
				}
			})
		})
	}
}

// TestGroupByRoute: a route's grouping overrides the alerting section's, and alerts
// routed elsewhere are not grouped.
func TestGroupByRoute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slack, archive := alertingtest.NewGroupRecorder("slack"), alertingtest.NewRecorder("archive")
		cfg := testCfg("slack", "archive")
		cfg.Routes = []alerting.Route{
			{Match: alerting.Matcher{Detector: []string{detectors.ForbiddenBurst}}, Receivers: []string{"slack"},
				Grouping: alerting.Grouping{GroupBy: []string{"labels.key_type"}, GroupInterval: time.Hour}},
			{Receivers: []string{"archive"}},
		}
		h := newHarness(t, cfg, nil, nil, slack, archive).run()
		fb := storm(detectors.ForbiddenBurst, 4, t0)
		tr := storm(detectors.TokenReuse, 3, t0)
		h.put(fb[0])
		synctest.Wait()
		h.put(fb[1:]...)
		h.put(tr...)
		synctest.Wait()
		if n := len(slack.Groups()); n != 1 {
			t.Fatalf("slack: %d notifications before group_interval, want 1", n)
		}
		if n := len(archive.Identities()); n != 3 {
			t.Fatalf("archive (not grouped): %d alerts, want 3 at once", n)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		gs := slack.Groups()
		if len(gs) != 2 || len(gs[1].Alerts) != 3 || gs[1].Labels["labels.key_type"] != "client_key" {
			t.Fatalf("slack after group_interval: %+v", gs)
		}
	})
}

// TestGroupRestart: gatewatch stops in the middle of a group, with two incidents
// waiting for the group's interval in the durable outbox. The next run delivers them,
// once, under the same group key, and not the incident already delivered.
func TestGroupRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := groupCfg(0, time.Hour, []string{"detector"}, "slack")
	rec := alertingtest.NewGroupRecorder("slack")
	start := func() (*alerting.Router, *outbox.Store, chan error, context.CancelFunc) {
		ob, err := outbox.Open(dir, outbox.Options{})
		if err != nil {
			t.Fatal(err)
		}
		r, err := alerting.NewRouter(cfg, alerting.RouterOptions{Outbox: ob, Receivers: map[string]alerting.Receiver{"slack": rec},
			Registerer: prometheus.NewPedanticRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		return r, ob, done, cancel
	}
	fb := storm(detectors.ForbiddenBurst, 3, t0)
	r, ob, done, cancel := start()
	if err := r.Put(context.Background(), fb[:1]); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Put(context.Background(), fb[1:]); err != nil {
		t.Fatal(err)
	}
	// Killed: Run's context ends without Close, the outbox is closed under it.
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Groups()); n != 1 {
		t.Fatalf("before the restart: %d notifications, want the first incident's alone", n)
	}

	r, ob, done, cancel = start()
	defer func() {
		cancel()
		<-done
		ob.Close()
	}()
	if err := r.Flush(ctx); err != nil {
		t.Fatalf("the incidents waiting in the group were not delivered after the restart: %v", err)
	}
	gs := rec.Groups()
	if len(gs) != 2 {
		t.Fatalf("after the restart: %d notifications, want 2", len(gs))
	}
	if gs[1].Key != gs[0].Key || !slices.Equal(groupIDs(gs[1]), []string{fb[1].ID, fb[2].ID}) {
		t.Errorf("after the restart the group got %v under key %s, want the two waiting incidents under %s", groupIDs(gs[1]), gs[1].Key, gs[0].Key)
	}
}

// TestGroupingConfig: group_by settings are checked by name and position.
func TestGroupingConfig(t *testing.T) {
	for _, c := range []struct {
		name string
		g    alerting.Grouping
		want string
	}{
		{"unknown field", alerting.Grouping{GroupBy: []string{"tenant"}}, `group_by[0]: unknown "tenant"`},
		{"key prefix without length", alerting.Grouping{GroupBy: []string{"key_prefix:x"}}, "group_by[0]: key_prefix:N needs N"},
		{"empty label", alerting.Grouping{GroupBy: []string{"detector", "labels."}}, "group_by[1]: labels. needs a label name"},
		{"negative wait", alerting.Grouping{GroupWait: -time.Second}, "group_wait: must not be negative"},
	} {
		cfg := testCfg("slack")
		cfg.Grouping = c.g
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want %q", c.name, err, c.want)
		}
	}
}

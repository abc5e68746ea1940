package alertingtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/file"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/promtest"
)

// Store is an OutboxStore that can be closed, as a process closes it when it stops.
type Store interface {
	alerting.OutboxStore
	Close() error
}

// Opener opens the outbox kept in dir. Opened again after Close, it must hold
// everything that was durable before.
type Opener func(t *testing.T, dir string) Store

// RunOutboxSuite runs the behaviour every OutboxStore must have as subtests of t.
func RunOutboxSuite(t *testing.T, open Opener) {
	t.Run("EnqueueSkipsSameAndOlderVersions", func(t *testing.T) { testEnqueueDedup(t, open) })
	t.Run("QueueOrderAndUpdates", func(t *testing.T) { testQueue(t, open) })
	t.Run("AlertRoundTrip", func(t *testing.T) { testRoundTrip(t, open) })
	t.Run("Recent", func(t *testing.T) { testRecent(t, open) })
	t.Run("Prune", func(t *testing.T) { testPrune(t, open) })
	t.Run("Reopen", func(t *testing.T) { testReopen(t, open) })
	t.Run("ConcurrentEnqueue", func(t *testing.T) { testConcurrentEnqueue(t, open) })
	t.Run("RouterDedupAcrossRestart", func(t *testing.T) { testDedupAcrossRestart(t, open) })
	t.Run("RouterCrashAtEveryStep", func(t *testing.T) { testCrashAtEveryStep(t, open) })
	t.Run("RouterCrashAfterSendIsDeduplicated", func(t *testing.T) { testCrashAfterSendIsDeduplicated(t, open) })
}

var base = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func openStore(t *testing.T, open Opener, dir string) Store {
	t.Helper()
	s := open(t, dir)
	t.Cleanup(func() { _ = s.Close() }) // a second Close after the test's own is harmless
	return s
}

func delivery(receiver string, a detectors.Alert, round int) alerting.Delivery {
	k := alerting.KeyOf(receiver, &a)
	k.Round = round
	// Queued as the Router would stamp it, were its clock the alert's event time.
	return alerting.Delivery{DeliveryKey: k, Alert: a, State: alerting.Pending, Queued: a.LastSeen}
}

func version(a detectors.Alert, last time.Time) detectors.Alert {
	a.LastSeen = last
	return a
}

func added(ds []alerting.Delivery) []bool {
	out := make([]bool, len(ds))
	for i := range ds {
		out[i] = ds[i].Seq != 0
	}
	return out
}

func testEnqueueDedup(t *testing.T, open Opener) {
	ctx := t.Context()
	s := openStore(t, open, t.TempDir())
	a := Alerts(1, base)[0]
	v2 := version(a, a.LastSeen.Add(time.Minute))
	v3 := version(a, a.LastSeen.Add(2*time.Minute))
	for _, c := range []struct {
		name string
		ds   []alerting.Delivery
		want []bool
	}{
		{"first version", []alerting.Delivery{delivery("A", v2, 0)}, []bool{true}},
		{"same version again", []alerting.Delivery{delivery("A", v2, 0)}, []bool{false}},
		{"an older version is a version of its own", []alerting.Delivery{delivery("A", a, 0)}, []bool{true}},
		{"other receiver", []alerting.Delivery{delivery("B", a, 0)}, []bool{true}},
		{"newer version, twice in one call", []alerting.Delivery{delivery("A", v3, 0), delivery("A", v3, 0)}, []bool{true, false}},
		{"reminder", []alerting.Delivery{delivery("A", v3, 1)}, []bool{true}},
		{"the same reminder again", []alerting.Delivery{delivery("A", v3, 1)}, []bool{false}},
	} {
		if err := s.Enqueue(ctx, c.ds); err != nil {
			t.Fatalf("%s: Enqueue: %v", c.name, err)
		}
		if got := added(c.ds); !slices.Equal(got, c.want) {
			t.Errorf("%s: added %v, want %v", c.name, got, c.want)
		}
	}
	// A delivered or parked version is as known as a pending one.
	head, err := s.Pending(ctx, "A", 2)
	if err != nil {
		t.Fatal(err)
	}
	head[0].State, head[1].State = alerting.Delivered, alerting.Failed
	if err := s.Update(ctx, head); err != nil {
		t.Fatal(err)
	}
	again := []alerting.Delivery{delivery("A", head[0].Alert, 0), delivery("A", head[1].Alert, 0)}
	if err := s.Enqueue(ctx, again); err != nil {
		t.Fatal(err)
	}
	if got := added(again); !slices.Equal(got, []bool{false, false}) {
		t.Errorf("delivered and parked versions put again: added %v, want none", got)
	}
	if depth := pending(t, s); !equalMaps(depth, map[string]int{"A": 2, "B": 1}) {
		t.Errorf("pending per receiver = %v, want A:2 B:1", depth)
	}
}

// pending returns the Pending of each receiver's Stats that has any.
func pending(t *testing.T, s Store) map[string]int {
	t.Helper()
	stats, err := s.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for r, st := range stats {
		if st.Pending > 0 {
			out[r] = st.Pending
		}
	}
	return out
}

func equalMaps(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func ids(ds []alerting.Delivery) []string {
	out := make([]string, len(ds))
	for i := range ds {
		out[i] = ds[i].Alert.Key
	}
	return out
}

func testQueue(t *testing.T, open Opener) {
	ctx := t.Context()
	s := openStore(t, open, t.TempDir())
	as := Alerts(5, base)
	var ds []alerting.Delivery
	for _, a := range as {
		ds = append(ds, delivery("A", a, 0))
	}
	ds = append(ds, delivery("B", as[0], 0), delivery("B", as[1], 0))
	if err := s.Enqueue(ctx, ds); err != nil {
		t.Fatal(err)
	}
	head, err := s.Pending(ctx, "A", 3)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(head), []string{"key-0000", "key-0001", "key-0002"}; !slices.Equal(got, want) {
		t.Fatalf("Pending(A, 3) = %v, want %v", got, want)
	}
	now := base.Add(time.Hour)
	head[0].State, head[0].Attempts, head[0].Done = alerting.Delivered, 1, now
	head[1].Attempts, head[1].FirstFailure, head[1].LastError = 1, now, "unexpected HTTP status 503"
	head[2].State, head[2].Attempts, head[2].FirstFailure, head[2].LastError, head[2].Done = alerting.Failed, 1, now, "unexpected HTTP status 400", now
	if err := s.Update(ctx, head); err != nil {
		t.Fatal(err)
	}
	checkPending := func(want ...string) {
		t.Helper()
		got, err := s.Pending(ctx, "A", 10)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids(got), want) {
			t.Errorf("Pending(A) = %v, want %v", ids(got), want)
		}
	}
	// The retried one keeps its place; the delivered and the parked leave.
	checkPending("key-0001", "key-0003", "key-0004")
	got, ok, err := s.Lookup(ctx, head[1].DeliveryKey)
	if err != nil || !ok {
		t.Fatalf("Lookup(%+v) = %v, %v", head[1].DeliveryKey, ok, err)
	}
	if got.State != alerting.Pending || got.Attempts != 1 || !got.FirstFailure.Equal(now) || got.LastError != head[1].LastError {
		t.Errorf("after a failed attempt: %s, %d attempts, first failure %v, %q", got.State, got.Attempts, got.FirstFailure, got.LastError)
	}
	got, _, _ = s.Lookup(ctx, head[0].DeliveryKey)
	if got.State != alerting.Delivered || !got.Done.Equal(now) {
		t.Errorf("delivered: %s done %v", got.State, got.Done)
	}
	if _, ok, _ := s.Lookup(ctx, alerting.DeliveryKey{Receiver: "A", ID: "nope"}); ok {
		t.Error("Lookup of an unknown key found something")
	}
	parked, err := s.Parked(ctx, "A", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 1 || parked[0].Alert.Key != "key-0002" || parked[0].LastError != head[2].LastError {
		t.Fatalf("Parked(A) = %+v, want key-0002", parked)
	}
	if p, _ := s.Parked(ctx, "B", 10); len(p) != 0 {
		t.Errorf("Parked(B) = %v, want none", ids(p))
	}
	checkStats := func(when string, want map[string]alerting.QueueStats) {
		t.Helper()
		got, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for r, w := range want {
			if g := got[r]; g.Pending != w.Pending || g.Parked != w.Parked || !g.OldestPending.Equal(w.OldestPending) {
				t.Errorf("%s: Stats[%s] = %+v, want %+v", when, r, g, w)
			}
		}
	}
	// The head of A's queue is the retried key-0001; B's still its first.
	checkStats("after attempts", map[string]alerting.QueueStats{
		"A": {Pending: 3, Parked: 1, OldestPending: as[1].LastSeen},
		"B": {Pending: 2, OldestPending: as[0].LastSeen},
	})
	// An operator's requeue puts the parked one at the end of the queue.
	requeued := now.Add(time.Minute)
	parked[0].State, parked[0].Queued, parked[0].Attempts, parked[0].FirstFailure, parked[0].Done = alerting.Pending, requeued, 0, time.Time{}, time.Time{}
	if err := s.Update(ctx, parked); err != nil {
		t.Fatal(err)
	}
	checkPending("key-0001", "key-0003", "key-0004", "key-0002")
	checkStats("after requeue", map[string]alerting.QueueStats{
		"A": {Pending: 4, OldestPending: as[1].LastSeen},
		"B": {Pending: 2, OldestPending: as[0].LastSeen},
	})
	if got, _, _ := s.Lookup(ctx, parked[0].DeliveryKey); !got.Queued.Equal(requeued) {
		t.Errorf("requeued delivery has Queued %v, want %v", got.Queued, requeued)
	}
	// Once A's queue drains, nothing of A is pending or parked.
	all, _ := s.Pending(ctx, "A", 10)
	for i := range all {
		all[i].State, all[i].Done = alerting.Delivered, now
	}
	if err := s.Update(ctx, all); err != nil {
		t.Fatal(err)
	}
	checkStats("after A drained", map[string]alerting.QueueStats{"A": {}})
	// Unknown keys are ignored.
	if err := s.Update(ctx, []alerting.Delivery{{DeliveryKey: alerting.DeliveryKey{Receiver: "C", ID: "x"}, State: alerting.Delivered}}); err != nil {
		t.Errorf("Update of an unknown key: %v", err)
	}
}

func alertJSON(t *testing.T, a detectors.Alert) string {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func testRoundTrip(t *testing.T, open Opener) {
	ctx := t.Context()
	s := openStore(t, open, t.TempDir())
	a := Alerts(1, base)[0]
	rate, pv := 0.0, 1e-9
	a.Evidence.BaselineRatePerMin, a.Evidence.PValue = &rate, &pv
	a.Evidence.NewCountries = []detectors.CountrySeen{{Country: "NL", FirstSeen: "2025-03-01T12:00:00.000Z"}}
	a.Summary = "Ünïcode, \"quotes\" and <html> & a newline\n."
	ds := []alerting.Delivery{delivery("A", a, 0)}
	if err := s.Enqueue(ctx, ds); err != nil {
		t.Fatal(err)
	}
	got, err := s.Pending(ctx, "A", 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("Pending = %d deliveries, %v", len(got), err)
	}
	if g, w := alertJSON(t, got[0].Alert), alertJSON(t, a); g != w {
		t.Errorf("alert came back as\n%s\nwant\n%s", g, w)
	}
	if got[0].DeliveryKey != ds[0].DeliveryKey || got[0].Seq != ds[0].Seq || got[0].State != alerting.Pending || !got[0].Queued.Equal(ds[0].Queued) {
		t.Errorf("delivery came back as %+v %d %s queued %v, want %+v %d pending queued %v",
			got[0].DeliveryKey, got[0].Seq, got[0].State, got[0].Queued, ds[0].DeliveryKey, ds[0].Seq, ds[0].Queued)
	}
}

func testRecent(t *testing.T, open Opener) {
	ctx := t.Context()
	s := openStore(t, open, t.TempDir())
	as := Alerts(3, base) // last seen base+1m, +1m1s, +1m2s
	newer := version(as[0], base.Add(time.Hour))
	ds := []alerting.Delivery{delivery("A", as[0], 0), delivery("A", newer, 0), delivery("A", as[1], 0), delivery("B", as[2], 0), delivery("A", as[2], 0)}
	if err := s.Enqueue(ctx, ds); err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue(ctx, []alerting.Delivery{delivery("A", newer, 1)}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Recent(ctx, as[1].LastSeen)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, d := range got {
		keys = append(keys, fmt.Sprintf("%s/%s/%d", d.Receiver, d.Alert.Key, d.Round))
	}
	slices.Sort(keys)
	if want := []string{"A/key-0000/1", "A/key-0001/0", "A/key-0002/0", "B/key-0002/0"}; !slices.Equal(keys, want) {
		t.Errorf("Recent = %v, want %v", keys, want)
	}
	got, _ = s.Recent(ctx, base.Add(2*time.Hour))
	if len(got) != 0 {
		t.Errorf("Recent after every version = %d deliveries, want none", len(got))
	}
}

func testPrune(t *testing.T, open Opener) {
	ctx := t.Context()
	s := openStore(t, open, t.TempDir())
	as := Alerts(4, base)
	var ds []alerting.Delivery
	for _, a := range as {
		ds = append(ds, delivery("A", a, 0))
	}
	if err := s.Enqueue(ctx, ds); err != nil {
		t.Fatal(err)
	}
	// 0 delivered long ago, 1 delivered recently, 2 parked long ago, 3 pending.
	ds[0].State, ds[0].Done = alerting.Delivered, base
	ds[1].State, ds[1].Done = alerting.Delivered, base.Add(48*time.Hour)
	ds[2].State, ds[2].Done = alerting.Failed, base
	if err := s.Update(ctx, ds[:3]); err != nil {
		t.Fatal(err)
	}
	n, err := s.Prune(ctx, base.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("Prune = %d, want 1", n)
	}
	for i, want := range []bool{false, true, true, true} {
		if _, ok, _ := s.Lookup(ctx, ds[i].DeliveryKey); ok != want {
			t.Errorf("after Prune, delivery %d present = %v, want %v", i, ok, want)
		}
	}
	// A forgotten version is new again: retention bounds the dedup.
	again := []alerting.Delivery{delivery("A", as[0], 0)}
	if err := s.Enqueue(ctx, again); err != nil {
		t.Fatal(err)
	}
	if again[0].Seq == 0 {
		t.Error("a version pruned from the outbox was not queued again")
	}
	if n, _ := s.Prune(ctx, base.Add(24*time.Hour)); n != 0 {
		t.Errorf("second Prune = %d, want 0", n)
	}
}

func testReopen(t *testing.T, open Opener) {
	ctx := t.Context()
	dir := t.TempDir()
	s := open(t, dir)
	as := Alerts(3, base)
	ds := []alerting.Delivery{delivery("A", as[0], 0), delivery("A", as[1], 0), delivery("A", as[2], 0)}
	if err := s.Enqueue(ctx, ds); err != nil {
		t.Fatal(err)
	}
	ds[0].State, ds[0].Attempts, ds[0].Done = alerting.Delivered, 1, base
	ds[1].Attempts, ds[1].FirstFailure, ds[1].LastError = 2, base, "timeout"
	if err := s.Update(ctx, ds[:2]); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, open, dir)
	got, err := s.Pending(ctx, "A", 10)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := ids(got), []string{"key-0001", "key-0002"}; !slices.Equal(g, w) {
		t.Fatalf("Pending after reopen = %v, want %v", g, w)
	}
	if got[0].Attempts != 2 || got[0].LastError != "timeout" || !got[0].FirstFailure.Equal(base) {
		t.Errorf("attempt bookkeeping after reopen: %+v", got[0])
	}
	again := []alerting.Delivery{delivery("A", as[0], 0)}
	if err := s.Enqueue(ctx, again); err != nil {
		t.Fatal(err)
	}
	if again[0].Seq != 0 {
		t.Error("a version delivered before the reopen was queued again")
	}
	more := []alerting.Delivery{delivery("B", as[0], 0)}
	if err := s.Enqueue(ctx, more); err != nil {
		t.Fatal(err)
	}
	if more[0].Seq <= ds[2].Seq {
		t.Errorf("Seq after reopen = %d, not after %d: the queue order would break", more[0].Seq, ds[2].Seq)
	}
}

func testConcurrentEnqueue(t *testing.T, open Opener) {
	ctx := t.Context()
	s := openStore(t, open, t.TempDir())
	as := Alerts(200, base)
	const writers = 8
	var wg sync.WaitGroup
	var addedN atomic.Int64
	seqs := make([][]uint64, writers)
	for w := range writers {
		wg.Go(func() {
			// Every writer puts every alert, in batches: each is added once overall.
			for i := 0; i < len(as); i += 25 {
				var ds []alerting.Delivery
				for _, a := range as[i : i+25] {
					ds = append(ds, delivery("A", a, 0))
				}
				if err := s.Enqueue(ctx, ds); err != nil {
					t.Error(err)
					return
				}
				for _, d := range ds {
					if d.Seq != 0 {
						addedN.Add(1)
						seqs[w] = append(seqs[w], d.Seq)
					}
				}
			}
		})
	}
	wg.Wait()
	if n := addedN.Load(); n != int64(len(as)) {
		t.Errorf("%d deliveries added by %d writers, want %d", n, writers, len(as))
	}
	all := slices.Concat(seqs...)
	slices.Sort(all)
	if len(slices.Compact(all)) != len(as) {
		t.Error("two added deliveries share a Seq")
	}
	got, err := s.Pending(ctx, "A", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(as) {
		t.Errorf("Pending = %d deliveries, want %d", len(got), len(as))
	}
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			t.Fatalf("Pending out of queue order at %d: %d after %d", i, got[i].Seq, got[i-1].Seq)
		}
	}
}

// testConfig is a config routing everything to every receiver, with retries fast
// enough for a test that does not sleep.
func testConfig() alerting.Config {
	c := alerting.DefaultConfig()
	c.Outbox.InitialBackoff = time.Millisecond
	c.Outbox.MaxBackoff = 10 * time.Millisecond
	return c
}

func newRouter(t *testing.T, s alerting.OutboxStore, rcvs ...alerting.Receiver) (*alerting.Router, *prometheus.Registry) {
	t.Helper()
	m := map[string]alerting.Receiver{}
	for _, r := range rcvs {
		m[r.Name()] = r
	}
	reg := prometheus.NewPedanticRegistry()
	r, err := alerting.NewRouter(testConfig(), alerting.RouterOptions{Outbox: s, Receivers: m, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return r, reg
}

// running starts r.Run and returns a function that stops it and returns its error.
func running(t *testing.T, r *alerting.Router) func() error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.Run(t.Context()) }()
	return func() error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 30*time.Second)
		defer cancel()
		cerr := r.Close(ctx)
		return errors.Join(cerr, <-done)
	}
}

func flush(t *testing.T, r *alerting.Router) error {
	t.Helper()
	ctx, cancel := context.WithTimeoutCause(t.Context(), 30*time.Second, errors.New("flush took longer than 30s"))
	defer cancel()
	return r.Flush(ctx)
}

// fileLines returns the identities of the alerts in a file receiver's file.
func fileLines(t *testing.T, path string) []Identity {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []Identity
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var a detectors.Alert
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("%s: torn or invalid line %q: %v", path, sc.Text(), err)
		}
		out = append(out, IdentityOf(&a))
	}
	return out
}

func testDedupAcrossRestart(t *testing.T, open Opener) {
	dir := t.TempDir()
	path := filepath.Join(dir, "alerts.jsonl")
	fr, err := file.New("archive", alerting.FileConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fr.Close() })
	rec := NewRecorder("siem")
	as := Alerts(50, base)

	s := open(t, filepath.Join(dir, "outbox"))
	r, _ := newRouter(t, s, fr, rec)
	stop := running(t, r)
	if err := r.Put(t.Context(), as); err != nil {
		t.Fatal(err)
	}
	if err := flush(t, r); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines, calls := len(fileLines(t, path)), len(rec.Identities())
	if lines != len(as) || calls != len(as) {
		t.Fatalf("first run delivered %d lines and %d alerts, want %d each", lines, calls, len(as))
	}

	// A restart, and the same alerts again: a replay from the last committed
	// offset, or `notify` run twice.
	s = openStore(t, open, filepath.Join(dir, "outbox"))
	r, reg := newRouter(t, s, fr, rec)
	stop = running(t, r)
	if err := r.Put(t.Context(), as); err != nil {
		t.Fatal(err)
	}
	if err := flush(t, r); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := len(fileLines(t, path)); got != lines {
		t.Errorf("file has %d lines after the restart, want %d: the same versions were delivered again", got, lines)
	}
	if got := len(rec.Identities()); got != calls {
		t.Errorf("receiver got %d alerts after the restart, want %d", got, calls)
	}
	for _, n := range []string{"archive", "siem"} {
		dup := promtest.Value(t, reg, "gatewatch_alerting_deliveries_duplicate_total", "receiver", n)
		if dup != float64(len(as)) {
			t.Errorf("duplicates counted for %s = %v, want %d", n, dup, len(as))
		}
	}
}

// errCrash is what a crashed outbox answers from the crash on: the process is gone.
var errCrash = errors.New("alertingtest: simulated crash")

// crashing wraps a Store and fails the n-th call of one method (Enqueue, Pending or
// Update) and every call after it, which is what a process that died at that point
// shows: what was committed before stays, nothing after it happens.
type crashing struct {
	Store
	method  string
	left    atomic.Int64
	crashed atomic.Bool
	lost    atomic.Bool // an outcome (after a send) was not recorded
}

func (c *crashing) step(method string) error {
	if c.crashed.Load() {
		return errCrash
	}
	if method == c.method && c.left.Add(-1) == 0 {
		c.crashed.Store(true)
		return errCrash
	}
	return nil
}

func (c *crashing) Enqueue(ctx context.Context, ds []alerting.Delivery) error {
	if err := c.step("Enqueue"); err != nil {
		return err
	}
	return c.Store.Enqueue(ctx, ds)
}

func (c *crashing) Pending(ctx context.Context, receiver string, limit int) ([]alerting.Delivery, error) {
	if err := c.step("Pending"); err != nil {
		return nil, err
	}
	return c.Store.Pending(ctx, receiver, limit)
}

func (c *crashing) Update(ctx context.Context, ds []alerting.Delivery) error {
	if err := c.step("Update"); err != nil {
		c.lost.Store(true)
		return err
	}
	return c.Store.Update(ctx, ds)
}

func (c *crashing) Stats(ctx context.Context) (map[string]alerting.QueueStats, error) {
	if c.crashed.Load() {
		return nil, errCrash
	}
	return c.Store.Stats(ctx)
}

// crashRun is one life of a gatewatch that dies at the n-th call of method: it puts
// the alerts (three Puts, as the engine makes for three batches of events), runs the
// Router until everything is delivered or the outbox is gone, and stops. It reports
// whether the crash happened and whether an outcome was lost to it.
func crashRun(t *testing.T, open Opener, dir, method string, n int64, puts [][]detectors.Alert, rcvs ...alerting.Receiver) (crashed, lost bool) {
	t.Helper()
	c := &crashing{Store: open(t, dir), method: method}
	c.left.Store(n)
	r, _ := newRouter(t, c, rcvs...)
	for _, p := range puts {
		if err := r.Put(t.Context(), p); err != nil {
			break // not durable: the engine does not commit, and raises them again
		}
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(t.Context()) }()
	ferr := flush(t, r)
	closeCtx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	cerr := r.Close(closeCtx)
	cancel()
	runErr := <-done
	crashed = c.crashed.Load()
	if !crashed && (ferr != nil || cerr != nil || runErr != nil) {
		t.Fatalf("%s #%d: a run without a crash failed: flush %v, close %v, run %v", method, n, ferr, cerr, runErr)
	}
	if crashed && runErr != nil && !errors.Is(runErr, errCrash) {
		t.Fatalf("%s #%d: Run returned %v, want the crash", method, n, runErr)
	}
	if err := c.Store.Close(); err != nil {
		t.Fatal(err)
	}
	return crashed, c.lost.Load()
}

// restartRun is the life after the crash: the outbox as the crash left it, the same
// alerts put again (the engine raises them again from the last committed offset),
// everything delivered.
func restartRun(t *testing.T, open Opener, dir string, puts [][]detectors.Alert, rcvs ...alerting.Receiver) {
	t.Helper()
	s := openStore(t, open, dir)
	r, _ := newRouter(t, s, rcvs...)
	stop := running(t, r)
	for _, p := range puts {
		if err := r.Put(t.Context(), p); err != nil {
			t.Fatalf("Put after restart: %v", err)
		}
	}
	if err := flush(t, r); err != nil {
		t.Fatalf("flush after restart: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop after restart: %v", err)
	}
}

// testCrashAtEveryStep stops a Router at every call it makes to the outbox, one
// method at a time: at each Enqueue (before anything is sent), each Pending (before
// a send) and each Update (after a send, before its outcome is recorded). It restarts
// on what the outbox kept, puts the same alerts again and checks that every alert
// reached every receiver at least once, that the idempotent receiver (Slack's
// behaviour) shows each exactly once, and that the file receiver shows a duplicate
// only when an outcome was lost between a send and its record.
func testCrashAtEveryStep(t *testing.T, open Opener) {
	as := Alerts(12, base)
	puts := [][]detectors.Alert{as[:4], as[4:8], as[8:]}
	want := map[Identity]bool{}
	for i := range as {
		want[IdentityOf(&as[i])] = true
	}
	for _, method := range []string{"Enqueue", "Pending", "Update"} {
		crashes := 0
		for n := int64(1); ; n++ {
			dir := t.TempDir()
			path := filepath.Join(dir, "alerts.jsonl")
			fr, err := file.New("archive", alerting.FileConfig{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			slack := NewIdempotent("slack")
			// A batch of 3 makes several Pending and Update calls per receiver.
			small := &sizedIdempotent{slack}
			crashed, lost := crashRun(t, open, filepath.Join(dir, "outbox"), method, n, puts, fr, small)
			restartRun(t, open, filepath.Join(dir, "outbox"), puts, fr, small)
			_ = fr.Close()

			lines := fileLines(t, path)
			count := map[Identity]int{}
			for _, l := range lines {
				count[l]++
			}
			for id := range want {
				if count[id] == 0 {
					t.Errorf("crash at %s #%d: alert %s never reached the file", method, n, id.ID)
				}
			}
			if len(count) != len(want) {
				t.Errorf("crash at %s #%d: the file holds %d distinct alerts, want %d", method, n, len(count), len(want))
			}
			if len(lines) > len(want) && !lost {
				t.Errorf("crash at %s #%d: %d lines for %d alerts: a duplicate without a send whose record was lost",
					method, n, len(lines), len(want))
			}
			kept := map[Identity]int{}
			for _, a := range slack.Kept() {
				kept[IdentityOf(&a)]++
			}
			for id := range want {
				if kept[id] != 1 {
					t.Errorf("crash at %s #%d: the idempotent receiver shows alert %s %d times, want once", method, n, id.ID, kept[id])
				}
			}
			if !crashed {
				break
			}
			crashes++
		}
		if crashes < 3 {
			t.Errorf("only %d crashes in %s: the scenario makes too few calls to cover it", crashes, method)
		}
	}
}

// testCrashAfterSendIsDeduplicated crashes between the first send to an idempotent
// receiver and its record: the restarted Router sends that batch again, with the same
// identities, and the receiver's idempotency key keeps it from showing anything twice.
func testCrashAfterSendIsDeduplicated(t *testing.T, open Opener) {
	as := Alerts(5, base)
	puts := [][]detectors.Alert{as}
	dir := filepath.Join(t.TempDir(), "outbox")
	slack := NewIdempotent("slack")
	crashed, lost := crashRun(t, open, dir, "Update", 1, puts, slack)
	if !crashed || !lost {
		t.Fatalf("crashed %v, lost %v: the first Update did not crash", crashed, lost)
	}
	if n := len(slack.Kept()); n != len(as) {
		t.Fatalf("before the crash the receiver kept %d alerts, want %d", n, len(as))
	}
	restartRun(t, open, dir, puts, slack)
	if got := slack.Dropped(); got != len(as) {
		t.Errorf("the receiver dropped %d deliveries sent again, want %d (the batch whose record the crash lost)", got, len(as))
	}
	if n := len(slack.Kept()); n != len(as) {
		t.Errorf("the receiver shows %d alerts, want each of the %d once", n, len(as))
	}
}

// sizedIdempotent is an Idempotent that takes 3 alerts a call.
type sizedIdempotent struct{ *Idempotent }

func (sizedIdempotent) MaxBatch() int { return 3 }

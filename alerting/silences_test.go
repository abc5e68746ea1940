package alerting_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/detectors"
)

// TestRuntimeSilences: a silence made while running mutes the next alert at once, in
// every Router that shares the Silences (a reload's), survives a restart through its
// store, and stops muting when expired early.
func TestRuntimeSilences(t *testing.T) {
	ctx := context.Background()
	clk := &testClock{now: t0}
	st := alertingtest.NewAnalystStore()
	sil, err := alerting.OpenSilences(ctx, st, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	newRouter := func() *alerting.Router {
		r, err := alerting.NewRouter(testCfg("archive"), alerting.RouterOptions{Outbox: alerting.NewMemoryOutbox(),
			Receivers: map[string]alerting.Receiver{"archive": alertingtest.NewRecorder("archive")}, Registerer: prometheus.NewPedanticRegistry(),
			Now: clk.Now, Silences: sil})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	before, after := newRouter(), newRouter() // the router in force, and the one a reload builds
	scanner := alertOf(detectors.ForbiddenBurst, detectors.SeverityMedium, "scanner-key", nil)
	other := alertOf(detectors.ForbiddenBurst, detectors.SeverityMedium, "key-2", nil)
	if before.Silenced(scanner) {
		t.Fatal("muted before any silence")
	}
	rec, err := sil.Create(ctx, alerting.SilenceRecord{Match: alerting.Matcher{Key: []string{"scanner-key"}},
		Expires: t0.Add(time.Hour), Comment: "pentest SEC-42", CreatedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if n := sil.InForce(); n != 1 {
		t.Errorf("InForce() = %d with one silence, want 1", n)
	}
	for name, r := range map[string]*alerting.Router{"router in force": before, "reloaded router": after} {
		if !r.Silenced(scanner) || r.Silenced(other) {
			t.Errorf("%s: scanner muted %v (want true), other key muted %v (want false)", name, r.Silenced(scanner), r.Silenced(other))
		}
	}
	// A restart loads it from the store.
	again, err := alerting.OpenSilences(ctx, st, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := again.Get(rec.ID); !ok || got.CreatedBy != "alice" || got.Describe() != "key=scanner-key" {
		t.Errorf("after a restart: %+v, %v", got, ok)
	}
	clk.Set(t0.Add(10 * time.Minute))
	if _, err := sil.Expire(ctx, rec.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if before.Silenced(scanner) {
		t.Error("still muted after the silence was expired")
	}
	if n := sil.InForce(); n != 0 {
		t.Errorf("InForce() = %d once the silence was expired, want 0", n)
	}
	l := sil.List()
	if len(l) != 1 || l[0].ExpiredBy != "bob" || !l[0].Expires.Equal(t0.Add(10*time.Minute)) {
		t.Errorf("List() = %+v, want the expired silence with who ended it", l)
	}
	if _, err := sil.Expire(ctx, "nope", "bob"); !errors.Is(err, alerting.ErrSilenceNotFound) {
		t.Errorf("Expire(unknown) = %v", err)
	}
}

func TestSilenceChecks(t *testing.T) {
	ctx := context.Background()
	clk := &testClock{now: t0}
	sil, err := alerting.OpenSilences(ctx, alertingtest.NewAnalystStore(), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	good := alerting.SilenceRecord{Match: alerting.Matcher{Key: []string{"k"}}, Expires: t0.Add(time.Hour), Comment: "why", CreatedBy: "alice"}
	for _, c := range []struct {
		name string
		edit func(r *alerting.SilenceRecord)
		want string
	}{
		{"empty matcher", func(r *alerting.SilenceRecord) { r.Match = alerting.Matcher{} }, "must match something"},
		{"in the past", func(r *alerting.SilenceRecord) { r.Expires = t0.Add(-time.Second) }, "in the future"},
		{"too long", func(r *alerting.SilenceRecord) { r.Expires = t0.Add(365 * 24 * time.Hour) }, "at most"},
		{"no comment", func(r *alerting.SilenceRecord) { r.Comment = " " }, "comment"},
		{"no author", func(r *alerting.SilenceRecord) { r.CreatedBy = "" }, "author"},
		{"unknown detector", func(r *alerting.SilenceRecord) { r.Match.Detector = []string{"nope"} }, "unknown detector"},
	} {
		r := good
		c.edit(&r)
		if _, err := sil.Create(ctx, r); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Create = %v, want an error saying %q", c.name, err, c.want)
		}
	}
	// The same id twice is one silence: a repeated request changes nothing.
	r := good
	r.ID = "slack-1"
	first, err := sil.Create(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	clk.Set(t0.Add(time.Minute))
	r.Comment = "again"
	second, err := sil.Create(ctx, r)
	if err != nil || second.Comment != first.Comment || !second.Created.Equal(first.Created) {
		t.Errorf("Create with the same id = %+v, %v; want the first %+v", second, err, first)
	}
	if n := len(sil.List()); n != 1 {
		t.Errorf("%d silences, want 1", n)
	}
}

func TestAcks(t *testing.T) {
	ctx := context.Background()
	clk := &testClock{now: t0}
	st := alertingtest.NewAnalystStore()
	acks, err := alerting.OpenAcks(ctx, st, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	a, isNew, err := acks.Acknowledge(ctx, "id-1", "slack:U1", "slack")
	if err != nil || !isNew || a.By != "slack:U1" {
		t.Fatalf("Acknowledge = %+v, %v, %v", a, isNew, err)
	}
	clk.Set(t0.Add(time.Minute))
	b, isNew, err := acks.Acknowledge(ctx, "id-1", "alice", "console")
	if err != nil || isNew || b != a {
		t.Errorf("second Acknowledge = %+v, %v, %v; want the first one to stand", b, isNew, err)
	}
	again, err := alerting.OpenAcks(ctx, st, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := again.Ack("id-1"); !ok || got.By != "slack:U1" {
		t.Errorf("after a restart Ack = %+v, %v", got, ok)
	}
	st.Fail = errors.New("disk full")
	if _, _, err := acks.Acknowledge(ctx, "id-2", "alice", "console"); err == nil {
		t.Error("an acknowledgement the store refused was taken")
	}
	if _, ok := acks.Ack("id-2"); ok {
		t.Error("an acknowledgement the store refused is shown")
	}
}

// TestSilencesAcrossReplicas: replicas sharing one store see each other's silences,
// expiries and acknowledgements once they Load again, whatever their clocks say: an
// expiry made on a replica whose clock is behind the creator's still ends the silence.
func TestSilencesAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	st := alertingtest.NewAnalystStore()
	clkA, clkB := &testClock{now: t0}, &testClock{now: t0.Add(-2 * time.Second)} // B's clock is behind
	open := func(clk *testClock) (*alerting.Silences, *alerting.Acks) {
		sil, err := alerting.OpenSilences(ctx, st, clk.Now)
		if err != nil {
			t.Fatal(err)
		}
		acks, err := alerting.OpenAcks(ctx, st, clk.Now)
		if err != nil {
			t.Fatal(err)
		}
		return sil, acks
	}
	silA, acksA := open(clkA)
	silB, acksB := open(clkB)
	scanner := alertOf(detectors.ForbiddenBurst, detectors.SeverityMedium, "scanner-key", nil)
	rec, err := silA.Create(ctx, alerting.SilenceRecord{Match: alerting.Matcher{Key: []string{"scanner-key"}},
		Expires: t0.Add(time.Hour), Comment: "pentest SEC-42", CreatedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := silB.Muting(&scanner, clkB.Now()); ok {
		t.Fatal("B mutes before it loaded the silence: the test proves nothing")
	}
	if err := silB.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := silB.Muting(&scanner, clkB.Now()); !ok {
		t.Error("B does not mute after loading A's silence")
	}
	clkA.Set(t0.Add(time.Second))
	clkB.Set(t0.Add(-time.Second)) // a second after A made it, by B's clock before
	if _, err := silB.Expire(ctx, rec.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := silA.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if s, ok := silA.Muting(&scanner, clkA.Now()); ok {
		t.Errorf("A still mutes after B expired the silence and A loaded: %+v", s)
	}
	if got, _ := silA.Get(rec.ID); got.ExpiredBy != "bob" {
		t.Errorf("A shows %+v, want the silence ended by bob", got)
	}

	if _, _, err := acksA.Acknowledge(ctx, "id-1", "alice", "console"); err != nil {
		t.Fatal(err)
	}
	if _, ok := acksB.Ack("id-1"); ok {
		t.Fatal("B shows the acknowledgement before it loaded: the test proves nothing")
	}
	if err := acksB.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got, ok := acksB.Ack("id-1"); !ok || got.By != "alice" {
		t.Errorf("B after loading: %+v, %v; want alice's acknowledgement", got, ok)
	}
}

// TestSilenceLoadKeepsWritesInFlight: a Load while a Create is still writing its
// silence to the store drops nothing: the silence is in force once Create returns.
func TestSilenceLoadKeepsWritesInFlight(t *testing.T) {
	ctx := context.Background()
	st := &slowSaves{AnalystStore: alertingtest.NewAnalystStore(), saving: make(chan struct{}), release: make(chan struct{})}
	sil, err := alerting.OpenSilences(ctx, st, func() time.Time { return t0 })
	if err != nil {
		t.Fatal(err)
	}
	created := make(chan error, 1)
	go func() {
		_, err := sil.Create(ctx, alerting.SilenceRecord{ID: "s1", Match: alerting.Matcher{Key: []string{"k"}},
			Expires: t0.Add(time.Hour), Comment: "why", CreatedBy: "alice"})
		created <- err
	}()
	<-st.saving
	if err := sil.Load(ctx); err != nil { // the store has not got it yet
		t.Fatal(err)
	}
	close(st.release)
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	if err := sil.Load(ctx); err != nil {
		t.Fatal(err)
	}
	a := alertOf(detectors.ForbiddenBurst, detectors.SeverityMedium, "k", nil)
	if _, ok := sil.Muting(&a, t0); !ok {
		t.Error("the silence created while a Load ran does not mute")
	}
}

// slowSaves holds every SaveSilence until release is closed, saying so on saving.
type slowSaves struct {
	*alertingtest.AnalystStore
	saving, release chan struct{}
}

func (s *slowSaves) SaveSilence(ctx context.Context, r alerting.SilenceRecord) error {
	s.saving <- struct{}{}
	<-s.release
	return s.AnalystStore.SaveSilence(ctx, r)
}

// TestAckLoadsAreIncremental: after the first Load (30 days), each reads only from
// shortly before the previous one began, so a replica re-reading every few seconds
// does not read a month each time, yet picks up an acknowledgement stamped by a clock
// behind its own.
func TestAckLoadsAreIncremental(t *testing.T) {
	ctx := context.Background()
	clk := &testClock{now: t0}
	st := &sinceLog{AnalystStore: alertingtest.NewAnalystStore()}
	acks, err := alerting.OpenAcks(ctx, st, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	clk.Set(t0.Add(5 * time.Second))
	// Made on a replica whose clock is a minute behind, written after the first load.
	if err := st.SaveAck(ctx, alerting.Ack{ID: "id-1", By: "bob", At: t0.Add(-time.Minute), Via: "console"}); err != nil {
		t.Fatal(err)
	}
	if err := acks.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := acks.Ack("id-1"); !ok {
		t.Error("the acknowledgement stamped by a clock behind is not loaded")
	}
	want := []time.Time{t0.Add(-30 * 24 * time.Hour), t0.Add(-5 * time.Minute)}
	if len(st.since) != 2 || !st.since[0].Equal(want[0]) || !st.since[1].Equal(want[1]) {
		t.Errorf("loads read since %v, want %v", st.since, want)
	}
}

// sinceLog records the since of every LoadAcks.
type sinceLog struct {
	*alertingtest.AnalystStore
	since []time.Time
}

func (s *sinceLog) LoadAcks(ctx context.Context, since time.Time) ([]alerting.Ack, error) {
	s.since = append(s.since, since)
	return s.AnalystStore.LoadAcks(ctx, since)
}

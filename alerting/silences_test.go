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

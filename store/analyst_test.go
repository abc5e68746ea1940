package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// auditLog is the audit side of both stores.
type auditLog interface {
	RecordAudit(ctx context.Context, e AuditEntry) error
	Audit(ctx context.Context, limit int) ([]AuditEntry, error)
}

// testAnalyst checks a store's silences (latest version wins, whatever the order of
// the writes), acknowledgements (the first stands) and audit log (newest first).
func testAnalyst(t *testing.T, st interface {
	alerting.SilenceStore
	alerting.AckStore
}, audit auditLog) {
	ctx := testContext(t)
	s1 := alerting.SilenceRecord{ID: "s1", Match: alerting.Matcher{Key: []string{"k1"}}, Comment: "pentest", CreatedBy: "alice",
		Created: h0, Expires: h0.Add(time.Hour), Updated: h0}
	ended := s1
	ended.Expires, ended.ExpiredBy, ended.Updated = h0.Add(10*time.Minute), "bob", h0.Add(10*time.Minute)
	s2 := alerting.SilenceRecord{ID: "s2", Match: alerting.Matcher{Detector: []string{"token_reuse"}, Labels: map[string]string{"env": "staging"}},
		Comment: "staging", CreatedBy: "slack:U1", Created: h0, Expires: h0.Add(24 * time.Hour), Updated: h0}
	for _, r := range []alerting.SilenceRecord{ended, s1, s2} { // the later version first
		if err := st.SaveSilence(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.LoadSilences(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]alerting.SilenceRecord{}
	for _, r := range got {
		byID[r.ID] = r
	}
	if len(got) != 2 || byID["s1"].ExpiredBy != "bob" || !byID["s1"].Expires.Equal(ended.Expires) || byID["s2"].Match.Labels["env"] != "staging" {
		t.Errorf("LoadSilences = %+v, want s1 as bob ended it and s2", got)
	}

	first := alerting.Ack{ID: "a1", By: "slack:U1", At: h0.Add(time.Minute), Via: "slack"}
	for _, a := range []alerting.Ack{first, {ID: "a1", By: "alice", At: h0.Add(2 * time.Minute), Via: "console"},
		{ID: "a2", By: "alice", At: h0.Add(-48 * time.Hour), Via: "console"}} {
		if err := st.SaveAck(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	acks, err := st.LoadAcks(ctx, h0.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(acks) != 1 || acks[0].By != first.By || !acks[0].At.Equal(first.At) || acks[0].Via != "slack" {
		t.Errorf("LoadAcks = %+v, want the first acknowledgement of a1 alone (a2 is older than since)", acks)
	}

	for i, e := range []AuditEntry{
		{At: h0, Who: "alice", Action: "silence.create", Object: "s1", Detail: "key=k1 until ..."},
		{At: h0.Add(time.Second), Who: "bob", Action: "silence.expire", Object: "s1"},
		{At: h0.Add(2 * time.Second), Who: "slack:U1", Action: "ack", Object: "a1"},
	} {
		if err := audit.RecordAudit(ctx, e); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	log, err := audit.Audit(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) != 2 || log[0].Action != "ack" || log[1].Who != "bob" || !log[0].At.Equal(h0.Add(2*time.Second)) {
		t.Errorf("Audit(2) = %+v, want the two newest, newest first", log)
	}
}

func TestLocalAnalyst(t *testing.T) {
	l := newTestLocal(t, Config{DataDir: t.TempDir()})
	testAnalyst(t, l, l)
	testReplicas(t, l, l)
}

func TestClickHouseAnalyst(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	c := startClickHouse(t, testConfig(t, addr, db), prometheus.NewRegistry())
	testAnalyst(t, c, c)
	// Two replicas of a cluster: each its own client of one database.
	db = clickhousetest.NewDatabase(t, addr)
	testReplicas(t, startClickHouse(t, testConfig(t, addr, db), nil), startClickHouse(t, testConfig(t, addr, db), nil))
}

// analystStore is what a replica keeps its silences and acknowledgements in.
type analystStore interface {
	alerting.SilenceStore
	alerting.AckStore
}

// testReplicas: two replicas over one store (a and b are their clients of it) see the
// silences, expiries and acknowledgements of each other once they load again, as the
// pipeline does every few seconds.
func testReplicas(t *testing.T, a, b analystStore) {
	ctx := testContext(t)
	now := func() time.Time { return h0 }
	type replica struct {
		sil  *alerting.Silences
		acks *alerting.Acks
	}
	open := func(st analystStore) replica {
		sil, err := alerting.OpenSilences(ctx, st, now)
		if err != nil {
			t.Fatal(err)
		}
		acks, err := alerting.OpenAcks(ctx, st, now)
		if err != nil {
			t.Fatal(err)
		}
		return replica{sil, acks}
	}
	ra, rb := open(a), open(b)
	load := func(r replica) {
		t.Helper()
		if err := errors.Join(r.sil.Load(ctx), r.acks.Load(ctx)); err != nil {
			t.Fatal(err)
		}
	}
	alert := detectors.Alert{Detector: detectors.ForbiddenBurst, Severity: detectors.SeverityHigh, Key: "k-replicas"}
	rec, err := ra.sil.Create(ctx, alerting.SilenceRecord{Match: alerting.Matcher{Key: []string{alert.Key}},
		Expires: h0.Add(time.Hour), Comment: "pentest", CreatedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rb.sil.Muting(&alert, h0); ok {
		t.Fatal("B mutes before loading")
	}
	load(rb)
	if _, ok := rb.sil.Muting(&alert, h0); !ok {
		t.Error("B does not mute after loading the silence A made")
	}
	if _, err := rb.sil.Expire(ctx, rec.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rb.acks.Acknowledge(ctx, "alert-replicas", "bob", "console"); err != nil {
		t.Fatal(err)
	}
	load(ra)
	if s, ok := ra.sil.Muting(&alert, h0); ok {
		t.Errorf("A still mutes after B expired the silence: %+v", s)
	}
	if got, ok := ra.acks.Ack("alert-replicas"); !ok || got.By != "bob" {
		t.Errorf("A shows the acknowledgement B made as %+v, %v", got, ok)
	}
}

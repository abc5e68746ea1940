package slack

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// memThreadStore is a ThreadStore in memory, the largest version winning as in
// ClickHouse; fail makes every call fail.
type memThreadStore struct {
	mu    sync.Mutex
	rows  map[string]memThread
	fail  bool
	calls int
}

type memThread struct {
	thread  string
	version uint64
}

func (m *memThreadStore) SlackThread(_ context.Context, receiver, id string) (string, uint64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.fail {
		return "", 0, false, errors.New("connection refused")
	}
	r, ok := m.rows[receiver+"\x00"+id]
	return r.thread, r.version, ok, nil
}

func (m *memThreadStore) SaveSlackThread(_ context.Context, receiver, id, thread string, version uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.fail {
		return errors.New("connection refused")
	}
	if m.rows == nil {
		m.rows = map[string]memThread{}
	}
	if r, ok := m.rows[receiver+"\x00"+id]; !ok || version > r.version {
		m.rows[receiver+"\x00"+id] = memThread{thread, version}
	}
	return nil
}

// replica builds the Slack receiver of one replica of a cluster: its own thread file
// (wrapped by wrap, to crash it) under dir, and the store every replica shares.
func (e *env) replica(t *testing.T, dir string, s ThreadStore, wrap func(*ThreadFile) Threads) (*Receiver, *sharedThreads) {
	t.Helper()
	f, err := OpenThreadFile(filepath.Join(dir, "slack-threads.json"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	sh := Shared(wrap(f), s, "soc-slack", nil).(*sharedThreads)
	r, err := New("soc-slack", e.cfg, Options{Threads: sh, ReplayCommand: testReplay, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	return r, sh
}

func asIs(f *ThreadFile) Threads { return f }

// TestSharedThreadsHandover: an incident whose task moves to another replica goes on in
// the message the first replica posted, whether that replica recorded the thread or
// was killed between Slack taking the post and recording it; the same holds for a
// group message, and for an incident that moves back.
func TestSharedThreadsHandover(t *testing.T) {
	v := versionsOf(t, detectors.TokenReuse)
	if len(v) < 3 {
		t.Fatalf("testdata has %d versions of a token_reuse incident, want 3", len(v))
	}
	for _, tc := range []struct {
		name        string
		wrapA       func(*ThreadFile) Threads
		steps       [][]detectors.Alert // delivered by A, B, A, ... in turn
		wantEdits   int
		wantReplies int
		wantHistory int // conversations.history calls: only to settle an intent
	}{
		{"moved after the post", asIs, [][]detectors.Alert{v[:1], v[1:2]}, 1, 1, 0},
		{"moved after the post, redelivered there", asIs, [][]detectors.Alert{v[:1], v[:2]}, 1, 1, 0},
		{"moved and back", asIs, [][]detectors.Alert{v[:1], v[1:2], v[2:3]}, 2, 2, 0},
		{"killed after the post, moved", func(f *ThreadFile) Threads { return killedAfterPost{f} }, [][]detectors.Alert{v[:1], v[:2]}, 1, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			s := &memThreadStore{}
			a, _ := e.replica(t, t.TempDir(), s, tc.wrapA)
			b, _ := e.replica(t, t.TempDir(), s, asIs)
			if retry, err := a.Notify(context.Background(), tc.steps[0]); err != nil && !retry {
				t.Fatalf("replica A: Notify = (%v, %v)", retry, err)
			}
			for i, step := range tc.steps[1:] {
				notify(t, []*Receiver{b, a}[i%2], step...)
			}
			msgs := incidentMessages(t, e.srv, v[0].ID)
			if len(msgs) != 1 {
				t.Fatalf("the incident has %d top-level messages, want 1", len(msgs))
			}
			if msgs[0].Edits != tc.wantEdits {
				t.Errorf("its message was edited %d times, want %d", msgs[0].Edits, tc.wantEdits)
			}
			if n := len(replies(e.srv, msgs[0].TS)); n != tc.wantReplies {
				t.Errorf("its thread holds %d replies, want %d", n, tc.wantReplies)
			}
			if n := len(e.srv.Calls("conversations.history")); n != tc.wantHistory {
				t.Errorf("%d conversations.history calls, want %d", n, tc.wantHistory)
			}
		})
	}

	t.Run("group", func(t *testing.T) {
		e := newEnv(t)
		s := &memThreadStore{}
		a, _ := e.replica(t, t.TempDir(), s, asIs)
		b, _ := e.replica(t, t.TempDir(), s, asIs)
		alerts := stormAlerts(5)
		g := alerting.Group{Key: "g-moved", Labels: map[string]string{"detector": detectors.ForbiddenBurst}, Alerts: alerts[:3]}
		notifyGroup(t, a, g)
		g.Alerts = alerts[3:]
		notifyGroup(t, b, g)
		msgs := e.srv.Messages()
		if len(msgs) != 2 || msgs[0].Edits != 1 || msgs[1].ThreadTS != msgs[0].TS {
			t.Fatalf("after the group moved the channel holds %d messages, want the group message edited once and a reply in its thread", len(msgs))
		}
	})
}

// TestSharedThreadsDown: while the shared store fails, deliveries go on with the
// replica's own threads (a failure costs one call, then the store rests for
// sharedPause), and once it answers again a state it missed does not make the
// replica post a version twice.
func TestSharedThreadsDown(t *testing.T) {
	v := versionsOf(t, detectors.TokenReuse)
	e := newEnv(t)
	s := &memThreadStore{}
	r, sh := e.replica(t, t.TempDir(), s, asIs)
	now := time.Unix(1_800_000_000, 0)
	sh.now = func() time.Time { return now }

	notify(t, r, v[0]) // the store has the thread
	s.fail = true
	calls := s.calls
	notify(t, r, v[1]) // updated with the local thread
	notify(t, r, v[1])
	if n := s.calls - calls; n != 1 {
		t.Errorf("the failing store was called %d times within its pause, want 1", n)
	}
	s.fail = false
	now = now.Add(sharedPause)
	notify(t, r, v[1]) // the store is behind: the local state stands, nothing is posted
	msgs := incidentMessages(t, e.srv, v[0].ID)
	if len(msgs) != 1 || msgs[0].Edits != 1 {
		t.Fatalf("the incident has %d top-level messages, want 1, edited once", len(msgs))
	}
	if n := len(replies(e.srv, msgs[0].TS)); n != 1 {
		t.Errorf("its thread holds %d replies, want 1: the store's stale state made a version post twice", n)
	}
	if s.calls == calls+1 {
		t.Error("the store was not used again after its pause")
	}
}

// TestSharedVersions: a write is versioned above every version read, so a replica
// whose clock is behind the one that wrote before it still supersedes that write.
func TestSharedVersions(t *testing.T) {
	s := &memThreadStore{}
	replica := func(clock int64) *sharedThreads {
		f, err := OpenThreadFile(filepath.Join(t.TempDir(), "threads.json"), 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		sh := Shared(f, s, "r", nil).(*sharedThreads)
		sh.now = func() time.Time { return time.Unix(clock, 0) }
		return sh
	}
	ahead, behind := replica(2_000_000_000), replica(1_000_000_000)

	if err := ahead.Put("x", Thread{Channel: "C1", TS: "1.1"}); err != nil {
		t.Fatal(err)
	}
	th, _, err := behind.Get("x")
	if err != nil {
		t.Fatal(err)
	}
	th.Reminder = 1
	if err := behind.Put("x", th); err != nil {
		t.Fatal(err)
	}
	got, ok, err := ahead.Get("x")
	if err != nil || !ok || got.Reminder != 1 {
		t.Errorf("Get after the slower clock's write = (%+v, %v, %v), want its reminder 1", got, ok, err)
	}
}

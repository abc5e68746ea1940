package slack

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// A ThreadStore keeps threads where every replica of a cluster reads them, as JSON with
// a version, the largest version winning; store.ClickHouse implements it.
type ThreadStore interface {
	SlackThread(ctx context.Context, receiver, id string) (thread string, version uint64, ok bool, err error)
	SaveSlackThread(ctx context.Context, receiver, id, thread string, version uint64) error
}

// Bounds of the calls to a ThreadStore: it is consulted on every delivery, so while it
// is slow or down the receiver does without it rather than hold pages back.
const (
	sharedTimeout = 5 * time.Second
	sharedPause   = 30 * time.Second // after a failure, how long local threads alone are used
)

// Shared returns the Threads of receiver in a cluster: local (its ThreadFile) backed by
// s, which every replica reads. In a cluster an incident's task moves between replicas
// with its open incidents, and the replica that takes it has no thread of it in its
// own data directory: without s, the next version would be posted as a second
// top-level message with the same id. With s, it finds the thread (or the intent of a
// post, which it then looks up in the channel history as after a crash) and goes on
// in it.
//
// s is the truth, read on every Get, since another replica may have moved the
// incident on; local answers when s fails or is behind it (a Put that s did not
// take). A failing s never fails a delivery: it is logged when it starts and stops
// failing, and skipped for sharedPause after each failure. The cost of s down is a
// possible second message for an incident that moves meanwhile, not a page held back.
func Shared(local Threads, s ThreadStore, receiver string, log *slog.Logger) Threads {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &sharedThreads{local: local, store: s, receiver: receiver, log: log, now: time.Now}
}

type sharedThreads struct {
	local    Threads
	store    ThreadStore
	receiver string
	log      *slog.Logger
	now      func() time.Time

	mu          sync.Mutex
	last        uint64    // the newest version written or read
	pausedUntil time.Time // zero: s is in use
	failing     bool
}

func (t *sharedThreads) Get(id string) (Thread, bool, error) {
	th, ok, err := t.local.Get(id)
	if err != nil {
		return th, ok, err
	}
	if !t.usable() {
		return th, ok, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	js, v, found, err := t.store.SlackThread(ctx, t.receiver, id)
	var shared Thread
	if err == nil && found {
		err = json.Unmarshal([]byte(js), &shared)
	}
	t.result(err)
	switch {
	case err != nil || !found:
		return th, ok, nil
	case ok && ahead(th, shared):
		return th, ok, nil
	}
	t.observe(v)
	return shared, true, nil
}

func (t *sharedThreads) Put(id string, th Thread) error {
	if err := t.local.Put(id, th); err != nil {
		return err
	}
	if !t.usable() {
		return nil
	}
	b, err := json.Marshal(&th)
	if err != nil {
		return fmt.Errorf("encode the thread of %s: %w", id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	t.result(t.store.SaveSlackThread(ctx, t.receiver, id, string(b), t.next()))
	return nil
}

// ahead reports whether the local state l has been taken further than the shared one
// s: s missed a Put (it was down), so l knows the message or a later version of it.
func ahead(l, s Thread) bool {
	switch {
	case l.TS == "":
		return false
	case s.TS == "":
		return true
	case !l.LastSeen.Equal(s.LastSeen):
		return l.LastSeen.After(s.LastSeen)
	case l.Reminder != s.Reminder:
		return l.Reminder > s.Reminder
	}
	return len(l.Members)+l.More > len(s.Members)+s.More
}

// next returns the version of a write: the clock in nanoseconds, but above every
// version written or read, so that a write follows what it was based on even when
// this replica's clock is behind the one that wrote before it.
func (t *sharedThreads) next() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last = max(uint64(max(t.now().UnixNano(), 0)), t.last+1)
	return t.last
}

func (t *sharedThreads) observe(v uint64) {
	t.mu.Lock()
	t.last = max(t.last, v)
	t.mu.Unlock()
}

func (t *sharedThreads) usable() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pausedUntil.IsZero() || !t.now().Before(t.pausedUntil)
}

// result records the outcome of a call to the store, logging a change of state.
func (t *sharedThreads) result(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		if t.failing {
			t.log.Info("the shared slack threads answer again")
		}
		t.failing, t.pausedUntil = false, time.Time{}
		return
	}
	if !t.failing {
		t.log.Warn("the shared slack threads fail; using this replica's own until they answer (an incident moved meanwhile may get a second message)",
			"err", err, "retry_in", sharedPause)
	}
	t.failing, t.pausedUntil = true, t.now().Add(sharedPause)
}

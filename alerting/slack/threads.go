package slack

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

// A Thread is where an incident lives in Slack: the parent message that the first
// version posted, and the newest version (and reminder of it) already shown there.
type Thread struct {
	Channel  string    `json:"channel"`   // channel id, as Slack answered the first post
	TS       string    `json:"ts"`        // the parent message; empty in webhook mode and in an intent
	LastSeen time.Time `json:"last_seen"` // LastSeen of the newest version posted
	// Reminder is the number of the newest reminder posted of that version (the
	// alerting.ReminderLabel label); 0: none.
	Reminder int `json:"reminder,omitempty"`
	// Posting, set while TS is empty, is an intent: when the receiver was about to
	// post this as a new top-level message (its clock, UTC). A crash after Slack took
	// the post and before its TS was recorded leaves it; the next delivery then looks
	// for the message in the channel history around this time before posting.
	Posting time.Time `json:"posting,omitzero"`
	// Members are the incidents a group message lists (the thread of a group, kept
	// under "group:" and the group key), in the order they joined; More counts those
	// beyond maxGroupMembers, which are counted but not kept.
	Members []Member          `json:"members,omitempty"`
	More    int               `json:"more,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"` // the group's shared values
}

// A Member is an incident as a group message lists it: enough to draw its line
// without the alert.
type Member struct {
	ID        string             `json:"id"`
	Detector  string             `json:"detector"`
	Severity  detectors.Severity `json:"severity"`
	Key       string             `json:"key"`
	Summary   string             `json:"summary"`
	FirstSeen time.Time          `json:"first_seen"`
	LastSeen  time.Time          `json:"last_seen"`
	Runbook   string             `json:"runbook,omitempty"`
}

// Threads keeps a Thread per alert id across restarts, so a later version of an
// incident lands in the incident's thread and a version already posted is not posted
// again. *ThreadFile implements it.
type Threads interface {
	Get(id string) (th Thread, ok bool, err error)
	Put(id string, th Thread) error
}

// DefaultThreadRetention is how long a ThreadFile keeps an incident that has had no new
// version, counted in event time from the newest version it stores.
const DefaultThreadRetention = 30 * 24 * time.Hour

// ThreadFile is a Threads kept in memory and in an append-only file of JSON lines: a
// header, then one line per Put, the last line of an id winning. A Put appends its line
// and fsyncs it, a cost that does not grow with the number of incidents. A crash can
// tear only the last line, which the next open drops: that Put had not returned.
//
// The file is compacted (the live entries written to a temporary file, fsynced and
// renamed over it) when it is opened and whenever it holds twice as many lines as live
// entries, so it stays about as small as the set of recent incidents. Entries whose
// LastSeen is older than the retention (before the newest LastSeen stored) are dropped
// then, and are not returned meanwhile; event time is used, not the clock, so that a
// replay through `gatewatch notify` ages entries the same way.
type ThreadFile struct {
	path      string
	retention time.Duration

	mu      sync.Mutex
	threads map[string]Thread
	newest  time.Time
	f       *os.File // the file, opened for appending
	lines   int      // entry lines in the file
}

// threadHeader is the file's first line; Version lets a later gatewatch migrate it.
type threadHeader struct {
	Version int `json:"version"`
}

// threadLine is one Put.
type threadLine struct {
	ID string `json:"id"`
	Thread
}

// threadFileJSON is version 1 of the file: one JSON object, rewritten on every Put.
// OpenThreadFile reads it once and writes version 2.
type threadFileJSON struct {
	Version int               `json:"version"`
	Threads map[string]Thread `json:"threads"`
}

const threadFileVersion = 2

// minCompactLines is how many entry lines the file may hold before it is compacted,
// however few are live.
const minCompactLines = 1024

// OpenThreadFile loads path, or starts empty when it does not exist yet, and compacts
// it. retention 0 means DefaultThreadRetention. Close it when done.
func OpenThreadFile(path string, retention time.Duration) (*ThreadFile, error) {
	if retention <= 0 {
		retention = DefaultThreadRetention
	}
	f := &ThreadFile{path: path, retention: retention, threads: map[string]Thread{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("slack: read thread state: %w", err)
	default:
		if err := f.load(b); err != nil {
			return nil, fmt.Errorf("slack: thread state %s: %w", path, err)
		}
	}
	if err := f.compact(); err != nil {
		return nil, err
	}
	return f, nil
}

// load reads the file's content: version 2 lines, or the version 1 object.
func (f *ThreadFile) load(b []byte) error {
	first, rest, _ := bytes.Cut(b, []byte("\n"))
	var v1 threadFileJSON
	if json.Unmarshal(b, &v1) == nil && v1.Version == 1 {
		for id, th := range v1.Threads {
			f.set(id, th)
		}
		return nil
	}
	var h threadHeader
	dec := json.NewDecoder(bytes.NewReader(first))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil || h.Version != threadFileVersion {
		return fmt.Errorf("not a version %d thread file (header %.40q)", threadFileVersion, first)
	}
	lines := bytes.Split(rest, []byte("\n"))
	for i, line := range lines {
		last := i == len(lines)-1 // after the final newline: empty, or a torn line
		var l threadLine
		if err := json.Unmarshal(line, &l); err != nil || l.ID == "" {
			if last {
				break // nothing, or the torn line of a Put that did not return
			}
			return fmt.Errorf("line %d is not a thread entry", i+2)
		}
		f.set(l.ID, l.Thread)
	}
	return nil
}

// set records th for id in memory.
func (f *ThreadFile) set(id string, th Thread) {
	f.threads[id] = th
	if th.LastSeen.After(f.newest) {
		f.newest = th.LastSeen
	}
}

// expired reports whether th is older than the retention.
func (f *ThreadFile) expired(th Thread) bool {
	return th.LastSeen.Before(f.newest.Add(-f.retention))
}

// Get returns the thread of alert id.
func (f *ThreadFile) Get(id string) (Thread, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	th, ok := f.threads[id]
	if ok && f.expired(th) {
		return Thread{}, false, nil
	}
	return th, ok, nil
}

// Put records th for alert id and appends it to the file. The entry is in memory even
// when writing fails, so this process does not post the version again; the next
// compaction writes it out.
func (f *ThreadFile) Put(id string, th Thread) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set(id, th)
	if f.f == nil {
		return errors.New("slack: thread state: closed")
	}
	line, err := json.Marshal(threadLine{ID: id, Thread: th})
	if err != nil {
		return fmt.Errorf("slack: encode thread state: %w", err)
	}
	if _, err := f.f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("slack: write thread state: %w", err)
	}
	if err := f.f.Sync(); err != nil {
		return fmt.Errorf("slack: write thread state: %w", err)
	}
	f.lines++
	if f.lines > max(minCompactLines, 2*len(f.threads)) {
		return f.compact()
	}
	return nil
}

// compact drops expired entries and replaces the file with the live ones, then opens
// it for appending.
func (f *ThreadFile) compact() error {
	for id, th := range f.threads {
		if f.expired(th) {
			delete(f.threads, id)
		}
	}
	var b bytes.Buffer
	h, _ := json.Marshal(threadHeader{Version: threadFileVersion})
	b.Write(append(h, '\n'))
	for id, th := range f.threads {
		l, err := json.Marshal(threadLine{ID: id, Thread: th})
		if err != nil {
			return fmt.Errorf("slack: encode thread state: %w", err)
		}
		b.Write(append(l, '\n'))
	}
	if f.f != nil {
		_ = f.f.Close() // replaced below; every line it took was fsynced
		f.f = nil
	}
	if err := writeAtomic(f.path, b.Bytes()); err != nil {
		return fmt.Errorf("slack: write thread state: %w", err)
	}
	af, err := os.OpenFile(f.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("slack: open thread state: %w", err)
	}
	f.f, f.lines = af, len(f.threads)
	return nil
}

// Len returns how many incidents the file tracks.
func (f *ThreadFile) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, th := range f.threads {
		if !f.expired(th) {
			n++
		}
	}
	return n
}

// Close closes the file; Put fails after it.
func (f *ThreadFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.f == nil {
		return nil
	}
	err := f.f.Close()
	f.f = nil
	return err
}

// writeAtomic replaces path with b: a temporary file in the same directory is written
// and fsynced, renamed over path, and the directory is fsynced so the rename survives a
// power cut.
func writeAtomic(path string, b []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(b); err != nil {
		_ = tmp.Close()
		return err
	}
	if err = tmp.Sync(); err != nil {
		_ = tmp.Close()
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

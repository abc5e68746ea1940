package slack

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// A Thread is where an incident lives in Slack: the parent message that the first
// version posted, and the newest version (and reminder of it) already shown there.
type Thread struct {
	Channel  string    `json:"channel"`   // channel id, as Slack answered the first post
	TS       string    `json:"ts"`        // the parent message; empty in webhook mode
	LastSeen time.Time `json:"last_seen"` // LastSeen of the newest version posted
	// Reminder is the number of the newest reminder posted of that version (the
	// alerting.ReminderLabel label); 0: none.
	Reminder int `json:"reminder,omitempty"`
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

// ThreadFile is a Threads kept in memory and in a JSON file. Each Put rewrites the file
// atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves
// either the old or the new state, never a torn file. Entries whose LastSeen is older
// than the retention (before the newest LastSeen stored) are dropped on Put, which
// keeps the file as small as the set of recent incidents; event time is used, not the
// clock, so that a replay through `gatewatch notify` ages entries the same way.
type ThreadFile struct {
	path      string
	retention time.Duration

	mu      sync.Mutex
	threads map[string]Thread
	newest  time.Time
}

// threadFileJSON is the file's format; Version lets a later gatewatch migrate it.
type threadFileJSON struct {
	Version int               `json:"version"`
	Threads map[string]Thread `json:"threads"` // encoding/json sorts the ids
}

const threadFileVersion = 1

// OpenThreadFile loads path, or starts empty when it does not exist yet. retention 0
// means DefaultThreadRetention.
func OpenThreadFile(path string, retention time.Duration) (*ThreadFile, error) {
	if retention <= 0 {
		retention = DefaultThreadRetention
	}
	f := &ThreadFile{path: path, retention: retention, threads: map[string]Thread{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return f, nil
	case err != nil:
		return nil, fmt.Errorf("slack: read thread state: %w", err)
	}
	var j threadFileJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("slack: thread state %s: %w", path, err)
	}
	if j.Version != threadFileVersion {
		return nil, fmt.Errorf("slack: thread state %s has version %d, want %d", path, j.Version, threadFileVersion)
	}
	for id, th := range j.Threads {
		f.threads[id] = th
		if th.LastSeen.After(f.newest) {
			f.newest = th.LastSeen
		}
	}
	return f, nil
}

// Get returns the thread of alert id.
func (f *ThreadFile) Get(id string) (Thread, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	th, ok := f.threads[id]
	return th, ok, nil
}

// Put records th for alert id and writes the file. The entry is in memory even when
// writing fails, so this process does not post the version again; the next successful
// Put writes it out.
func (f *ThreadFile) Put(id string, th Thread) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.threads[id] = th
	if th.LastSeen.After(f.newest) {
		f.newest = th.LastSeen
	}
	cutoff := f.newest.Add(-f.retention)
	for k, v := range f.threads {
		if v.LastSeen.Before(cutoff) {
			delete(f.threads, k)
		}
	}
	b, err := json.MarshalIndent(threadFileJSON{Version: threadFileVersion, Threads: f.threads}, "", "  ")
	if err != nil {
		return fmt.Errorf("slack: encode thread state: %w", err)
	}
	if err := writeAtomic(f.path, append(b, '\n')); err != nil {
		return fmt.Errorf("slack: write thread state: %w", err)
	}
	return nil
}

// Len returns how many incidents the file tracks.
func (f *ThreadFile) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.threads)
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

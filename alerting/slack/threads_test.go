package slack

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestThreadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "threads.json")
	t0 := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)

	f, err := OpenThreadFile(path, 30*24*time.Hour)
	if err != nil {
		t.Fatalf("OpenThreadFile of a missing file = %v, want an empty store", err)
	}
	if _, ok, _ := f.Get("a"); ok {
		t.Fatal("empty store has alert a")
	}
	old := Thread{Channel: "C1", TS: "1.000001", LastSeen: t0}
	if err := f.Put("old", old); err != nil {
		t.Fatal(err)
	}
	recent := Thread{Channel: "C1", TS: "1.000002", LastSeen: t0.Add(20 * 24 * time.Hour)}
	if err := f.Put("recent", recent); err != nil {
		t.Fatal(err)
	}

	f2, err := OpenThreadFile(path, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]Thread{"old": old, "recent": recent} {
		got, ok, err := f2.Get(id)
		if err != nil || !ok || got != want {
			t.Errorf("after reopening, Get(%s) = (%+v, %v, %v), want (%+v, true, nil)", id, got, ok, err, want)
		}
	}

	// A version 31 days after "old" pushes it past the retention.
	if err := f2.Put("new", Thread{Channel: "C1", TS: "1.000003", LastSeen: t0.Add(31 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := f2.Get("old"); ok {
		t.Error("an incident quiet for longer than the retention is still kept")
	}
	if f2.Len() != 2 {
		t.Errorf("store holds %d threads, want 2", f2.Len())
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %v, want only threads.json (no temporary files left)", entries)
	}
	var j threadFileJSON
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &j); err != nil || j.Version != threadFileVersion || len(j.Threads) != 2 {
		t.Errorf("file = %s, want version %d with 2 threads", b, threadFileVersion)
	}
}

func TestThreadFileRejectsBadFiles(t *testing.T) {
	for name, content := range map[string]string{
		"torn":           `{"version":1,"threads":{"a":`,
		"future version": `{"version":2,"threads":{}}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "threads.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenThreadFile(path, 0); err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("OpenThreadFile(%s) = %v, want an error naming the file", content, err)
			}
		})
	}
}

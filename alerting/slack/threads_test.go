package slack

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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
	// An intent: a post about to be made, no TS yet.
	intent := Thread{Channel: "#soc-alerts", LastSeen: t0.Add(20 * 24 * time.Hour), Posting: t0.Add(20*24*time.Hour + time.Second)}
	if err := f.Put("intent", intent); err != nil {
		t.Fatal(err)
	}

	f2, err := OpenThreadFile(path, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]Thread{"old": old, "recent": recent, "intent": intent} {
		got, ok, err := f2.Get(id)
		if err != nil || !ok || !reflect.DeepEqual(got, want) {
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
	if f2.Len() != 3 {
		t.Errorf("store holds %d threads, want 3 (recent, intent, new)", f2.Len())
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %v, want only threads.json (no temporary files left)", entries)
	}
	f3, err := OpenThreadFile(path, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer f3.Close()
	if f3.Len() != 3 {
		t.Errorf("reopened store holds %d threads, want 3", f3.Len())
	}
}

// TestThreadFileAppends: a Put appends one line to the file, whatever the number of
// incidents it holds, and does not rewrite it; once the file holds twice as many lines
// as live entries it is compacted, and what it holds survives a reopen.
func TestThreadFileAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "threads.json")
	t0 := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	f, err := OpenThreadFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const incidents = 2000
	for i := range incidents {
		if err := f.Put(fmt.Sprintf("alert-%04d", i), Thread{Channel: "C1", TS: fmt.Sprintf("1.%06d", i), LastSeen: t0}); err != nil {
			t.Fatal(err)
		}
	}
	before := stat(t, path)
	th := Thread{Channel: "C1", TS: "1.000007", LastSeen: t0.Add(time.Minute), Reminder: 1}
	if err := f.Put("alert-0007", th); err != nil {
		t.Fatal(err)
	}
	line, _ := json.Marshal(threadLine{ID: "alert-0007", Thread: th})
	after := stat(t, path)
	if !os.SameFile(before, after) || after.Size() != before.Size()+int64(len(line))+1 {
		t.Errorf("a Put among %d incidents took the file from %d to %d bytes (same file: %v), want one line of %d more, appended",
			incidents, before.Size(), after.Size(), os.SameFile(before, after), len(line)+1)
	}
	// Versions of one incident pile up until the file is compacted.
	for i := range incidents + 1 {
		th.Reminder = 2 + i
		if err := f.Put("alert-0007", th); err != nil {
			t.Fatal(err)
		}
	}
	// Uncompacted, the file would have grown by incidents+1 lines; compacted, it holds
	// the incidents and the few lines appended since.
	if compacted, limit := stat(t, path), after.Size()+int64(10*(len(line)+1)); os.SameFile(after, compacted) || compacted.Size() > limit {
		t.Errorf("after %d more Puts the file is %d bytes (same file: %v), want it compacted to at most %d", incidents+1,
			compacted.Size(), os.SameFile(after, compacted), limit)
	}
	f2, err := OpenThreadFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	if got, ok, _ := f2.Get("alert-0007"); !ok || !reflect.DeepEqual(got, th) || f2.Len() != incidents {
		t.Errorf("reopened: %d incidents, alert-0007 = %+v %v; want %d and %+v", f2.Len(), got, ok, incidents, th)
	}
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// TestThreadFileRecovers: a line torn by a crash (its Put never returned) is dropped at
// the next open and everything before it kept; a file of version 1 (one JSON object) is
// read and rewritten as version 2.
func TestThreadFileRecovers(t *testing.T) {
	t0 := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	a := Thread{Channel: "C1", TS: "1.000001", LastSeen: t0}
	for name, content := range map[string]string{
		"torn last line": `{"version":2}` + "\n" + `{"id":"a","channel":"C1","ts":"1.000001","last_seen":"2026-11-02T08:00:00Z"}` + "\n" + `{"id":"b","chan`,
		"version 1":      `{"version":1,"threads":{"a":{"channel":"C1","ts":"1.000001","last_seen":"2026-11-02T08:00:00Z"}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "threads.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := OpenThreadFile(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got, ok, _ := f.Get("a"); !ok || !reflect.DeepEqual(got, a) || f.Len() != 1 {
				t.Errorf("Get(a) = %+v %v with %d threads, want %+v alone", got, ok, f.Len(), a)
			}
			b, _ := os.ReadFile(path)
			if want := `{"version":2}` + "\n"; !strings.HasPrefix(string(b), want) || !strings.HasSuffix(string(b), "}\n") {
				t.Errorf("file after open = %q, want version 2 lines", b)
			}
		})
	}
}

func TestThreadFileRejectsBadFiles(t *testing.T) {
	for name, content := range map[string]string{
		"torn":           `{"version":1,"threads":{"a":`,
		"future version": `{"version":3}` + "\n",
		"not a header":   `{"version":2,"threads":{}}`,
		"corrupt middle": `{"version":2}` + "\n" + `{"id":` + "\n" + `{"id":"a","channel":"C1","ts":"1.1","last_seen":"2026-11-02T08:00:00Z"}` + "\n",
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

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/replay"
)

// TestProgressBar: on a terminal the bar shows the event time reached, the events and
// their rate, and how far through the range the replay is; on a file or a pipe there is
// no bar at all.
func TestProgressBar(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if b := newProgressBar(f, time.Time{}, time.Time{}); b != nil {
		t.Error("a progress bar on a file")
	}
	if b := newProgressBar(&bytes.Buffer{}, time.Time{}, time.Time{}); b != nil {
		t.Error("a progress bar on a buffer")
	}
	var nilBar *progressBar
	nilBar.finish() // no bar: nothing to take off

	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var w bytes.Buffer
	b := startProgressBar(&w, start, start.Add(time.Hour))
	b.now = func() time.Time { return b.began.Add(10 * time.Second) }
	b.update(replay.Progress{Events: 123456, EventTime: start.Add(30 * time.Minute)})
	out := w.String()
	for _, want := range []string{"2026-03-01 12:30:00Z", "123456 events", "12346 events/s", " 50% "} {
		if !strings.Contains(out, want) {
			t.Errorf("the bar lacks %q: %q", want, out)
		}
	}
	if b.bar.GetMax64() != 3600 {
		t.Errorf("the bar runs over %d seconds of event time, want the range's 3600", b.bar.GetMax64())
	}
}

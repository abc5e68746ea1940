package file_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/alerting/file"
	"github.com/gatewatch/gatewatch/detectors"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func newReceiver(t *testing.T, path string) *file.Receiver {
	t.Helper()
	r, err := file.New("archive", alerting.FileConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestNotifyAppendsOneContractLinePerAlert(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alerts.jsonl")
	r := newReceiver(t, path)
	as := alertingtest.Alerts(3, t0)
	as[0].Summary = "Line\nbreaks and \"quotes\" stay inside one line."
	for _, batch := range [][]detectors.Alert{as[:2], as[2:]} {
		if retry, err := r.Notify(context.Background(), batch); err != nil {
			t.Fatalf("Notify = %v, %v", retry, err)
		}
	}
	lines := readLines(t, path)
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3", len(lines))
	}
	for i, l := range lines {
		want, err := json.Marshal(as[i])
		if err != nil {
			t.Fatal(err)
		}
		if l != string(want) {
			t.Errorf("line %d = %s\nwant the Alert JSON contract %s", i, l, want)
		}
		var back detectors.Alert
		if err := json.Unmarshal([]byte(l), &back); err != nil || back.ID != as[i].ID || !back.LastSeen.Equal(as[i].LastSeen) {
			t.Errorf("line %d does not read back as the alert: %v", i, err)
		}
	}
	if !strings.Contains(lines[0], `"first_seen":"2025-03-01T12:00:00.000Z"`) {
		t.Errorf("times are not UTC milliseconds: %s", lines[0])
	}
}

func TestNotifyFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "alerts.jsonl")
	r := newReceiver(t, path)
	as := alertingtest.Alerts(2, t0)
	if _, err := r.Notify(context.Background(), as[:1]); err != nil {
		t.Fatal(err)
	}
	// logrotate moves the file away; the next alert goes to a new file at path.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Notify(context.Background(), as[1:]); err != nil {
		t.Fatal(err)
	}
	if n := len(readLines(t, path+".1")); n != 1 {
		t.Errorf("rotated file has %d lines, want 1", n)
	}
	if l := readLines(t, path); len(l) != 1 || !strings.Contains(l[0], as[1].ID) {
		t.Errorf("new file has %q, want the second alert", l)
	}
}

func TestNotifyFailuresAreRetried(t *testing.T) {
	as := alertingtest.Alerts(1, t0)
	t.Run("directory missing", func(t *testing.T) {
		r := newReceiver(t, filepath.Join(t.TempDir(), "no", "such", "dir", "alerts.jsonl"))
		retry, err := r.Notify(context.Background(), as)
		if err == nil || !retry {
			t.Errorf("Notify = %v, %v; want a retryable error (the disk may come back)", retry, err)
		}
	})
	t.Run("disk full", func(t *testing.T) {
		if _, err := os.Stat("/dev/full"); err != nil {
			t.Skip("no /dev/full here")
		}
		r := newReceiver(t, "/dev/full")
		retry, err := r.Notify(context.Background(), as)
		if err == nil || !retry || !strings.Contains(err.Error(), "no space left") {
			t.Errorf("Notify = %v, %v; want a retryable no-space error", retry, err)
		}
	})
	t.Run("context done", func(t *testing.T) {
		r := newReceiver(t, filepath.Join(t.TempDir(), "alerts.jsonl"))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if retry, err := r.Notify(ctx, as); err == nil || !retry {
			t.Errorf("Notify = %v, %v; want a retryable error", retry, err)
		}
	})
}

func TestNewChecksConfig(t *testing.T) {
	if _, err := file.New("archive", alerting.FileConfig{}); err == nil {
		t.Error("New accepted an empty path")
	}
	if _, err := file.New("", alerting.FileConfig{Path: "x"}); err == nil {
		t.Error("New accepted an empty name")
	}
}

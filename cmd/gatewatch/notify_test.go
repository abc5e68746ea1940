package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/store"
)

// writeNotifyConfig writes a config with a file receiver for high-severity alerts and
// another for the rest, and returns its path and the two files.
func writeNotifyConfig(t *testing.T) (cfg, high, rest string) {
	t.Helper()
	dir := t.TempDir()
	high, rest = filepath.Join(dir, "high.jsonl"), filepath.Join(dir, "rest.jsonl")
	cfg = filepath.Join(dir, "gatewatch.yaml")
	body := fmt.Sprintf(`store: {data_dir: %s}
alerting:
  receivers:
    - {name: pager, file: {path: %s}}
    - {name: archive, file: {path: %s}}
  routes:
    - {match: {severity: [high, critical]}, receivers: [pager], continue: true}
    - {receivers: [archive]}
`, dir, high, rest)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, high, rest
}

func demoAlerts(t *testing.T) string {
	t.Helper()
	out, errOut, code := runCmd(t, "", "demo", "--duration", "1h", "--rate", "4", "--seed", "3", "--json")
	if code != 0 {
		t.Fatalf("demo: exit %d: %s", code, errOut)
	}
	return out
}

func countLines(t *testing.T, path string) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ids := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var a struct {
			ID       string
			LastSeen string `json:"last_seen"`
		}
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatal(err)
		}
		ids[a.ID+" "+a.LastSeen]++ // each version of an incident is a delivery of its own
	}
	return ids
}

// TestNotifyRoutesOnceAndNeverTwice sends the demo's alerts through real routes to file
// receivers, then sends them again: the second run delivers nothing new.
func TestNotifyRoutesOnceAndNeverTwice(t *testing.T) {
	alerts := demoAlerts(t)
	cfg, high, rest := writeNotifyConfig(t)

	plan, errOut, code := runCmd(t, alerts, "notify", "--config", cfg, "--input", "-", "--dry-run")
	if code != 0 {
		t.Fatalf("dry run: exit %d: %s", code, errOut)
	}
	if !strings.Contains(plan, "-> pager, archive") || !strings.Contains(plan, "-> archive") {
		t.Errorf("dry run plan:\n%s", plan)
	}
	if countLines(t, high) != nil || countLines(t, rest) != nil {
		t.Fatal("dry run delivered something")
	}

	for run := 1; run <= 2; run++ {
		out, errOut, code := runCmd(t, alerts, "notify", "--config", cfg, "--input", "-")
		if code != 0 {
			t.Fatalf("run %d: exit %d: %s\n%s", run, code, errOut, out)
		}
		if strings.Count(out, ": delivered") != strings.Count(out, "\n") {
			t.Errorf("run %d left deliveries undone:\n%s", run, out)
		}
		// The second run says its deliveries were the first's.
		if earlier := strings.Count(out, "(by an earlier run: not sent again)"); (run == 1) != (earlier == 0) || (run == 2 && earlier != strings.Count(out, "\n")) {
			t.Errorf("run %d: %d deliveries said to be an earlier run's:\n%s", run, earlier, out)
		}
	}
	pager, archive := countLines(t, high), countLines(t, rest)
	incidents := func(versions map[string]int) map[string]bool {
		ids := map[string]bool{}
		for v := range versions {
			ids[strings.Fields(v)[0]] = true
		}
		return ids
	}
	all := map[string]bool{} // the demo's incidents, one per attack
	for _, line := range strings.Split(strings.TrimSpace(alerts), "\n") {
		var a struct{ ID string }
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			t.Fatal(err)
		}
		all[a.ID] = true
	}
	if n := len(incidents(archive)); n != len(all) {
		t.Errorf("archive got %d incidents, want all %d", n, len(all))
	}
	if n := len(incidents(pager)); n == 0 || n >= len(all) {
		t.Errorf("pager got %d incidents, want only the high ones", n)
	}
	for id, n := range archive {
		if n != 1 {
			t.Errorf("alert version %s delivered %d times to archive across two notify runs", id, n)
		}
	}
	for id, n := range pager {
		if n != 1 {
			t.Errorf("alert version %s delivered %d times to pager", id, n)
		}
	}

	// The alert history landed in the (embedded) store, with each delivery's state.
	recs := alertHistory(t, store.Config{DataDir: filepath.Dir(cfg), Retention: 720 * time.Hour})
	deliveries := 0
	for _, r := range recs {
		for _, d := range r.Deliveries {
			if d.State != alerting.Delivered {
				t.Errorf("history: %s to %s is %s", r.Alert.ID, d.Receiver, d.State)
			}
			deliveries++
		}
	}
	if want := len(incidents(archive)) + len(incidents(pager)); len(recs) != len(all) || deliveries != want {
		t.Errorf("history holds %d alerts and %d deliveries, want %d and %d", len(recs), deliveries, len(all), want)
	}
}

// TestNotifySendsNoVersionOlderThanOneSent: an incident's final version, then a file of
// its earlier versions (what replay --updates prints), fed to notify: the earlier ones
// are not sent after the final one, and the report says so.
func TestNotifySendsNoVersionOlderThanOneSent(t *testing.T) {
	line, _, _ := strings.Cut(demoAlerts(t), "\n")
	var a map[string]any
	if err := json.Unmarshal([]byte(line), &a); err != nil {
		t.Fatal(err)
	}
	last, err := time.Parse(time.RFC3339, a["last_seen"].(string))
	if err != nil {
		t.Fatal(err)
	}
	a["last_seen"] = last.Add(-time.Minute).UTC().Format("2006-01-02T15:04:05.000Z")
	older, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, rest := writeNotifyConfig(t)
	if out, errOut, code := runCmd(t, line+"\n", "notify", "--config", cfg, "--input", "-"); code != 0 {
		t.Fatalf("final version: exit %d: %s\n%s", code, errOut, out)
	}
	out, errOut, code := runCmd(t, string(older)+"\n", "notify", "--config", cfg, "--input", "-")
	if code != 0 || !strings.Contains(out, "-> not sent: a later version") {
		t.Errorf("earlier version: exit %d:\n%s\n%s", code, out, errOut)
	}
	if got := countLines(t, rest); len(got) != 1 {
		t.Errorf("archive holds %v, want the final version only", got)
	}
}

func TestNotifyRejectsBadInput(t *testing.T) {
	cfg, _, _ := writeNotifyConfig(t)
	_, errOut, code := runCmd(t, "{\"id\":\"x\"}\nnot json\n", "notify", "--config", cfg, "--input", "-")
	if code != 1 || !strings.Contains(errOut, "-:1: an alert needs") {
		t.Errorf("exit %d: %s", code, errOut)
	}
}

// TestNotifyReportsUnroutedAlerts: an alert that no route matches reaches nobody;
// notify says which, delivers the others, and exits non-zero, as --dry-run does.
func TestNotifyReportsUnroutedAlerts(t *testing.T) {
	alerts := demoAlerts(t)
	dir := t.TempDir()
	high := filepath.Join(dir, "high.jsonl")
	cfg := filepath.Join(dir, "gatewatch.yaml")
	body := fmt.Sprintf(`store: {data_dir: %s}
alerting:
  receivers:
    - {name: pager, file: {path: %s}}
  routes:
    - {match: {severity: [high, critical]}, receivers: [pager]}
`, dir, high)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	routed := 0
	for _, l := range strings.Split(strings.TrimSpace(alerts), "\n") {
		if strings.Contains(l, `"severity":"high"`) || strings.Contains(l, `"severity":"critical"`) {
			routed++
		}
	}
	unrouted := strings.Count(strings.TrimSpace(alerts), "\n") + 1 - routed
	if routed == 0 || unrouted == 0 {
		t.Fatalf("the demo's alerts have %d routed and %d unrouted here, want both", routed, unrouted)
	}
	for _, args := range [][]string{{"--dry-run"}, nil} {
		out, errOut, code := runCmd(t, alerts, append([]string{"notify", "--config", cfg, "--input", "-"}, args...)...)
		if code != 1 || !strings.Contains(errOut, fmt.Sprintf("%d alert", unrouted)) || !strings.Contains(errOut, "no route") {
			t.Errorf("notify %v: exit %d, stderr %s; want 1 and %d alerts that matched no route", args, code, errOut, unrouted)
		}
		if n := strings.Count(out, "-> nobody (no route matches)") + strings.Count(out, "-> nobody: no route matches"); n != unrouted {
			t.Errorf("notify %v named %d unrouted alerts, want %d:\n%s", args, n, unrouted, out)
		}
	}
	n := 0
	for _, k := range countLines(t, high) {
		n += k
	}
	if n != routed {
		t.Errorf("pager got %d alert versions, want the %d routed ones", n, routed)
	}
}

// TestNotifyRequeue: deliveries to a destination that keeps failing are parked; the
// error says how to re-send them, and once the destination is fixed, notify --requeue
// delivers them, each alert version once.
func TestNotifyRequeue(t *testing.T) {
	alerts := demoAlerts(t)
	versions := strings.Count(strings.TrimSpace(alerts), "\n") + 1 // one delivery each
	dir := t.TempDir()
	missing := filepath.Join(dir, "not-yet")
	archive := filepath.Join(missing, "alerts.jsonl")
	cfg := filepath.Join(dir, "gatewatch.yaml")
	body := fmt.Sprintf(`store: {data_dir: %s}
alerting:
  receivers:
    - {name: archive, file: {path: %s}}
  outbox: {initial_backoff: 1ms, max_backoff: 2ms, give_up_after: 1ms}
`, dir, archive)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCmd(t, alerts, "notify", "--config", cfg, "--input", "-")
	parked := fmt.Sprintf("%d deliveries to archive failed for good", versions)
	want := "re-send with: gatewatch notify --config " + cfg + " --requeue --receiver archive"
	if code != 1 || !strings.Contains(errOut, parked) || !strings.Contains(errOut, want) {
		t.Fatalf("notify to a missing directory: exit %d\n%s%s\nwant exit 1, %q and %q", code, out, errOut, parked, want)
	}
	// Nothing to requeue for a receiver the config lacks; a usage mistake is one.
	if _, errOut, code := runCmd(t, "", "notify", "--config", cfg, "--requeue", "--receiver", "nope"); code != 1 || !strings.Contains(errOut, `no receiver "nope"`) {
		t.Errorf("--requeue --receiver nope: exit %d, %s", code, errOut)
	}
	if _, _, code := runCmd(t, "", "notify", "--config", cfg, "--requeue", "--input", "-"); code != 2 {
		t.Errorf("--requeue with --input: exit %d, want 2", code)
	}
	if err := os.Mkdir(missing, 0o700); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCmd(t, "", "notify", "--config", cfg, "--requeue", "--receiver", "archive")
	done := fmt.Sprintf("archive: %d requeued, %d delivered, 0 parked again, 0 pending", versions, versions)
	if code != 0 || !strings.Contains(out, done) {
		t.Fatalf("--requeue: exit %d\n%s%s\nwant %q", code, out, errOut, done)
	}
	// Sending the same alerts again delivers nothing new: the requeued ones count.
	if out, errOut, code := runCmd(t, alerts, "notify", "--config", cfg, "--input", "-"); code != 0 || strings.Count(out, ": delivered") != versions {
		t.Errorf("notify after the requeue: exit %d\n%s%s", code, out, errOut)
	}
	n := 0
	for _, k := range countLines(t, archive) {
		n += k
	}
	if n != versions {
		t.Errorf("archive holds %d alert versions after the requeue and a second notify, want each of the %d once", n, versions)
	}
}

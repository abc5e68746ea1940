package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// replayDetectors is demo.yaml's detectors section: learning short enough for two hours.
const replayDetectors = `detectors:
  allowed_lateness: 30s
  new_country: {learning_period: 30m, min_events: 20}
  quiet_endpoint_spike: {learning_period: 30m}
`

// replayTraffic is two hours of AWS WAF traffic with every attack, in event-time order.
func replayTraffic(t *testing.T) ([]synth.Request, []string) {
	t.Helper()
	reqs, _, err := synth.Generate(synth.Config{Duration: 2 * time.Hour, Rate: 3, Seed: 21, Attacks: synth.Attacks})
	if err != nil {
		t.Fatal(err)
	}
	lines := make([]string, len(reqs))
	for i := range reqs {
		b, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &reqs[i])
		if err != nil {
			t.Fatal(err)
		}
		lines[i] = string(b)
	}
	return reqs, lines
}

func writeLog(t *testing.T, path string, lines []string, gz bool) {
	t.Helper()
	data := []byte(strings.Join(lines, "\n") + "\n")
	if gz {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(data)
		zw.Close()
		data = b.Bytes()
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// alertIDs returns the ids of the alerts replay printed, checking each line is one.
func alertIDs(t *testing.T, out string) []string {
	t.Helper()
	var ids []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var a struct{ ID string }
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil || a.ID == "" {
			t.Fatalf("stdout line %q is not an alert: %v", sc.Text(), err)
		}
		ids = append(ids, a.ID)
	}
	return ids
}

// TestReplayReadsRotatedFilesInEventTimeOrder is the run a new user made: replay of a
// directory of rotated logs. Whatever the names, the files are read oldest first, so
// the alerts are those of the unsplit log, no event is late, and the exit status is 0.
func TestReplayReadsRotatedFilesInEventTimeOrder(t *testing.T) {
	_, lines := replayTraffic(t)
	cfg := testConfig(t, replayDetectors)
	whole := filepath.Join(t.TempDir(), "whole.log")
	writeLog(t, whole, lines, false)
	want, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", whole)
	if code != 0 || len(alertIDs(t, want)) < 4 {
		t.Fatalf("whole log: exit %d, %d alerts:\n%s", code, len(alertIDs(t, want)), lastLines(errOut, 10))
	}
	dir := t.TempDir()
	third := len(lines) / 3
	writeLog(t, filepath.Join(dir, "access.log.2.gz"), lines[:third], true)
	writeLog(t, filepath.Join(dir, "access.log.1"), lines[third:2*third], false)
	writeLog(t, filepath.Join(dir, "access.log"), lines[2*third:], false)
	got, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", dir)
	if code != 0 || got != want {
		t.Errorf("rotated files: exit %d, alerts differ from the whole log's:\n%s", code, lastLines(errOut, 12))
	}
	if !strings.Contains(errOut, ", 0 late") || !strings.Contains(errOut, "3 inputs, read in event-time order") {
		t.Errorf("summary:\n%s", lastLines(errOut, 12))
	}
	// Paths after the flags, as a shell glob gives them, are inputs too.
	got, _, code = runCmd(t, "", "replay", "--config", cfg, "--input", filepath.Join(dir, "access.log"),
		filepath.Join(dir, "access.log.1"), filepath.Join(dir, "access.log.2.gz"), "--max-late-ratio", "0")
	if code != 0 || got != want {
		t.Errorf("files named newest first: exit %d", code)
	}
}

// TestReplayWarnsAboutLateEvents replays the logs of two gateways of the same two
// hours: read side by side, merged by event time, they raise the alerts of the whole
// traffic and nothing is late. Then one of them concatenated in the wrong order (its
// second hour first): its first hour's events come late, and replay names the file
// they came from and exits 1 above --max-late-ratio.
func TestReplayWarnsAboutLateEvents(t *testing.T) {
	reqs, lines := replayTraffic(t)
	var a, b []string
	for i, r := range reqs {
		if strings.HasSuffix(r.ClientIP, "1") || strings.HasSuffix(r.ClientIP, "3") {
			b = append(b, lines[i])
		} else {
			a = append(a, lines[i])
		}
	}
	cfg := testConfig(t, replayDetectors)
	whole := filepath.Join(t.TempDir(), "access.log")
	writeLog(t, whole, lines, false)
	want, _, _ := runCmd(t, "", "replay", "--config", cfg, "--input", whole)
	dir := t.TempDir()
	writeLog(t, filepath.Join(dir, "gateway-a.log"), a, false)
	writeLog(t, filepath.Join(dir, "gateway-b.log"), b, false)
	got, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", dir)
	if code != 0 || got != want || !strings.Contains(errOut, ", 0 late") {
		t.Errorf("two gateways' logs: exit %d, alerts differ from the whole traffic's:\n%s", code, lastLines(errOut, 12))
	}

	half := len(b) / 2
	writeLog(t, filepath.Join(dir, "gateway-b.log"), append(slices.Clone(b[half:]), b[:half]...), false)
	_, errOut, code = runCmd(t, "", "replay", "--config", cfg, "--input", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, lastLines(errOut, 12))
	}
	for _, want := range []string{"warning: ", "late of", "over --max-late-ratio 0.01", "attacks in them may have been missed"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, lastLines(errOut, 12))
		}
	}
	if !regexp.MustCompile(`they came from \S+/gateway-b\.log \(\d+ late of \d+\)`).MatchString(errOut) {
		t.Errorf("the warning does not name the file the late events came from:\n%s", lastLines(errOut, 4))
	}
	_, errOut, code = runCmd(t, "", "replay", "--config", cfg, "--input", dir, "--max-late-ratio", "1")
	if code != 0 || !strings.Contains(errOut, "warning: ") {
		t.Errorf("--max-late-ratio 1: exit %d, and the warning is still due:\n%s", code, lastLines(errOut, 12))
	}
}

// TestReplaySuggestsTheLatenessALogNeeds replays a log whose lines are out of order
// within each minute (as in an Apache log, stamped when each request started and
// written when it ended): replay says which allowed_lateness takes every line, and
// with it nothing is late and the alerts are those of the same log in order.
func TestReplaySuggestsTheLatenessALogNeeds(t *testing.T) {
	reqs, lines := replayTraffic(t)
	var shuffled []string
	for i := 0; i < len(lines); {
		j := i
		for j < len(lines) && reqs[j].Time.Truncate(time.Minute).Equal(reqs[i].Time.Truncate(time.Minute)) {
			j++
		}
		minute := slices.Clone(lines[i:j])
		slices.Reverse(minute)
		shuffled = append(shuffled, minute...)
		i = j
	}
	dir := t.TempDir()
	disordered := filepath.Join(dir, "access.log")
	writeLog(t, disordered, shuffled, false)
	cfg := testConfig(t, replayDetectors)
	_, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", disordered)
	if code != 1 || !strings.Contains(errOut, "with --set detectors.allowed_lateness=1m (or that in the config") {
		t.Fatalf("exit %d, want 1 and the lateness to set:\n%s", code, lastLines(errOut, 4))
	}
	if errOut := replaysAlike(t, cfg, lines, shuffled, "--set", "detectors.allowed_lateness=1m"); strings.Contains(errOut, "warning: ") {
		t.Errorf("with the lateness suggested, still a warning:\n%s", lastLines(errOut, 4))
	}
}

// replaysAlike replays the log of reference lines and the one of altered lines with
// cfg and args: the first exits 0 with at least 4 alerts, and the second exits 0 with
// none late and the same alerts. It returns the second's stderr.
func replaysAlike(t *testing.T, cfg string, reference, altered []string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	ref, alt := filepath.Join(dir, "reference.log"), filepath.Join(dir, "altered.log")
	writeLog(t, ref, reference, false)
	writeLog(t, alt, altered, false)
	want, _, code := runCmd(t, "", append([]string{"replay", "--config", cfg, "--input", ref}, args...)...)
	if code != 0 || len(alertIDs(t, want)) < 4 {
		t.Fatalf("reference: exit %d, %d alerts", code, len(alertIDs(t, want)))
	}
	got, errOut, code := runCmd(t, "", append([]string{"replay", "--config", cfg, "--input", alt}, args...)...)
	if code != 0 || !strings.Contains(errOut, ", 0 late") {
		t.Errorf("altered: exit %d:\n%s", code, lastLines(errOut, 4))
	}
	if got != want {
		t.Errorf("altered: alerts differ from the reference log's:\n%s\nwant:\n%s", got, want)
	}
	return errOut
}

// TestReplayClockGlitch: five records in a row stamped three hours ahead (a gateway
// whose clock was stepped back a moment later) change nothing: the alerts are those
// of the log without them, and no event is late. Taken for a jump of the stream, they
// made the rest of the log late.
func TestReplayClockGlitch(t *testing.T) {
	reqs, lines := replayTraffic(t)
	glitched := slices.Clone(lines)
	for i := len(reqs) / 3; i < len(reqs)/3+5; i++ {
		r := reqs[i]
		r.Time = r.Time.Add(3 * time.Hour)
		b, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &r)
		if err != nil {
			t.Fatal(err)
		}
		glitched[i] = string(b)
	}
	replaysAlike(t, testConfig(t, replayDetectors), lines, glitched)
}

// TestReplayAlertIDsAreStableWithoutASecret: with no token secret configured, replay
// uses a key it keeps under store.data_dir, so a second run gives the same alerts.
func TestReplayAlertIDsAreStableWithoutASecret(t *testing.T) {
	_, lines := replayTraffic(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "waf.log")
	writeLog(t, log, lines, false)
	data := filepath.Join(dir, "data")
	cfg := filepath.Join(dir, "gatewatch.yaml")
	os.WriteFile(cfg, []byte(replayDetectors+"store:\n  data_dir: "+data+"\n"), 0o600)
	first, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log)
	if code != 0 || !strings.Contains(errOut, "created now in "+filepath.Join(data, ingest.DataDirSecretFile)) {
		t.Fatalf("first run: exit %d:\n%s", code, lastLines(errOut, 12))
	}
	second, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log)
	if code != 0 || second != first || len(alertIDs(t, first)) < 4 {
		t.Errorf("second run: exit %d, alerts differ from the first run's:\n%s", code, lastLines(errOut, 12))
	}
	if fi, err := os.Stat(filepath.Join(data, ingest.DataDirSecretFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secret file: %v %v", fi, err)
	}
	// parse with the same config fingerprints with the same key: a key it prints finds
	// its events in a replay.
	parsed, errOut, code := runCmd(t, "", "parse", "--config", cfg, "--input", log)
	var ev struct {
		ClientKey string `json:"client_key"`
	}
	if code != 0 || json.Unmarshal([]byte(strings.SplitN(parsed, "\n", 2)[0]), &ev) != nil || ev.ClientKey == "" {
		t.Fatalf("parse: exit %d, first line %.200q:\n%s", code, parsed, lastLines(errOut, 6))
	}
	if !strings.Contains(errOut, "the key kept in "+filepath.Join(data, ingest.DataDirSecretFile)) {
		t.Errorf("parse does not say which key it used:\n%s", lastLines(errOut, 6))
	}
	events, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log, "--events", "--key", ev.ClientKey)
	if code != 0 || !strings.Contains(events, ev.ClientKey) {
		t.Errorf("replay --events --key %s (from parse): exit %d, no events:\n%s", ev.ClientKey, code, lastLines(errOut, 6))
	}
}

// TestReplayHonoursTheDeadLetterFile: rejected records go to ingest.dead_letter.file,
// byte for byte.
func TestReplayHonoursTheDeadLetterFile(t *testing.T) {
	_, lines := replayTraffic(t)
	dlq := filepath.Join(t.TempDir(), "dlq.jsonl")
	cfg := testConfig(t, "  dead_letter: {file: "+dlq+"}\n"+replayDetectors)
	bad := []string{"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", `{"timestamp":1762041600000,"truncated`}
	in := strings.Join(append(append([]string{}, lines[:100]...), bad...), "\n") + "\n"
	_, errOut, code := runCmd(t, in, "replay", "--config", cfg, "--input", "-", "--max-reject-ratio", "0.5")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, lastLines(errOut, 8))
	}
	b, err := os.ReadFile(dlq)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var dl ingest.DeadLetter
		if err := json.Unmarshal([]byte(l), &dl); err != nil {
			t.Fatal(err)
		}
		raw, err := dl.Raw()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(raw))
	}
	if len(got) != 2 || got[0] != bad[0] || got[1] != bad[1] {
		t.Errorf("dead letters hold %q, want %q", got, bad)
	}
}

// TestReplayInterrupted: SIGINT while replay reads a stream that has not ended. The
// alerts raised so far are written, the summary printed, and the exit status is 130.
func TestReplayInterrupted(t *testing.T) {
	_, lines := replayTraffic(t)
	out, errOut, code := interruptAfterFirstBatch(t, lines, "replay", "--config", testConfig(t, replayDetectors), "--input", "-")
	if code != 130 {
		t.Fatalf("exit %d, want 130:\n%s", code, lastLines(errOut, 8))
	}
	alertIDs(t, out) // every line a whole alert
	for _, want := range []string{"replay: ", " events from ", "1 records rejected", "interrupted"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, lastLines(errOut, 12))
		}
	}
}

func TestReplayRefusesTheWrongFormat(t *testing.T) {
	_, lines := replayTraffic(t)
	_, errOut, code := runCmd(t, strings.Join(lines[:2000], "\n"), "replay", "--config", testConfig(t, replayDetectors), "--format", "envoy", "--input", "-")
	if code != 1 || !strings.Contains(errOut, "most as missing_field") {
		t.Errorf("exit %d:\n%s", code, lastLines(errOut, 6))
	}
}

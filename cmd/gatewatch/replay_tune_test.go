package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/store"
)

// alertsOf returns the alerts replay printed.
func alertsOf(t *testing.T, out string) []detectors.Alert {
	t.Helper()
	var all []detectors.Alert
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var a detectors.Alert
		if err := json.Unmarshal([]byte(l), &a); err != nil {
			t.Fatalf("stdout line %q is not an alert: %v", l, err)
		}
		all = append(all, a)
	}
	return all
}

// TestReplayTuningAndForensicsFlags runs replay's tuning and forensics flags as an
// analyst types them, over two hours of traffic with every attack: --sweep with
// --labels and --report, --compare, --events with --key and a window, --send. The
// printed alerts never change with what runs beside them.
func TestReplayTuningAndForensicsFlags(t *testing.T) {
	_, lines := replayTraffic(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "waf.log")
	writeLog(t, log, lines, false)
	sent := filepath.Join(dir, "sent.jsonl")
	cfg := testConfig(t, replayDetectors+fmt.Sprintf("store: {data_dir: %s}\nalerting:\n  receivers:\n    - {name: archive, file: {path: %s}}\n",
		filepath.Join(dir, "data"), sent))
	base, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log)
	alerts := alertsOf(t, base)
	if code != 0 || len(alerts) < 4 {
		t.Fatalf("replay: exit %d, %d alerts:\n%s", code, len(alerts), lastLines(errOut, 12))
	}
	if _, err := os.Stat(sent); err == nil {
		t.Error("a replay without --send reached the file receiver")
	}
	var burst detectors.Alert
	for _, a := range alerts {
		if a.Detector == detectors.ForbiddenBurst {
			burst = a
		}
	}
	if burst.ID == "" {
		t.Fatalf("no forbidden_burst incident to tune against: %s", base)
	}

	t.Run("sweep", func(t *testing.T) {
		labels := filepath.Join(dir, "labels.jsonl")
		writeFile(t, labels, fmt.Sprintf("# the 403 burst was the attack\n{\"id\": %q, \"attack\": true}\n", burst.ID))
		report := filepath.Join(dir, "sweep.html")
		out, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log,
			"--sweep", "detectors.forbidden_burst.threshold=2,20,5000", "--labels", labels, "--report", report)
		if code != 0 || out != base {
			t.Fatalf("exit %d; the printed alerts changed with a sweep beside them:\n%s", code, lastLines(errOut, 12))
		}
		for _, row := range []string{`(?m)^  20 +1 +\d+ +1 of 1 +0  $`, `(?m)^  5000 +0 +\d+ +0 of 1 +0  ` + burst.ID + `$`} {
			if !regexp.MustCompile(row).MatchString(errOut) {
				t.Errorf("the sweep table lacks a row like %s:\n%s", row, lastLines(errOut, 8))
			}
		}
		page, err := os.ReadFile(report)
		if err != nil {
			t.Fatal(err)
		}
		if n := bytes.Count(page, []byte("<svg")); n != len(alerts)+1 {
			t.Errorf("the report has %d charts, want one per alert (%d) and the sweep's", n, len(alerts))
		}
		if !bytes.Contains(page, []byte("gatewatch replay --config")) {
			t.Error("the report does not say which command made it")
		}
	})

	t.Run("compare", func(t *testing.T) {
		loose := testConfig(t, replayDetectors+"  token_reuse: {max_devices: 16}\n")
		out, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log, "--compare", loose)
		if code != 0 || out != base {
			t.Fatalf("exit %d; the printed alerts changed with --compare:\n%s", code, lastLines(errOut, 12))
		}
		var reuse []string
		for _, a := range alerts {
			if a.Detector == detectors.TokenReuse {
				reuse = append(reuse, a.ID)
			}
		}
		if !strings.Contains(errOut, fmt.Sprintf("only in A (%s): %d\n", cfg, len(reuse))) || !strings.Contains(errOut, fmt.Sprintf("only in B (%s): 0\n", loose)) {
			t.Errorf("compare does not name the %d token_reuse incidents only the config raised:\n%s", len(reuse), lastLines(errOut, 12))
		}
		for _, id := range reuse {
			if !strings.Contains(errOut, "    "+id+" token_reuse ") {
				t.Errorf("compare does not list %s", id)
			}
		}
	})

	t.Run("events", func(t *testing.T) {
		from := burst.FirstSeen.Truncate(time.Second)
		to := burst.LastSeen.Add(time.Second).Truncate(time.Second)
		out, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log, "--events", "--key", burst.Key,
			"--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339))
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, lastLines(errOut, 8))
		}
		n := 0
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var ev struct {
				Time      time.Time `json:"time"`
				ClientKey string    `json:"client_key"`
				TokenFP   string    `json:"token_fp"`
				Status    int       `json:"status"`
			}
			if err := json.Unmarshal([]byte(l), &ev); err != nil {
				t.Fatalf("%q is no event: %v", l, err)
			}
			if ev.ClientKey != burst.Key && ev.TokenFP != burst.Key {
				t.Errorf("--key %s printed an event of %s", burst.Key, ev.ClientKey)
			}
			if ev.Time.Before(from) || !ev.Time.Before(to) {
				t.Errorf("event at %s outside [%s, %s)", ev.Time, from, to)
			}
			if ev.Status == 403 {
				n++
			}
		}
		if want := burst.Evidence.ForbiddenCount; want == 0 || n < want {
			t.Errorf("%d events answered 403 in the incident's window, the alert counted %d", n, want)
		}
	})

	t.Run("send", func(t *testing.T) {
		out, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log, "--send")
		if code != 0 || out != base {
			t.Fatalf("exit %d; stdout is not the alerts alone:\n%s\n%s", code, out, lastLines(errOut, 12))
		}
		if !strings.Contains(errOut, " -> archive: delivered") {
			t.Errorf("stderr does not say where the alerts went:\n%s", lastLines(errOut, 8))
		}
		got := slices.Sorted(func(yield func(string) bool) {
			for _, a := range alertsOf(t, readFileString(t, sent)) {
				if !yield(a.ID) {
					return
				}
			}
		})
		want := slices.Sorted(slices.Values(alertIDs(t, base)))
		if !slices.Equal(got, want) {
			t.Errorf("the receiver got %v, want the replay's alerts %v", got, want)
		}
		// A second --send of the same alerts delivers nothing new.
		if _, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log, "--send"); code != 0 {
			t.Fatalf("second --send: exit %d:\n%s", code, lastLines(errOut, 12))
		}
		if again := alertsOf(t, readFileString(t, sent)); len(again) != len(got) {
			t.Errorf("a second --send delivered %d alerts again", len(again)-len(got))
		}
	})
}

func readFileString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReplayReportPathCheckedFirst: a --report that cannot be written fails before the
// replay runs, and a filter that matches nothing says so.
func TestReplayReportPathCheckedFirst(t *testing.T) {
	_, lines := replayTraffic(t)
	log := filepath.Join(t.TempDir(), "waf.log")
	writeLog(t, log, lines, false)
	cfg := testConfig(t, replayDetectors)
	out, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log, "--report", filepath.Join(t.TempDir(), "no", "such", "dir", "r.html"))
	if code != 1 || out != "" || !strings.Contains(errOut, "--report") || strings.Contains(errOut, "events from") {
		t.Errorf("unwritable --report: exit %d, stdout %d bytes, want 1 before any replay:\n%s", code, len(out), lastLines(errOut, 6))
	}
	out, errOut, code = runCmd(t, "", "replay", "--config", cfg, "--input", log, "--events", "--client-ip", "192.0.2.1")
	if code != 0 || out != "" || !strings.Contains(errOut, "no event in the range matched --client-ip 192.0.2.1") {
		t.Errorf("a filter matching nothing: exit %d, stdout %d bytes:\n%s", code, len(out), lastLines(errOut, 6))
	}
}

// TestReplayLabelsCheckedFirst: a --labels file that cannot be used fails before the
// replay runs (nothing on stdout, no summary), and one holding no labels is warned of.
func TestReplayLabelsCheckedFirst(t *testing.T) {
	_, lines := replayTraffic(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "waf.log")
	writeLog(t, log, lines[:2000], false)
	cfg := testConfig(t, replayDetectors)
	conflicting := filepath.Join(dir, "conflicting.jsonl")
	writeFile(t, conflicting, "{\"id\": \"3f2a\", \"attack\": true}\n{\"id\": \"3f2a\", \"attack\": false}\n")
	empty := filepath.Join(dir, "empty.jsonl")
	writeFile(t, empty, "# nothing labelled yet\n")
	sweep := []string{"replay", "--config", cfg, "--input", log, "--sweep", "detectors.forbidden_burst.threshold=10,20"}
	for _, tc := range []struct {
		labels string
		want   string
	}{
		{filepath.Join(dir, "missing.jsonl"), "--labels: open "},
		{conflicting, "alert 3f2a is labelled attack false, and true on line 1"},
	} {
		out, errOut, code := runCmd(t, "", append(sweep, "--labels", tc.labels)...)
		if code != 1 || out != "" || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "events from") {
			t.Errorf("--labels %s: exit %d, stdout %d bytes, want 1 and %q before any replay:\n%s", tc.labels, code, len(out), tc.want, lastLines(errOut, 6))
		}
	}
	_, errOut, code := runCmd(t, "", append(sweep, "--labels", empty)...)
	if code != 0 || !strings.Contains(errOut, "warning: --labels "+empty+" holds no labels") {
		t.Errorf("--labels of an empty file: exit %d, want 0 and a warning:\n%s", code, lastLines(errOut, 8))
	}
}

// archivedMinute returns a config whose embedded store archived a minute of 60 events
// from t0, one a second, of keys k1 and k2 in turn.
func archivedMinute(t *testing.T) (cfg string, t0 time.Time) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.NewLocal(store.Config{DataDir: dir}, store.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t0 = time.Date(2026, 11, 2, 6, 0, 0, 0, time.UTC)
	var events []ingest.Event
	for i := range 60 {
		events = append(events, ingest.Event{Time: t0.Add(time.Duration(i) * time.Second), Source: ingest.FormatAWSWAF,
			ClientKey: []string{"k1", "k2"}[i%2], ClientIP: "203.0.113.7", Method: "GET", Route: "/v1/orders/{id}", Path: "/v1/orders/1", Status: 200})
	}
	if err := st.ArchiveEvents(context.Background(), events); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	return testConfig(t, replayDetectors+"store: {data_dir: "+dir+"}\n"), t0
}

// TestReplayRangeBesideTheData: events read and none within --from/--to is an error
// (exit 1) that shows where the events are, for --events too, with or without a
// filter; from the archive, a range that holds no event at all is one.
func TestReplayRangeBesideTheData(t *testing.T) {
	_, lines := replayTraffic(t)
	log := filepath.Join(t.TempDir(), "waf.log")
	writeLog(t, log, lines[:3000], false)
	cfg := testConfig(t, replayDetectors)
	archive, _ := archivedMinute(t)
	span := "the 3000 events read run from 2026-11-02T06:00:00Z to "
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"after the file", []string{"--config", cfg, "--input", log, "--from", "2027-01-01"}, "no event within --from 2027-01-01T00:00:00Z: " + span},
		{"before it", []string{"--config", cfg, "--input", log, "--to", "2026-11-01"}, "no event within --to 2026-11-01T00:00:00Z: " + span},
		{"a warm-up over it", []string{"--config", cfg, "--input", log, "--from", "2026-11-02T07:00Z", "--warmup", "1h"}, "no event within --from 2026-11-02T07:00:00Z: " + span},
		{"events", []string{"--config", cfg, "--input", log, "--events", "--from", "2027-01-01"}, "no event within --from 2027-01-01T00:00:00Z: " + span},
		{"events of a key", []string{"--config", cfg, "--input", log, "--events", "--key", "k1", "--from", "2027-01-01"}, "no event within --from 2027-01-01T00:00:00Z: " + span},
		{"the archive", []string{"--config", archive, "--archive", "--from", "2027-01-01", "--to", "2027-01-02"},
			"the archive holds no event within --from 2027-01-01T00:00:00Z --to 2027-01-02T00:00:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := runCmd(t, "", append([]string{"replay"}, tc.args...)...)
			if code != 1 || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "no event in the range matched") {
				t.Errorf("exit %d, want 1 and %q:\n%s", code, tc.want, lastLines(errOut, 4))
			}
		})
	}
	// Events within the range, none of the key's: a warning, not an error.
	if _, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--input", log, "--events", "--key", "k1"); code != 0 ||
		!strings.Contains(errOut, "no event in the range matched --key k1") {
		t.Errorf("a key without events: exit %d, want 0 and a warning:\n%s", code, lastLines(errOut, 4))
	}
}

// TestReplayArchiveSubsetWarns: the archive replays the events of one key through the
// detectors (the store reads them by its index), and says the alerts may differ from
// live's, naming the detectors that count more than one key's traffic.
func TestReplayArchiveSubsetWarns(t *testing.T) {
	cfg, t0 := archivedMinute(t)
	_, errOut, code := runCmd(t, "", "replay", "--config", cfg, "--archive", "--key", "k1",
		"--from", t0.Format(time.RFC3339), "--to", t0.Add(time.Hour).Format(time.RFC3339))
	if code != 0 || !strings.Contains(errOut, "replay: 30 events") {
		t.Fatalf("exit %d, want 0 and k1's 30 events:\n%s", code, lastLines(errOut, 14))
	}
	want := "warning: the detectors ran on the events of --key k1 alone, not on all the traffic: " +
		"auth_failure_spray, quiet_endpoint_spike, route_scan, token_reuse count traffic beyond them"
	if !strings.Contains(errOut, want) {
		t.Errorf("stderr lacks %q:\n%s", want, lastLines(errOut, 6))
	}
}

// TestReplayTimeForms: --from and --to take RFC 3339 with or without seconds, a lower
// case t and z, and a date for its midnight UTC.
func TestReplayTimeForms(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2026-11-02T08:00:00Z", time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)},
		{"2026-11-02T08:00:00.250Z", time.Date(2026, 11, 2, 8, 0, 0, 250e6, time.UTC)},
		{"2026-11-02T08:00Z", time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)},
		{"2026-11-02T09:30+01:30", time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)},
		{"2026-11-02t08:00:00z", time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)},
		{"2026-11-02", time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)},
		{"2026-11-02T08:00", time.Time{}}, // no zone: which one?
		{"2026-11-02 08:00:00Z", time.Time{}},
		{"1762070400", time.Time{}},
	} {
		var f timeFlag
		err := f.Set(tc.in)
		if tc.want.IsZero() != (err != nil) || !f.Equal(tc.want) || (err == nil && f.Location() != time.UTC) {
			t.Errorf("--from %s: %v, %v, want %v", tc.in, f.Time, err, tc.want)
		}
	}
	// The forms at work: a date and a minute, in lower case, cut a replay's events.
	_, lines := replayTraffic(t)
	log := filepath.Join(t.TempDir(), "waf.log")
	writeLog(t, log, lines[:3000], false)
	out, errOut, code := runCmd(t, "", "replay", "--config", testConfig(t, replayDetectors), "--input", log, "--events",
		"--from", "2026-11-02", "--to", "2026-11-02t06:05z")
	if code != 0 || out == "" || !strings.Contains(errOut, "events from") {
		t.Fatalf("exit %d, %d bytes of events:\n%s", code, len(out), lastLines(errOut, 4))
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct{ Time time.Time }
		if err := json.Unmarshal([]byte(l), &ev); err != nil || !ev.Time.Before(time.Date(2026, 11, 2, 6, 5, 0, 0, time.UTC)) {
			t.Fatalf("event %s after --to 2026-11-02t06:05z (%v)", l, err)
		}
	}
}

// TestReplayFilterValues: what --key and --client-ip take as they are, and the values
// that can match no event, with what to give instead.
func TestReplayFilterValues(t *testing.T) {
	for _, tc := range []struct {
		flag, v, want string // want: "" when taken
		not           string // what the message must not say
	}{
		{"--key", "1e3b89e77b4f1e40732340c6ca506edf", "", ""},
		{"--key", "partner-sync", "", ""}, // a Kong consumer
		{"--key", "172.157.59.154", "give --client-ip 172.157.59.154", ""},
		{"--key", "2001:db8:1:2::/64", "give --client-ip 2001:db8:1:2::/64", ""},
		{"--key", "210.145.177.37 GET /v1/invoices/{id}", "--client-ip ADDRESS for a client known by its address", ""},
		{"--client-ip", "203.0.113.7", "", ""},
		{"--client-ip", "2001:db8:1:2::9", "", ""},
		{"--client-ip", "2001:db8:1:2::/64", "", ""},
		{"--client-ip", "203.0.113.0/24", "", ""},
		{"--client-ip", "210.145.177", "is --client-ip 210.145.177.0/24", ""},
		{"--client-ip", "210.145", "is --client-ip 210.145.0.0/16", ""},
		{"--client-ip", "210.145.177.", "is no IP address or network", "begins"},
		{"--client-ip", "210.145.300", "is no IP address or network", "begins"},
		{"--client-ip", "client-0012", "is no IP address or network", "begins"},
	} {
		got := keyMistake(tc.v)
		if tc.flag == "--client-ip" {
			got = clientIPMistake(tc.v)
		}
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) || (tc.not != "" && strings.Contains(got, tc.not)) {
			t.Errorf("%s %s: %q, want %q", tc.flag, tc.v, got, tc.want)
		}
	}
}

// TestReplayErrorsNameTheCommandOnce: the replay package's errors begin with
// "replay: ", as the command's line does: it says so once.
func TestReplayErrorsNameTheCommandOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String() // nothing listens there once closed
	l.Close()
	_, errOut, code := runCmd(t, "", "replay", "--config", testConfig(t, replayDetectors), "--kafka", closed, "--topic", "waf-logs",
		"--from", "2026-11-02T06:00Z", "--to", "2026-11-02T07:00Z")
	if code != 1 || !strings.Contains(errOut, "gatewatch replay: kafka: partitions of waf-logs: ") || strings.Contains(errOut, "replay: replay:") {
		t.Errorf("exit %d, want 1 and the error named once:\n%s", code, lastLines(errOut, 3))
	}
}

// TestReplayUsageMistakes: flags that do not go together are a usage mistake (exit 2)
// that says what to change, before anything is read.
func TestReplayUsageMistakes(t *testing.T) {
	cfg := testConfig(t, replayDetectors)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--input", "x.log", "--kafka", "127.0.0.1:9092", "--from", "2026-03-01T00:00:00Z", "--to", "2026-03-01T01:00:00Z"}, "alternatives"},
		{[]string{"--kafka", "127.0.0.1:9092", "--topic", "waf-logs"}, "give --from and --to"},
		{[]string{"--archive", "--from", "2026-03-01T00:00:00Z"}, "give --from and --to"},
		{[]string{"--input", "x.log", "--topic", "waf-logs"}, "--topic goes with --kafka"},
		{[]string{"--input", "x.log", "--warmup", "24h"}, "give --from"},
		{[]string{"--input", "x.log", "--labels", "l.jsonl"}, "--labels goes with --sweep"},
		{[]string{"--input", "x.log", "--compare", "other.yaml", "--sweep", "detectors.forbidden_burst.threshold=1,2"}, "--compare and --sweep are alternatives"},
		{[]string{"--input", "x.log", "--events", "--sweep", "detectors.forbidden_burst.threshold=1,2"}, "--events prints events"},
		{[]string{"--input", "-", "--report", "r.html"}, "not stdin"},
		{[]string{"--from", "2026-03-01T00:00:00Z"}, "name what to replay"},
		{[]string{"--input", "x.log", "--events", "--key", "5b86a1 GET /v1/invoices/{id}"}, "--key CLIENT --route"},
		{[]string{"--input", "x.log", "--events", "--key", "172.157.59.154"}, "--key 172.157.59.154 is an IP address"},
		{[]string{"--input", "x.log", "--events", "--key", "2001:db8:1:2::/64"}, "give --client-ip 2001:db8:1:2::/64"},
		{[]string{"--input", "x.log", "--events", "--client-ip", "nonsense"}, "--client-ip nonsense is no IP address or network"},
		{[]string{"--input", "x.log", "--events", "--client-ip", "203.0.113.7", "--client-ip", "210.145.177"}, "every address that begins 210.145.177. is --client-ip 210.145.177.0/24"},
		{[]string{"--input", "x.log", "--events", "--client-ip", "10"}, "is --client-ip 10.0.0.0/8"},
		{[]string{"--input", "x.log", "--events", "--client-ip", "2001:db8::/129"}, "is no IP address or network"},
		{[]string{"--input", "x.log", "--key", "5b86a1"}, "choose the events --events prints: add --events"},
		{[]string{"--input", "x.log", "--route", "GET /v1/invoices/{id}"}, "choose the events --events prints: add --events"},
		{[]string{"--kafka", "127.0.0.1:9092", "--from", "2026-03-01T00:00:00Z", "--to", "2026-03-01T01:00:00Z", "--client-ip", "203.0.113.7"}, "add --events"},
		{[]string{"--input", "x.log", "--format", "bogus"}, "unknown format \"bogus\""},
		{[]string{"--input", "x.log", "--set", "detectors.forbidden_burst.threshold=ten"}, "bad value \"ten\""},
		{[]string{"--input", "x.log", "--set", "detectors.forbidden_burst.treshold=5"}, "known here:"},
		{[]string{"--input", "x.log", "--sweep", "detectors.forbidden_burst.threshold=1,,2"}, "an empty value"},
		{[]string{"--input", "x.log", "--sweep", "detectors.forbidden_burst.threshold"}, "want detectors.NAME.PARAM=V1,V2,..."},
		{[]string{"--input", "x.log", "--sweep", "detectors.nope.x=1,2"}, "unknown setting \"nope\""},
		{[]string{"--input", "x.log", "--sweep", "detectors.forbidden_burst.threshold=10,ten"}, "bad value \"ten\""},
		{[]string{"--input", "x.log", "--from", "2026-11-02T08:00"}, "such as 2026-11-02T08:00:00Z"},
		{[]string{"--input", "x.log", "--to", "02/11/2026"}, "such as 2026-11-02T08:00:00Z"},
		{[]string{"--input", "x.log", "--from", "2026-11-02T09:00Z", "--to", "2026-11-02T08:00Z"}, "--to 2026-11-02T08:00:00Z is not after --from 2026-11-02T09:00:00Z"},
		{[]string{"--input", "x.log", "--from", "2026-11-02", "--warmup", "1d"}, "such as 24h"},
	} {
		_, errOut, code := runCmd(t, "", append([]string{"replay", "--config", cfg}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("replay %v: exit %d, want 2 and %q:\n%s", tc.args, code, tc.want, lastLines(errOut, 4))
		}
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// runCmd runs gatewatch in-process with stdin and returns stdout, stderr and the exit code.
func runCmd(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut lockedBuffer
	code := run(context.Background(), &cmdEnv{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut}, args)
	return out.String(), errOut.String(), code
}

// lockedBuffer is a bytes.Buffer that several goroutines may write, as the commands'
// background goroutines (a Kafka client's logger) write to stderr while the command
// prints; os.Stderr takes that, a bare bytes.Buffer does not.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestUsage(t *testing.T) {
	_, errOut, code := runCmd(t, "")
	if code != 2 || !strings.Contains(errOut, "Usage:") {
		t.Errorf("no args: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = runCmd(t, "", "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	for _, c := range commands() {
		_, errOut, code := runCmd(t, "", c.name, "--help")
		if code != 0 || !strings.Contains(errOut, "Usage: gatewatch "+c.name) {
			t.Errorf("%s --help: exit %d, stderr %q", c.name, code, errOut)
		}
		// Every command's help says what it does and shows it in use.
		if len(c.description) < 40 || !strings.Contains(errOut, c.description) {
			t.Errorf("%s --help lacks a description:\n%s", c.name, errOut)
		}
		if !strings.HasPrefix(c.example, "gatewatch "+c.name) && !strings.Contains(c.example, "| gatewatch "+c.name) {
			t.Errorf("%s: example %q does not run the command", c.name, c.example)
		}
		if !strings.Contains(errOut, "Example:\n  "+c.example) {
			t.Errorf("%s --help lacks its example:\n%s", c.name, errOut)
		}
	}
	_, errOut, code = runCmd(t, "", "parse", "--nope")
	if code != 2 || !strings.Contains(errOut, "flag provided but not defined") {
		t.Errorf("bad flag: exit %d, stderr %q", code, errOut)
	}
}

func TestVersion(t *testing.T) {
	out, _, code := runCmd(t, "", "version")
	if code != 0 || !strings.HasPrefix(out, "gatewatch ") || !strings.Contains(out, "commit ") || !strings.Contains(out, "go1.") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	version, commit = "1.4.0", "0123abc" // as -ldflags "-X main.version=... -X main.commit=..." sets them
	defer func() { version, commit = "", "" }()
	out, _, _ = runCmd(t, "", "version")
	if !strings.HasPrefix(out, "gatewatch 1.4.0\ncommit 0123abc\n") {
		t.Errorf("version with build-time values: %q", out)
	}
}

func TestDemoRejectsImpossibleRates(t *testing.T) {
	for _, rate := range []string{"0", "-5", "NaN"} {
		out, errOut, code := runCmd(t, "", "demo", "--rate", rate)
		if code != 2 || out != "" || !strings.Contains(errOut, "--rate must be positive") {
			t.Errorf("demo --rate %s: exit %d, stdout %d bytes, stderr %q", rate, code, len(out), errOut)
		}
	}
}

func TestGenerateRejectsImpossibleFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--duration", "0s"}, {"--duration", "-1h"}, {"--rate", "0"}, {"--rate", "-5"}, {"--rate", "NaN"}, {"--clients", "0"},
	} {
		out, errOut, code := runCmd(t, "", append([]string{"generate"}, args...)...)
		if code != 2 || out != "" || !strings.Contains(errOut, args[0]+" must be positive") {
			t.Errorf("generate %v: exit %d, stdout %d bytes, stderr %q", args, code, len(out), errOut)
		}
	}
}

// TestGenerateStartTakesWhatReplayFromTakes: --start reads the forms of replay's
// --from, so a scenario and the replay of it take the same times.
func TestGenerateStartTakesWhatReplayFromTakes(t *testing.T) {
	for start, want := range map[string]string{
		"2026-11-02T08:00Z":      "from 2026-11-02T08:00:00Z",
		"2026-11-02t09:00+01:00": "from 2026-11-02T08:00:00Z",
		"2026-11-02":             "from 2026-11-02T00:00:00Z",
	} {
		_, errOut, code := runCmd(t, "", "generate", "--start", start, "--duration", "1m", "--attacks", "")
		if code != 0 || !strings.Contains(errOut, want) {
			t.Errorf("generate --start %s: exit %d, want the records %s:\n%s", start, code, want, errOut)
		}
	}
	if _, errOut, code := runCmd(t, "", "generate", "--start", "yesterday"); code != 2 || !strings.Contains(errOut, "want an RFC 3339 time") {
		t.Errorf("generate --start yesterday: exit %d, want 2 and the forms it takes:\n%s", code, errOut)
	}
}

// TestRunChecksWhatItReadsFirst: a secret file that is missing stops run before it
// starts anything, with the place of the setting in the file, as check-config reports
// it.
func TestRunChecksWhatItReadsFirst(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "gatewatch.yaml"), `ingest:
  kafka: {brokers: [127.0.0.1:1], group: g, topics: [{name: waf-logs, format: awswaf}]}
  token_secret_file: `+filepath.Join(dir, "no-such-secret")+`
store:
  data_dir: `+filepath.Join(dir, "data")+`
admin:
  listen: 127.0.0.1:0
`)
	_, errOut, code := runCmd(t, "", "run", "--config", cfg)
	if code != 1 || !strings.Contains(errOut, "gatewatch.yaml:3:3: ingest.token_secret_file") || strings.Contains(errOut, "listening") {
		t.Errorf("exit %d, want 1 with the setting's place and nothing started:\n%s", code, errOut)
	}
}

// TestGenerateStatesTheSpanItWrote: the span generate reports is that of the records it
// wrote, which attacks near the end of --duration run past.
func TestGenerateStatesTheSpanItWrote(t *testing.T) {
	out, errOut, code := runCmd(t, "", "generate", "--duration", "10m")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last struct {
		Timestamp int64 `json:"timestamp"`
	}
	if code != 0 || json.Unmarshal([]byte(lines[len(lines)-1]), &last) != nil {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	if want := " to " + time.UnixMilli(last.Timestamp).UTC().Format(time.RFC3339) + ","; !strings.Contains(errOut, want) {
		t.Errorf("generate says %q, want the last record's time %q", strings.SplitN(errOut, "\n", 2)[0], want)
	}
}

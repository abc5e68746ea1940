package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// TestNoRawCredentialLeavesParse feeds records carrying known tokens and API keys, in
// every format and through auto, with rejected lines among them, and proves that no raw
// value appears on stdout or stderr, while each credential's fingerprint does.
func TestNoRawCredentialLeavesParse(t *testing.T) {
	reqs, _, err := synth.Generate(synth.Config{Duration: 5 * time.Minute, Rate: 2, Seed: 11, Attacks: synth.Attacks})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "hmac")
	os.WriteFile(secretFile, []byte("leak-test-secret-0123456789abcdef"), 0o600)
	cfgFile := filepath.Join(dir, "gatewatch.yaml")
	os.WriteFile(cfgFile, []byte("ingest:\n  token_secret_file: "+secretFile+"\n"), 0o600)

	secrets := map[string]bool{}
	for _, r := range reqs {
		secrets[r.Token] = true
		secrets[r.APIKey] = true
	}
	for _, format := range synth.Formats {
		for _, as := range []string{format, ingest.FormatAuto} {
			t.Run(format+"-as-"+as, func(t *testing.T) {
				var in strings.Builder
				for i := range reqs {
					line, _ := synth.AppendRecord(nil, format, &reqs[i])
					in.Write(line)
					in.WriteByte('\n')
					if i%50 == 0 { // a rejected record that still carries the credential
						cut := string(line[:len(line)/2])
						in.WriteString(cut + "\n")
						in.WriteString("\xff" + string(line) + "\n")
					}
				}
				out, errOut, code := runCmd(t, in.String(), "parse", "--config", cfgFile, "--format", as, "--input", "-", "--max-reject-ratio", "0.1")
				if code != 0 {
					t.Fatalf("exit %d: %s", code, errOut)
				}
				for s := range secrets {
					if strings.Contains(out, s) || strings.Contains(errOut, s) {
						t.Fatalf("raw credential %q... appears in the output", s[:8])
					}
				}
				sc := bufio.NewScanner(strings.NewReader(out))
				sc.Buffer(nil, 1<<20)
				n := 0
				for sc.Scan() {
					var ev map[string]any
					if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
						t.Fatalf("stdout line %d: %v", n+1, err)
					}
					if fp, _ := ev["token_fp"].(string); len(fp) != 32 {
						t.Fatalf("event %d has token_fp %q", n+1, fp)
					}
					n++
				}
				if n != len(reqs) {
					t.Errorf("%d events for %d records", n, len(reqs))
				}
				if want := fmt.Sprintf("parse: %d events, ", len(reqs)); !strings.Contains(errOut, want) {
					t.Errorf("stderr lacks %q:\n%.500s", want, errOut)
				}
				if !strings.Contains(errOut, "stdin:") || !strings.Contains(errOut, "rejected") {
					t.Errorf("rejected records are not reported on stderr:\n%.500s", errOut)
				}
			})
		}
	}
}

// synthLines returns generated traffic (with every attack) as records of format.
func synthLines(t *testing.T, format string, cfg synth.Config) []string {
	t.Helper()
	reqs, _, err := synth.Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lines := make([]string, len(reqs))
	for i := range reqs {
		b, err := synth.AppendRecord(nil, format, &reqs[i])
		if err != nil {
			t.Fatal(err)
		}
		lines[i] = string(b)
	}
	return lines
}

// TestParseRefusesTheWrongFormat is the run a new user made: AWS WAF logs read with
// --format nginx, apigw or envoy. Every record is rejected as missing_field, the command
// says so and exits 1 instead of printing empty events and "0 rejected".
func TestParseRefusesTheWrongFormat(t *testing.T) {
	in := strings.Join(synthLines(t, ingest.FormatAWSWAF, synth.Config{Duration: 10 * time.Minute, Rate: 2, Seed: 5}), "\n")
	for _, format := range []string{ingest.FormatNginx, ingest.FormatAPIGateway, ingest.FormatEnvoy} {
		out, errOut, code := runCmd(t, in, "parse", "--format", format, "--input", "-")
		if code != 1 || out != "" {
			t.Errorf("--format %s: exit %d, %d bytes of events", format, code, len(out))
		}
		for _, want := range []string{"parse: 0 events, ", "rejected (100.0%, over --max-reject-ratio 0.01), most as missing_field", "no client", "is --format right?"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("--format %s: stderr lacks %q:\n%.1500s", format, want, lastLines(errOut, 8))
			}
		}
	}
	if _, errOut, code := runCmd(t, in, "parse", "--input", "-"); code != 0 {
		t.Errorf("auto: exit %d:\n%s", code, lastLines(errOut, 8))
	}
	// A looser limit is the operator's call.
	if _, _, code := runCmd(t, in, "parse", "--format", "nginx", "--input", "-", "--max-reject-ratio", "1"); code != 0 {
		t.Errorf("--max-reject-ratio 1: exit %d", code)
	}
	if _, errOut, code := runCmd(t, in, "parse", "--input", "-", "access.log"); code != 2 || !strings.Contains(errOut, "stdin (-) cannot be read together") {
		t.Errorf("stdin and a file: exit %d, %q", code, errOut)
	}
	for _, bad := range []string{"2", "-1", "NaN"} { // NaN would turn the check off
		if _, errOut, code := runCmd(t, in, "parse", "--input", "-", "--max-reject-ratio", bad); code != 2 || !strings.Contains(errOut, "between 0 and 1") {
			t.Errorf("--max-reject-ratio %s: exit %d, %q", bad, code, errOut)
		}
	}
}

// TestParseSetsContainerStderrAside: a pod's log holds what its container wrote to
// stderr next to its access log (nginx's notices, an ingress controller's own log).
// Those lines go to the dead letters as stderr and do not count against
// --max-reject-ratio; a log of nothing else is an error.
func TestParseSetsContainerStderrAside(t *testing.T) {
	var in strings.Builder
	for i := range 200 {
		fmt.Fprintf(&in, "2025-06-14T09:21:%02d.5Z stdout F 203.0.113.7 - - [14/Jun/2025:09:21:%02d +0000] \"GET /v1/items/%d HTTP/1.1\" 200 512 \"-\" \"curl/8.5.0\"\n", i%60, i%60, i)
		if i%20 == 0 {
			fmt.Fprintf(&in, "2025-06-14T09:21:%02d.6Z stderr F 2025/06/14 09:21:%02d [notice] 1#1: signal process started\n", i%60, i%60)
		}
	}
	out, errOut, code := runCmd(t, in.String(), "parse", "--input", "-")
	if code != 0 || strings.Count(out, "\n") != 200 || !strings.Contains(errOut, "rejected as stderr: 10") {
		t.Errorf("exit %d, %d events:\n%s", code, strings.Count(out, "\n"), lastLines(errOut, 6))
	}
	var only strings.Builder
	for range 5 {
		only.WriteString("2025-06-14T09:21:44.6Z stderr F 2025/06/14 09:21:44 [notice] 1#1: signal process started\n")
	}
	if _, errOut, code := runCmd(t, only.String(), "parse", "--input", "-"); code != 1 || !strings.Contains(errOut, "lines containers wrote to stderr") {
		t.Errorf("stderr only: exit %d:\n%s", code, lastLines(errOut, 6))
	}
}

// TestPercent: a share just over a limit does not round to the limit.
func TestPercent(t *testing.T) {
	for _, tc := range []struct {
		n, total int64
		want     string
	}{{25, 2429, "1.03%"}, {1, 100, "1.0%"}, {3, 2000, "0.15%"}, {1, 3, "33.3%"}, {100, 100, "100.0%"}, {0, 5, "0.0%"}} {
		if got := percent(tc.n, tc.total); got != tc.want {
			t.Errorf("percent(%d, %d) = %s, want %s", tc.n, tc.total, got, tc.want)
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestParseReadsContainerLogs: the same traffic as Kubernetes and Docker write it gives
// the same events as the bare log.
// testConfig writes a config file with a token secret (so fingerprints are the same in
// every run) and extra YAML, and returns its path.
func testConfig(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	secret := filepath.Join(dir, "token-hmac")
	os.WriteFile(secret, []byte("cmd-test-secret-0123456789abcdef"), 0o600)
	path := filepath.Join(dir, "gatewatch.yaml")
	os.WriteFile(path, []byte("ingest:\n  token_secret_file: "+secret+"\n"+extra), 0o600)
	return path
}

func TestParseReadsContainerLogs(t *testing.T) {
	lines := synthLines(t, ingest.FormatNginx, synth.Config{Duration: 10 * time.Minute, Rate: 2, Seed: 6, Attacks: synth.Attacks})
	cfg := testConfig(t, "")
	bare, _, code := runCmd(t, strings.Join(lines, "\n"), "parse", "--config", cfg, "--format", "nginx", "--input", "-")
	if code != 0 || bare == "" {
		t.Fatalf("bare: exit %d", code)
	}
	var cri, docker strings.Builder
	for _, l := range lines {
		cri.WriteString("2026-11-02T00:00:00.000000000Z stdout F " + l + "\n")
		b, _ := json.Marshal(map[string]string{"log": l + "\n", "stream": "stdout", "time": "2026-11-02T00:00:00.000000000Z"})
		docker.Write(append(b, '\n'))
	}
	for name, in := range map[string]string{"CRI": cri.String(), "Docker": docker.String()} {
		for _, format := range []string{"nginx", "auto"} {
			out, errOut, code := runCmd(t, in, "parse", "--config", cfg, "--format", format, "--input", "-")
			if code != 0 || out != bare {
				t.Errorf("%s as %s: exit %d, events differ from the bare log's:\n%s", name, format, code, lastLines(errOut, 5))
			}
		}
	}
}

// TestParseReportsDamagedInputs reads a directory with a truncated gzip: the events of
// every file, the truncated one's up to the damage, are printed, the damage is named,
// and the command exits 1.
func TestParseReportsDamagedInputs(t *testing.T) {
	dir := t.TempDir()
	lines := synthLines(t, ingest.FormatNginx, synth.Config{Duration: 30 * time.Minute, Rate: 4, Seed: 7})
	half := len(lines) / 2
	os.WriteFile(filepath.Join(dir, "access.log"), []byte(strings.Join(lines[half:], "\n")+"\n"), 0o644)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(strings.Join(lines[:half], "\n") + "\n"))
	zw.Close()
	os.WriteFile(filepath.Join(dir, "access.log.1.gz"), gz.Bytes()[:gz.Len()*3/4], 0o644)

	out, errOut, code := runCmd(t, "", "parse", "--format", "nginx", "--input", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, lastLines(errOut, 8))
	}
	events := strings.Count(out, "\n")
	if events <= len(lines)-half || events >= len(lines) {
		t.Errorf("%d events for %d records, of which %d in the damaged file", events, len(lines), half)
	}
	for _, want := range []string{"access.log.1.gz: damaged after line", "1 of 2 inputs damaged", "DAMAGED"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, lastLines(errOut, 8))
		}
	}
}

// interruptAfterFirstBatch runs gatewatch with args on a stdin that stays open, feeds it
// lines (a rejected one among the first), waits until the first batch was handled (its
// rejection reported), and cancels the command's context as SIGINT does.
func interruptAfterFirstBatch(t *testing.T, lines []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	var errOut lockedBuffer
	done := make(chan int)
	go func() { done <- run(ctx, &cmdEnv{stdin: pr, stdout: &out, stderr: &errOut}, args) }()
	go func() {
		pw.Write([]byte(lines[0] + "\nnot a log line\n" + strings.Join(lines[1:], "\n") + "\n"))
	}()
	for !strings.Contains(errOut.String(), "rejected") {
		select {
		case c := <-done:
			t.Fatalf("exit %d before the signal:\n%s", c, errOut.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	code = <-done
	pw.Close()
	return out.String(), errOut.String(), code
}

// TestParseInterrupted: SIGINT while parse reads a stream that has not ended. The events
// handled so far are written whole, the summary is printed, and the exit status is 130.
func TestParseInterrupted(t *testing.T) {
	lines := synthLines(t, ingest.FormatNginx, synth.Config{Duration: 20 * time.Minute, Rate: 2, Seed: 8})
	out, errOut, code := interruptAfterFirstBatch(t, lines, "parse", "--format", "nginx", "--input", "-")
	if code != 130 {
		t.Fatalf("exit %d, want 130:\n%s", code, lastLines(errOut, 5))
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if !json.Valid([]byte(l)) {
			t.Fatalf("a cut or invalid line on stdout: %q", l)
		}
		n++
	}
	if n < 1000 || !strings.Contains(errOut, fmt.Sprintf("parse: %d events, 1 rejected", n)) || !strings.Contains(errOut, "interrupted") {
		t.Errorf("%d events written; summary:\n%s", n, lastLines(errOut, 5))
	}
}

// TestSIGTERMStopsParseCleanly sends a real SIGTERM to a gatewatch process (this test
// binary running main) that parses a pipe.
func TestSIGTERMStopsParseCleanly(t *testing.T) {
	lines := synthLines(t, ingest.FormatNginx, synth.Config{Duration: 20 * time.Minute, Rate: 2, Seed: 9})
	cmd := exec.Command(os.Args[0], "parse", "--format", "nginx", "--input", "-")
	cmd.Env = append(os.Environ(), "GATEWATCH_TEST_MAIN=1")
	stdin, _ := cmd.StdinPipe()
	var out bytes.Buffer
	var errOut lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go stdin.Write([]byte(lines[0] + "\nnot a log line\n" + strings.Join(lines[1:], "\n") + "\n"))
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(errOut.String(), "rejected") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	stdin.Close()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("exit %v, want status 130:\n%s", err, lastLines(errOut.String(), 5))
	}
	n := strings.Count(out.String(), "\n")
	if n < 1000 || !strings.Contains(errOut.String(), fmt.Sprintf("parse: %d events, 1 rejected", n)) {
		t.Errorf("%d events written; stderr:\n%s", n, lastLines(errOut.String(), 5))
	}
}

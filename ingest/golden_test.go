package ingest

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*/*.golden from current output")

// testSecret is the token secret of every parser test; testdata records use it to prove
// which fingerprint a token gets.
const testSecret = "gatewatch-test-secret-0123456789"

// testNow is the clock of parser tests: records up to a day after it are accepted.
var testNow = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func testParserOptions(t testing.TB) ParserOptions {
	t.Helper()
	s, err := NewTokenSecret([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return ParserOptions{Secret: s, Now: func() time.Time { return testNow }}
}

func mustParser(t testing.TB, format string) Parser {
	t.Helper()
	p, err := NewParser(format, testParserOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestGolden parses every testdata/<format>/*.log file line by line with its format's
// parser and compares the events (or rejection reasons) with the .golden file beside it.
// Lines starting with "#" in a .log file are comments naming the source of the record.
func TestGolden(t *testing.T) {
	logs, err := filepath.Glob("testdata/*/*.log")
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) == 0 {
		t.Fatal("no testdata/*/*.log files")
	}
	for _, path := range logs {
		format := filepath.Base(filepath.Dir(path))
		t.Run(strings.TrimPrefix(path, "testdata/"), func(t *testing.T) {
			p := mustParser(t, format)
			got := parseFileForGolden(t, p, path)
			golden := strings.TrimSuffix(path, ".log") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./ingest -run Golden -update and review the diff)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s (run with -update, review the diff):\n%s", path, golden, lineDiff(want, got))
			}
		})
	}
}

func parseFileForGolden(t *testing.T, p Parser, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 || line[0] == '#' {
			continue
		}
		var ev Event
		if err := p.Parse(&ev, line); err != nil && !Kept(err) {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("%s:%d: error %T is not a *ParseError: %v", path, n, err, err)
			}
			out = append(out, `{"line":`...)
			out = append(out, []byte(itoa(n))...)
			out = append(out, `,"rejected":`...)
			out = AppendJSONString(out, pe.Reason)
			out = append(out, "}\n"...)
			continue
		}
		checkEventInvariants(t, &ev, line)
		out = ev.AppendJSON(out)
		out = append(out, '\n')
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

var (
	countryRE = regexp.MustCompile(`^([A-Z]{2})?$`)
	fpRE      = regexp.MustCompile(`^([0-9a-f]{32})?$`)
)

// checkEventInvariants holds for every accepted record of every format.
func checkEventInvariants(t *testing.T, ev *Event, line []byte) {
	t.Helper()
	if ev.Time.IsZero() || ev.Time.Location() != time.UTC {
		t.Errorf("Parse(%.200q): time %v is zero or not UTC", line, ev.Time)
	}
	if !countryRE.MatchString(ev.Country) {
		t.Errorf("Parse(%.200q): country %q is not empty or two upper-case letters", line, ev.Country)
	}
	if !fpRE.MatchString(ev.TokenFP) {
		t.Errorf("Parse(%.200q): token_fp %q is not 32 hex digits", line, ev.TokenFP)
	}
	if ev.Status < 0 || ev.Status > 999 {
		t.Errorf("Parse(%.200q): status %d", line, ev.Status)
	}
	if strings.ContainsAny(ev.Path, "?#") {
		t.Errorf("Parse(%.200q): path %q keeps its query", line, ev.Path)
	}
}

// lineDiff shows the first lines where want and got differ.
func lineDiff(want, got []byte) string {
	w, g := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 5; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl + "\n")
			shown++
		}
	}
	return b.String()
}

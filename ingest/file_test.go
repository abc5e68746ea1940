package ingest_test

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
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
)

func nginxLine(i int) string {
	t := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second)
	return fmt.Sprintf(`203.0.113.%d - - [%s] "GET /v1/items/%d HTTP/1.1" 200 512 "-" "client/%d"`,
		i%250, t.Format("02/Jan/2006:15:04:05 -0700"), i, i)
}

func writeLines(t *testing.T, path string, lines []string, gz bool) {
	t.Helper()
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	for _, l := range lines {
		io.WriteString(w, l+"\n")
	}
	if zw != nil {
		zw.Close()
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

type memLetters struct{ got []ingest.DeadLetter }

func (m *memLetters) Put(_ context.Context, l []ingest.DeadLetter) error {
	m.got = append(m.got, l...)
	return nil
}

func testSecret(t testing.TB) ingest.TokenSecret {
	t.Helper()
	s, err := ingest.NewTokenSecret([]byte("file-source-test-secret-0123"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// drain reads a source to the end and returns the client user agents in order.
func drain(t *testing.T, src interface {
	Next(context.Context) (*ingest.Batch, error)
}) []string {
	t.Helper()
	var got []string
	for {
		b, err := src.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range b.Events {
			got = append(got, ev.UserAgent)
		}
	}
}

func TestFileSourceKeepsOrderAcrossWorkersAndFiles(t *testing.T) {
	dir := t.TempDir()
	var want []string
	var a, b []string
	for i := range 5000 {
		want = append(want, fmt.Sprintf("client/%d", i))
		if i < 3000 {
			a = append(a, nginxLine(i))
		} else {
			b = append(b, nginxLine(i))
		}
	}
	writeLines(t, filepath.Join(dir, "a.log"), a, false)
	writeLines(t, filepath.Join(dir, "b.log.gz"), b, true)
	writeLines(t, filepath.Join(dir, ".hidden"), []string{"junk"}, false)
	for _, workers := range []int{1, 2, 7} {
		src, err := ingest.NewFileSource([]string{dir}, ingest.FileOptions{
			Format: ingest.FormatNginx, Parser: ingest.ParserOptions{Secret: testSecret(t)}, Workers: workers, BatchSize: 777,
			Registerer: prometheus.NewPedanticRegistry(),
		})
		if err != nil {
			t.Fatal(err)
		}
		got := drain(t, src)
		src.Close()
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("workers=%d: %d events out of order or missing (first %v)", workers, len(got), got[:min(3, len(got))])
		}
	}
}

func TestFileSourceDeadLettersEveryBadLineAndGoesOn(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("x", 3000)    // over the 2 KiB cap below, within one read
	huge := strings.Repeat("y", 300<<10) // over the cap and the read buffer: streamed, kept capped
	lines := []string{
		nginxLine(1),
		"this is not a log line",
		long,
		nginxLine(2),
		huge,
		"203.0.113.1 - - [99/Foo/2024:10:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"x\"",
		string([]byte{0xff, 0xfe, 'a'}),                    // repaired, and still not a log line
		strings.Replace(nginxLine(3), "/v1", "/\xffv1", 1), // repaired and kept: a stray byte must not hide a request
		nginxLine(4),
	}
	path := filepath.Join(dir, "in.log")
	writeLines(t, path, lines, false)
	letters := &memLetters{}
	src, err := ingest.NewFileSource([]string{path}, ingest.FileOptions{
		Format:      ingest.FormatNginx,
		Parser:      ingest.ParserOptions{Secret: testSecret(t), MaxLineBytes: 2048},
		DeadLetters: letters,
		Registerer:  prometheus.NewPedanticRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	got := drain(t, src)
	if want := "client/1,client/2,client/3,client/4"; strings.Join(got, ",") != want {
		t.Errorf("events %v, want %s", got, want)
	}
	wantReasons := map[int64]string{2: ingest.ReasonBadSyntax, 3: ingest.ReasonOversized, 5: ingest.ReasonOversized, 6: ingest.ReasonBadTimestamp, 7: ingest.ReasonBadSyntax, 8: ingest.ReasonBadUTF8}
	if len(letters.got) != len(wantReasons) {
		t.Fatalf("%d dead letters, want %d: %+v", len(letters.got), len(wantReasons), letters.got)
	}
	for _, dl := range letters.got {
		if want := wantReasons[dl.Offset]; dl.Reason != want {
			t.Errorf("line %d: reason %q, want %q (%s)", dl.Offset, dl.Reason, want, dl.Error)
		}
		if dl.Source != path || dl.Partition != -1 || dl.Format != "nginx" {
			t.Errorf("line %d: source %q partition %d format %q", dl.Offset, dl.Source, dl.Partition, dl.Format)
		}
		if dl.Offset == 3 && dl.Record != long {
			t.Errorf("oversized line within one read kept %d bytes, want all %d", len(dl.Record), len(long))
		}
		if dl.Offset == 5 && (len(dl.Record) != 2049 || !strings.HasPrefix(huge, dl.Record)) {
			t.Errorf("runaway line kept %d bytes, want its first 2049", len(dl.Record))
		}
	}
}

func TestFileSourceStdinAndLongLinesUnderTheCap(t *testing.T) {
	// A line longer than the read buffer but under the cap must come through whole.
	long := nginxLine(1)
	long = strings.Replace(long, "client/1", "client/"+strings.Repeat("y", 400<<10), 1)
	in := strings.NewReader(long + "\r\n" + nginxLine(2)) // CRLF, and no final newline
	src, err := ingest.NewFileSource([]string{"-"}, ingest.FileOptions{
		Format: ingest.FormatNginx, Parser: ingest.ParserOptions{Secret: testSecret(t)}, Stdin: in,
		Registerer: prometheus.NewPedanticRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	got := drain(t, src)
	if len(got) != 2 || len(got[0]) != len("client/")+400<<10 || got[1] != "client/2" {
		t.Fatalf("got %d events (first UA %d bytes)", len(got), len(got[0]))
	}
}

func TestFileDeadLettersWritesJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dlq.jsonl")
	d, err := ingest.OpenFileDeadLetters(path)
	if err != nil {
		t.Fatal(err)
	}
	in := []ingest.DeadLetter{{Source: "waf", Partition: 3, Offset: 42, Reason: ingest.ReasonInvalidJSON, Error: "e", Record: "{bad"}}
	if err := d.Put(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	d.Close()
	f, _ := os.Open(path)
	defer f.Close()
	sc := bufio.NewScanner(f)
	var out []ingest.DeadLetter
	for sc.Scan() {
		var dl ingest.DeadLetter
		if err := json.Unmarshal(sc.Bytes(), &dl); err != nil {
			t.Fatal(err)
		}
		out = append(out, dl)
	}
	if len(out) != 1 || out[0].Record != "{bad" || out[0].Offset != 42 || out[0].Partition != 3 {
		t.Errorf("read back %+v", out)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("dead-letter file mode %v, want 0600: records may hold credentials", fi.Mode().Perm())
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	opts := ingest.FileOptions{Format: ingest.FormatNginx, Parser: ingest.ParserOptions{Secret: testSecret(t)}, Registerer: prometheus.NewPedanticRegistry()}
	if _, err := ingest.NewFileSource([]string{"testdata/none"}, opts); err == nil {
		t.Error("missing file accepted")
	}
	opts.Format = "syslog"
	if _, err := ingest.NewFileSource([]string{"-"}, opts); !errors.Is(err, ingest.ErrUnknownFormat) {
		t.Errorf("unknown format: %v", err)
	}
	opts.Format = ingest.FormatNginx
	opts.Parser.Secret = ingest.TokenSecret{}
	if _, err := ingest.NewFileSource([]string{"-"}, opts); err == nil {
		t.Error("no token secret accepted")
	}
	opts.Parser.Secret, opts.Registerer = testSecret(t), nil
	if _, err := ingest.NewFileSource([]string{"-"}, opts); err == nil || !strings.Contains(err.Error(), "Registerer is required") {
		t.Errorf("no Registerer: %v", err)
	}
}

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
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"
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
	return drainReleasing(t, src, false)
}

// drainReleasing is drain, releasing each batch once read when release is set.
func drainReleasing(t *testing.T, src interface {
	Next(context.Context) (*ingest.Batch, error)
}, release bool) []string {
	t.Helper()
	var got []string
	eachBatch(t, src, func(b *ingest.Batch) {
		for _, ev := range b.Events {
			got = append(got, ev.UserAgent)
		}
		if release {
			b.Release()
			if b.Events != nil {
				t.Fatal("Release left the batch its events")
			}
		}
	})
	return got
}

// eachBatch calls fn with each batch of src, to the end.
func eachBatch(t *testing.T, src interface {
	Next(context.Context) (*ingest.Batch, error)
}, fn func(*ingest.Batch)) {
	t.Helper()
	for {
		b, err := src.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		fn(b)
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
	// Released batches have their events parsed into again: the strings read from
	// them before stay what they were.
	for _, release := range []bool{false, true} {
		for _, workers := range []int{1, 2, 7} {
			src, err := ingest.NewFileSource([]string{dir}, ingest.FileOptions{
				Format: ingest.FormatNginx, Parser: ingest.ParserOptions{Secret: testSecret(t)}, Workers: workers, BatchSize: 777,
				Registerer: prometheus.NewPedanticRegistry(),
			})
			if err != nil {
				t.Fatal(err)
			}
			got := drainReleasing(t, src, release)
			src.Close()
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("workers=%d, release=%v: %d events out of order or missing (first %v)", workers, release, len(got), got[:min(3, len(got))])
			}
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

// TestFileSourceBoundsChunkBytes: records near the line cap end a chunk early, so that
// the chunks in flight do not hold a gigabyte each; every record still comes through,
// in order.
func TestFileSourceBoundsChunkBytes(t *testing.T) {
	const n, size = 30, 600 << 10
	var in strings.Builder
	for i := range n {
		in.WriteString(strings.Replace(nginxLine(i), fmt.Sprintf("client/%d", i), fmt.Sprintf("client/%d/", i)+strings.Repeat("y", size), 1) + "\n")
	}
	src, err := ingest.NewFileSource([]string{"-"}, ingest.FileOptions{
		Format: ingest.FormatNginx, Parser: ingest.ParserOptions{Secret: testSecret(t)}, Stdin: strings.NewReader(in.String()),
		Registerer: prometheus.NewPedanticRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var got, most int
	eachBatch(t, src, func(b *ingest.Batch) {
		for _, ev := range b.Events {
			if want := fmt.Sprintf("client/%d/", got); !strings.HasPrefix(ev.UserAgent, want) {
				t.Fatalf("event %d has user agent %.20q, want %s...", got, ev.UserAgent, want)
			}
			got++
		}
		most = max(most, len(b.Events))
	})
	if got != n || most > (8<<20)/size+1 {
		t.Errorf("%d events, at most %d a batch; want %d, at most %d", got, most, n, (8<<20)/size+1)
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

// TestDeadLettersKeepTheRawRecord: what reaches the dead-letter file reads back as the
// exact bytes of the record, binary ones (base64) and text with escapes alike.
func TestDeadLettersKeepTheRawRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dlq.jsonl")
	d, err := ingest.OpenFileDeadLetters(path)
	if err != nil {
		t.Fatal(err)
	}
	records := [][]byte{
		[]byte("{\"bad json\" \u2028 \x00 \"quote\" \\ tab\t</script>"),
		{0x16, 0x03, 0x01, 0x02, 0x00, 0xff, 0xfe, '\n', 'x'}, // a TLS handshake: no UTF-8
		[]byte("caf\xc3\xa9 \xe9t\xe9"),                       // Latin-1 bytes among UTF-8
	}
	var in []ingest.DeadLetter
	for i, r := range records {
		in = append(in, ingest.NewDeadLetter(time.Unix(0, 0), "in.log", "nginx", -1, int64(i+1), r, ingest.OversizedError(9, 1)))
	}
	if err := d.Put(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	d.Close()
	b, _ := os.ReadFile(path)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for i := 0; sc.Scan(); i++ {
		var dl ingest.DeadLetter
		if err := json.Unmarshal(sc.Bytes(), &dl); err != nil {
			t.Fatal(err)
		}
		raw, err := dl.Raw()
		if err != nil || !bytes.Equal(raw, records[i]) {
			t.Errorf("record %d read back as %q (%s, %v), want %q", i+1, raw, dl.Encoding, err, records[i])
		}
		if wantB64 := !utf8.Valid(records[i]); (dl.Encoding == ingest.EncodingBase64) != wantB64 {
			t.Errorf("record %d: encoding %q", i+1, dl.Encoding)
		}
	}
}

// TestDeadLetterFileIsOwnerOnly: an existing dead-letter file that others may read is
// made 0600 before a record is written to it; something that is no file is refused.
func TestDeadLetterFileIsOwnerOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dlq.jsonl")
	if err := os.WriteFile(path, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644) // whatever the umask
	d, err := ingest.OpenFileDeadLetters(path)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("existing dead-letter file left mode %v", fi.Mode().Perm())
	}
	link := filepath.Join(t.TempDir(), "dlq-link")
	os.Symlink(os.DevNull, link)
	if _, err := ingest.OpenFileDeadLetters(link); err == nil || !strings.Contains(err.Error(), "regular file") {
		t.Errorf("a dead-letter file that is a device: %v", err)
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

// nginxLineAt is an nginx combined record at t, told apart by its user agent.
func nginxLineAt(t time.Time, ua string) string {
	return fmt.Sprintf(`203.0.113.9 - - [%s] "GET /v1/items/1 HTTP/1.1" 200 512 "-" "%s"`, t.Format("02/Jan/2006:15:04:05 -0700"), ua)
}

func newNginxSource(t *testing.T, paths []string, letters ingest.DeadLetters, tune func(*ingest.FileOptions)) *ingest.FileSource {
	t.Helper()
	opts := ingest.FileOptions{Format: ingest.FormatNginx, Parser: ingest.ParserOptions{Secret: testSecret(t)}, DeadLetters: letters, BatchSize: 100, Registerer: prometheus.NewPedanticRegistry()}
	if tune != nil {
		tune(&opts)
	}
	src, err := ingest.NewFileSource(paths, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// TestFileSourceInputsAsFound: the inputs a node or a logrotate leaves, read whole and
// once: symlinks in a directory (Kubernetes' /var/log/containers), the same file named
// twice, a UTF-8 BOM, zeros before a line (copytruncate under a writer that does not
// append), bzip2 and zstd files; an xz file is refused, saying what to do.
func TestFileSourceInputsAsFound(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	lines := func(ua string) []string {
		var l []string
		for i := range 3 {
			l = append(l, nginxLineAt(t0.Add(time.Duration(i)*time.Minute), fmt.Sprintf("%s%d", ua, i)))
		}
		return l
	}
	write := func(t *testing.T, path string, b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string) []string // the paths to read
		want  []string
	}{
		{"symlinks in a directory", func(t *testing.T, dir string) []string {
			pods, links := filepath.Join(dir, "pods"), filepath.Join(dir, "containers")
			os.Mkdir(pods, 0o755)
			os.Mkdir(links, 0o755)
			writeLines(t, filepath.Join(pods, "0.log"), lines("a"), false)
			if err := os.Symlink(filepath.Join(pods, "0.log"), filepath.Join(links, "api-0.log")); err != nil {
				t.Fatal(err)
			}
			os.Symlink(pods, filepath.Join(links, "pods")) // a link to a directory is not followed
			return []string{links}
		}, lines("a")},
		{"a file named twice", func(t *testing.T, dir string) []string {
			writeLines(t, filepath.Join(dir, "access.log"), lines("a"), false)
			return []string{dir, filepath.Join(dir, "access.log"), filepath.Join(dir, ".", "access.log")}
		}, lines("a")},
		{"byte order mark", func(t *testing.T, dir string) []string {
			write(t, filepath.Join(dir, "access.log"), []byte("\ufeff"+strings.Join(lines("a"), "\n")+"\n"))
			return []string{dir}
		}, lines("a")},
		{"zeros before a line", func(t *testing.T, dir string) []string {
			l := lines("a")
			l[1] = strings.Repeat("\x00", 8192) + l[1]
			writeLines(t, filepath.Join(dir, "access.log"), l, false)
			return []string{dir}
		}, lines("a")},
		{"blank lines in container envelopes", func(t *testing.T, dir string) []string {
			var b strings.Builder
			for i, l := range lines("a") {
				fmt.Fprintf(&b, "2025-03-01T10:0%d:00.5Z stdout F %s\n", i, l)
				fmt.Fprintf(&b, "2025-03-01T10:0%d:00.6Z stdout F \n", i)
				fmt.Fprintf(&b, "{\"log\":\"\\n\",\"stream\":\"stdout\",\"time\":\"2025-03-01T10:0%d:00.7Z\"}\n", i)
			}
			write(t, filepath.Join(dir, "0.log"), []byte(b.String()))
			return []string{dir}
		}, lines("a")},
		{"bzip2", func(t *testing.T, dir string) []string {
			return []string{"testdata/compressed/access.log.2.bz2"}
		}, lines("bz")},
		{"zstd", func(t *testing.T, dir string) []string {
			var buf bytes.Buffer
			zw, err := zstd.NewWriter(&buf)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(zw, strings.Join(lines("zs"), "\n")+"\n")
			zw.Close()
			write(t, filepath.Join(dir, "access.log.1.zst"), buf.Bytes())
			return []string{dir}
		}, lines("zs")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newNginxSource(t, tc.setup(t, t.TempDir()), nil, nil)
			var want []string
			for _, l := range tc.want {
				want = append(want, l[strings.LastIndexByte(l[:len(l)-1], '"')+1:len(l)-1])
			}
			if got := drain(t, src); !slices.Equal(got, want) {
				t.Errorf("read %v, want %v", got, want)
			}
			for _, st := range src.Stats() {
				if st.Rejected != 0 || st.Err != nil {
					t.Errorf("%s: %d rejected, error %v", st.Name, st.Rejected, st.Err)
				}
			}
		})
	}
	t.Run("xz", func(t *testing.T) {
		src := newNginxSource(t, []string{"testdata/compressed/access.log.3.xz"}, nil, nil)
		drain(t, src)
		if err := src.Stats()[0].Err; err == nil || !strings.Contains(err.Error(), "xz -d") {
			t.Errorf("error %v, want one saying to decompress it with xz -d", err)
		}
	})
}

// TestFileSourceOrdersPastLeadingNoise: a rotated log that begins with a hundred lines
// of a container's notices (its stderr) is still ordered by its first event time, and
// read before the newer log.
func TestFileSourceOrdersPastLeadingNoise(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	var older []string
	for range 100 {
		older = append(older, "2025/03/01 09:59:59 [notice] 1#1: start worker process 31")
	}
	older = append(older, nginxLineAt(t0, "old"))
	writeLines(t, filepath.Join(dir, "0.log.20250301-110000"), older, false)
	writeLines(t, filepath.Join(dir, "0.log"), []string{nginxLineAt(t0.Add(time.Hour), "new")}, false)
	src := newNginxSource(t, []string{dir}, nil, nil)
	if got := drain(t, src); !slices.Equal(got, []string{"old", "new"}) {
		t.Errorf("read %v, want the older log first", got)
	}
}

// TestFileSourceReadsRotatedFilesOldestFirst holds the order of logrotate's names:
// access.log.2.gz, then access.log.1, then access.log, whatever order the names sort or
// are given in, so replaying a directory makes no event late.
func TestFileSourceReadsRotatedFilesOldestFirst(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	var want []string
	files := []struct {
		name string
		gz   bool
	}{{"access.log.2.gz", true}, {"access.log.1", false}, {"access.log", false}}
	for f, file := range files {
		var lines []string
		for i := range 300 {
			ua := fmt.Sprintf("%s/%d", file.name, i)
			lines = append(lines, nginxLineAt(t0.Add(time.Duration(f)*time.Hour+time.Duration(i)*time.Second), ua))
			want = append(want, ua)
		}
		writeLines(t, filepath.Join(dir, file.name), lines, file.gz)
	}
	for _, paths := range [][]string{
		{dir},
		{filepath.Join(dir, "access.log"), filepath.Join(dir, "access.log.1"), filepath.Join(dir, "access.log.2.gz")},
	} {
		src := newNginxSource(t, paths, nil, nil)
		got := drain(t, src)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%v: read %d events, not in event-time order (first %v)", paths, len(got), got[:min(2, len(got))])
		}
		var order []string
		for _, st := range src.Stats() {
			order = append(order, filepath.Base(st.Name))
			if st.Late != 0 || st.Events != 300 || st.Err != nil {
				t.Errorf("%s: %+v", st.Name, st)
			}
		}
		if strings.Join(order, " ") != "access.log.2.gz access.log.1 access.log" {
			t.Errorf("read in the order %v", order)
		}
	}
}

// TestFileSourceMergesConcurrentFiles reads the logs of two gateways (or pods) over the
// same hour: merged by event time, each a partition of its own, nothing is late. Read
// one after the other, the second's events up to 10:48:30 came behind the first's
// last, more than the lateness, and a replay of a multi-replica gateway's files missed
// its attacks.
func TestFileSourceMergesConcurrentFiles(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	var a, b, want []string
	for i := range 60 {
		a = append(a, nginxLineAt(t0.Add(time.Duration(i)*time.Minute), fmt.Sprintf("a%02d", i)))
		b = append(b, nginxLineAt(t0.Add(time.Duration(i)*time.Minute+30*time.Second), fmt.Sprintf("b%02d", i)))
		want = append(want, fmt.Sprintf("a%02d", i), fmt.Sprintf("b%02d", i))
	}
	writeLines(t, filepath.Join(dir, "gw-a.log"), a, false)
	writeLines(t, filepath.Join(dir, "gw-b.log"), b, true)
	for _, batch := range []int{1, 7, 100} {
		src := newNginxSource(t, []string{dir}, nil, func(o *ingest.FileOptions) {
			o.Lateness = 10 * time.Minute
			o.BatchSize = batch
		})
		var got []string
		ended := 0
		eachBatch(t, src, func(b *ingest.Batch) {
			i := 0
			for _, r := range b.Runs {
				for _, ev := range b.Events[i : i+r.N] {
					if !strings.HasSuffix(r.Partition.Source, "gw-"+ev.UserAgent[:1]+".log") {
						t.Fatalf("batches of %d: event %s in a run of %s", batch, ev.UserAgent, r.Partition.Source)
					}
					got = append(got, ev.UserAgent)
				}
				i += r.N
			}
			if i != len(b.Events) {
				t.Fatalf("batches of %d: runs count %d of %d events", batch, i, len(b.Events))
			}
			ended += len(b.Ended)
		})
		if !slices.Equal(got, want) {
			t.Errorf("batches of %d: read %v, want them in event-time order", batch, got)
		}
		if ended != 2 {
			t.Errorf("batches of %d: %d inputs ended, want 2", batch, ended)
		}
		for _, st := range src.Stats() {
			if st.Late != 0 || st.MaxLag != 0 || st.Events != 60 {
				t.Errorf("batches of %d: %s: %d events, %d late (furthest %s); want 60, none", batch, st.Name, st.Events, st.Late, st.MaxLag)
			}
		}
	}
}

// TestFileSourceCountsLateEventsPerFile: an event more than the lateness behind the
// newest one handed out before it is counted late, against its file, which also says
// how far behind the furthest came.
func TestFileSourceCountsLateEventsPerFile(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	var a, b []string
	for i := range 60 {
		a = append(a, nginxLineAt(t0.Add(time.Duration(i)*time.Minute), "a"))
		b = append(b, nginxLineAt(t0.Add(time.Duration(i)*time.Minute+30*time.Second), "b"))
	}
	b[40] = nginxLineAt(t0.Add(10*time.Minute), "b") // 29m30s behind b's line before it
	writeLines(t, filepath.Join(dir, "gw-a.log"), a, false)
	writeLines(t, filepath.Join(dir, "gw-b.log"), b, false)
	src := newNginxSource(t, []string{dir}, nil, func(o *ingest.FileOptions) { o.Lateness = 10 * time.Minute })
	drain(t, src)
	st := src.Stats()
	if st[0].Late != 0 || st[1].Late != 1 {
		t.Errorf("late events per file: %s %d, %s %d; want 0 and 1", st[0].Name, st[0].Late, st[1].Name, st[1].Late)
	}
	// Behind the newest handed out before it, b's line before it: the merge takes the
	// earliest of the files' next events, so it comes before a's line of 10:40.
	if st[0].MaxLag != 0 || st[1].MaxLag != 29*time.Minute+30*time.Second {
		t.Errorf("furthest lag per file: %s %s, %s %s; want 0s and 29m30s", st[0].Name, st[0].MaxLag, st[1].Name, st[1].MaxLag)
	}
	if !st[1].First.Equal(t0.Add(30*time.Second)) || !st[1].Last.Equal(t0.Add(59*time.Minute+30*time.Second)) {
		t.Errorf("%s spans %v to %v", st[1].Name, st[1].First, st[1].Last)
	}
}

// TestFileSourceContainsDamage reads a directory holding a truncated gzip and a
// corrupt one between two good files: every record before the damage becomes an event,
// the record cut short goes to the dead-letter sink as truncated, the damage is
// reported with the file and where, and the files after it are still read.
func TestFileSourceContainsDamage(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	gzipOf := func(hour, n int) []byte {
		var lines []string
		for i := range n {
			lines = append(lines, nginxLineAt(t0.Add(time.Duration(hour)*time.Hour+time.Duration(i)*time.Second), fmt.Sprintf("h%d/%d", hour, i)))
		}
		path := filepath.Join(t.TempDir(), "x.gz")
		writeLines(t, path, lines, true)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	writeLines(t, filepath.Join(dir, "access.log.3"), []string{nginxLineAt(t0, "h0/0")}, false)
	full := gzipOf(1, 5000)
	os.WriteFile(filepath.Join(dir, "access.log.2.gz"), full[:len(full)*2/3], 0o644) // truncated: the copy stopped
	corrupt := gzipOf(2, 5000)
	for i := len(corrupt) / 2; i < len(corrupt)/2+64; i++ {
		corrupt[i] ^= 0x5a
	}
	os.WriteFile(filepath.Join(dir, "access.log.1.gz"), corrupt, 0o644)
	writeLines(t, filepath.Join(dir, "access.log"), []string{nginxLineAt(t0.Add(3*time.Hour), "h3/0")}, false)

	letters := &memLetters{}
	src := newNginxSource(t, []string{dir}, letters, nil)
	got := drain(t, src)
	st := src.Stats()
	if len(st) != 4 || filepath.Base(st[3].Name) != "access.log" || st[3].Events != 1 || st[0].Events != 1 {
		t.Fatalf("the good files around the damage were not read whole: %+v", st)
	}
	if got[len(got)-1] != "h3/0" {
		t.Errorf("last event %q, want the one of the file after the damage", got[len(got)-1])
	}
	for _, s := range st[1:3] {
		var ie *ingest.InputError
		if !errors.As(s.Err, &ie) || ie.Name != s.Name || ie.Line <= 0 || ie.Offset <= 0 {
			t.Fatalf("%s: damage reported as %v", s.Name, s.Err)
		}
		// A truncated stream ends cleanly at the cut; a corrupt one may decode junk before
		// the damage is found (rejected, not events).
		if s.Events > ie.Line || s.Events >= 5000 || s.Events < 1000 ||
			filepath.Base(s.Name) == "access.log.2.gz" && s.Events < ie.Line-1 {
			t.Errorf("%s: %d events for %d whole lines before the damage", s.Name, s.Events, ie.Line)
		}
		if !strings.Contains(s.Err.Error(), s.Name) || !strings.Contains(s.Err.Error(), fmt.Sprintf("line %d", ie.Line)) {
			t.Errorf("damage message %q names neither the file nor the line", s.Err)
		}
	}
	// The events before the damage are the first ones of the file, in order.
	for i, ua := range got[1 : 1+st[1].Events] {
		if ua != fmt.Sprintf("h1/%d", i) {
			t.Fatalf("event %d of the truncated file is %q", i, ua)
		}
	}
	truncated := 0
	for _, dl := range letters.got {
		if dl.Reason == ingest.ReasonTruncated {
			truncated++
		}
	}
	if truncated == 0 {
		t.Errorf("no dead letter for the record cut short (letters: %d)", len(letters.got))
	}
}

func TestFileSourceReportsAnInputThatCannotBeOpened(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	gone := filepath.Join(dir, "b.log")
	writeLines(t, filepath.Join(dir, "a.log"), []string{nginxLineAt(t0, "a")}, false)
	writeLines(t, gone, []string{nginxLineAt(t0.Add(time.Hour), "b")}, false)
	writeLines(t, filepath.Join(dir, "c.log"), []string{nginxLineAt(t0.Add(2*time.Hour), "c")}, false)
	src := newNginxSource(t, []string{dir}, nil, nil)
	os.Remove(gone) // rotated away between listing and reading
	if got := drain(t, src); strings.Join(got, ",") != "a,c" {
		t.Errorf("events %v, want a and c", got)
	}
	var ie *ingest.InputError
	if st := src.Stats(); !errors.As(st[1].Err, &ie) || !errors.Is(st[1].Err, os.ErrNotExist) {
		t.Errorf("the vanished file is reported as %v", st[1].Err)
	}
}

// TestFileSourceOversizedReportsTheRealSize: the dead letter of a runaway line keeps its
// head, and its error says how long the line really was.
func TestFileSourceOversizedReportsTheRealSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "in.log")
	huge := strings.Repeat("y", 700<<10) // beyond the read buffer: streamed and cut
	writeLines(t, path, []string{huge, strings.Repeat("z", 3000)}, false)
	letters := &memLetters{}
	src := newNginxSource(t, []string{path}, letters, func(o *ingest.FileOptions) { o.Parser.MaxLineBytes = 2048 })
	drain(t, src)
	if len(letters.got) != 2 {
		t.Fatalf("%d dead letters, want 2", len(letters.got))
	}
	for i, want := range []int{700 << 10, 3000} {
		dl := letters.got[i]
		if dl.Reason != ingest.ReasonOversized || !strings.Contains(dl.Error, fmt.Sprintf("record of %d bytes", want)) {
			t.Errorf("line %d: %s %q, want the real size %d", dl.Offset, dl.Reason, dl.Error, want)
		}
	}
}

// TestFileSourceJoinsSplitContainerLines reads the files container runtimes write when
// a line is longer than 16 KiB: its parts become one record again.
func TestFileSourceJoinsSplitContainerLines(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	long := nginxLineAt(t0, "padded/"+strings.Repeat("A", 40<<10)) // an attacker's padded user agent
	short := nginxLineAt(t0.Add(time.Second), "short")
	parts := []string{long[:16384], long[16384:32768], long[32768:]}
	cri := func(stream, tag, s string) string {
		return "2025-03-01T00:00:00.000000001Z " + stream + " " + tag + " " + s
	}
	docker := func(stream, s string) string {
		return mustJSONLine(map[string]string{"log": s, "stream": stream, "time": "2025-03-01T00:00:00.000000001Z"})
	}
	for _, tc := range []struct {
		name  string
		lines []string
	}{
		{"CRI", []string{cri("stdout", "P", parts[0]), cri("stderr", "F", "an error line between the parts"), cri("stdout", "P", parts[1]),
			cri("stdout", "F", parts[2]), cri("stdout", "F", short)}},
		{"Docker json-file", []string{docker("stdout", parts[0]), docker("stderr", "an error line between the parts\n"), docker("stdout", parts[1]),
			docker("stdout", parts[2]+"\n"), docker("stdout", short+"\n")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "0.log")
			writeLines(t, path, tc.lines, false)
			letters := &memLetters{}
			src := newNginxSource(t, []string{path}, letters, nil)
			got := drain(t, src)
			if len(got) != 2 || !strings.HasPrefix(got[0], "padded/AAAA") || len(got[0]) != len("padded/")+40<<10 || got[1] != "short" {
				t.Fatalf("events %d (%.20q), want the joined line and the short one", len(got), got)
			}
			if len(letters.got) != 1 || letters.got[0].Offset != 2 {
				t.Errorf("dead letters %+v, want only the error line (line 2)", letters.got)
			}
		})
	}
	// Parts left open at the end of the input are rejected, saying what they are.
	path := filepath.Join(t.TempDir(), "0.log")
	writeLines(t, path, []string{cri("stdout", "P", parts[0])}, false)
	letters := &memLetters{}
	drain(t, newNginxSource(t, []string{path}, letters, nil))
	if len(letters.got) != 1 || !strings.Contains(letters.got[0].Error, "split") {
		t.Errorf("an unfinished part gave %+v", letters.got)
	}
}

func mustJSONLine(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestFileSourceCloseWaitsForItsGoroutines: after Close, no goroutine of the source is
// parsing or reading (a caller may close the GeoIP database or the dead-letter file
// right after).
func TestFileSourceCloseWaitsForItsGoroutines(t *testing.T) {
	var lines []string
	for i := range 20000 {
		lines = append(lines, nginxLine(i))
	}
	path := filepath.Join(t.TempDir(), "in.log")
	writeLines(t, path, lines, false)
	src, err := ingest.NewFileSource([]string{path}, ingest.FileOptions{
		Format: ingest.FormatNginx, Parser: ingest.ParserOptions{Secret: testSecret(t)}, Workers: 4, BatchSize: 64, Registerer: prometheus.NewPedanticRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	src.Close()
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, fn := range []string{"ingest.(*FileSource).parse(", "ingest.(*FileSource).read(", "ingest.(*lineReader)"} {
		if strings.Contains(stacks, fn) {
			t.Errorf("a goroutine is still in %s after Close:\n%s", fn, stacks)
		}
	}
}

func TestNewFileSourceRefusesStdinWithOtherInputs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "in.log")
	writeLines(t, path, []string{nginxLine(1)}, false)
	_, err := ingest.NewFileSource([]string{"-", path}, ingest.FileOptions{Format: ingest.FormatNginx, Parser: ingest.ParserOptions{Secret: testSecret(t)}, Registerer: prometheus.NewPedanticRegistry()})
	if err == nil || !strings.Contains(err.Error(), "stdin") {
		t.Errorf("stdin with a file: %v", err)
	}
}

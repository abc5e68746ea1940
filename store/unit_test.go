package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/gatewatch/gatewatch/ingest"
)

// testEvents returns n deterministic events from start, step apart, spread over keys
// client keys; odd fields (quotes, UTF-8, empty strings) check that nothing is mangled.
func testEvents(seed uint64, n int, start time.Time, step time.Duration, keys int) []ingest.Event {
	r := rand.New(rand.NewPCG(seed, seed))
	countries := []string{"DE", "US", "FR", "BR", ""}
	routes := []string{"/v1/orders/{id}", "/v1/login", "/admin/users", "/v1/items"}
	evs := make([]ingest.Event, n)
	for i := range evs {
		k := r.IntN(keys)
		evs[i] = ingest.Event{
			Time:      start.Add(time.Duration(i) * step).UTC().Truncate(time.Millisecond),
			Source:    "awswaf",
			ClientKey: fmt.Sprintf("key-%03d", k),
			TokenFP:   fmt.Sprintf("%032x", k*7919),
			Device:    fmt.Sprintf("dev-%d", r.IntN(3)),
			ClientIP:  fmt.Sprintf("203.0.113.%d", r.IntN(250)),
			Country:   countries[r.IntN(len(countries))],
			Method:    []string{"GET", "POST"}[r.IntN(2)],
			Host:      "api.example.com:443",
			Route:     routes[r.IntN(len(routes))],
			Path:      fmt.Sprintf("/v1/orders/%d", r.IntN(1000)),
			Status:    []int{200, 200, 201, 403, 401, 404, 500}[r.IntN(7)],
			Action:    []string{"ALLOW", "BLOCK", ""}[r.IntN(3)],
			RuleID:    "Default_Action",
			UserAgent: `Mozilla/5.0 "quoted" é 日本`,
			RequestID: fmt.Sprintf("req-%d-%d", seed, i),
		}
	}
	return evs
}

// newBlock encodes evs as a block with the given id, as ArchiveEvents would.
func newBlock(id uint64, evs []ingest.Event) *block {
	b := &block{id: id, n: len(evs)}
	for i := range evs {
		b.data = appendRecord(b.data, &evs[i])
	}
	return b
}

// event returns row i of c as an Event.
func (c *columns) event(i int, ev *ingest.Event) {
	*ev = ingest.Event{
		Time:      time.UnixMilli(c.time[i]*1000 + int64(c.ms[i])).UTC(),
		Source:    c.source[i],
		ClientKey: c.clientKey[i],
		TokenFP:   c.tokenFP[i],
		Device:    c.device[i],
		ClientIP:  c.clientIP[i],
		Country:   c.country[i],
		Method:    c.method[i],
		Host:      c.host[i],
		Route:     c.route[i],
		Path:      c.path[i],
		Status:    int(c.status[i]),
		Action:    c.action[i],
		RuleID:    c.ruleID[i],
		UserAgent: c.userAgent[i],
		RequestID: c.requestID[i],
	}
}

func TestCodecRoundTrip(t *testing.T) {
	evs := testEvents(1, 50, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), 1237*time.Microsecond, 5)
	evs = append(evs, ingest.Event{Time: time.Date(2026, 3, 1, 0, 0, 0, 999e6, time.UTC)}) // all empty strings
	b := newBlock(42, evs)
	var c columns
	rest, err := c.decode(b.data, b.n, b.id, 0)
	if err != nil || len(rest) != 0 {
		t.Fatalf("decode = %d bytes left, %v", len(rest), err)
	}
	for i := range evs {
		var got ingest.Event
		c.event(i, &got)
		if !reflect.DeepEqual(got, evs[i]) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got, evs[i])
		}
		if c.batchID[i] != 42 || c.seq[i] != uint32(i) {
			t.Errorf("event %d: identity (%d, %d), want (42, %d)", i, c.batchID[i], c.seq[i], i)
		}
	}
	// Truncated data is an error, never a panic or a short block.
	for _, cut := range []int{1, 7, len(b.data) / 2, len(b.data) - 1} {
		if _, err := c.decode(b.data[:cut], len(evs), 42, 0); !errors.Is(err, errCorrupt) {
			t.Errorf("decode of %d of %d bytes = %v, want errCorrupt", cut, len(b.data), err)
		}
	}
}

func TestCodecClampsTimeAndStatus(t *testing.T) {
	evs := []ingest.Event{
		{Time: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC), Status: -1},
		{Time: time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), Status: 1 << 20},
	}
	b := newBlock(0, evs)
	var c columns
	if _, err := c.decode(b.data, b.n, 0, 0); err != nil {
		t.Fatal(err)
	}
	if c.time[0] != 0 || c.time[1] != maxDateTime || c.status[0] != 0 || c.status[1] != 65535 {
		t.Errorf("clamped to times %v and statuses %v, want [0 %d] and [0 65535]", c.time, c.status, uint32(maxDateTime))
	}
}

func FuzzDecodeBlock(f *testing.F) {
	evs := testEvents(2, 3, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), time.Second, 2)
	var data []byte
	for i := range evs {
		data = appendRecord(data, &evs[i])
	}
	f.Add(data, 3)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		if n < 0 || n > 1000 {
			return
		}
		var c columns
		rest, err := c.decode(data, n, 0, 0)
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("decode error %v is not errCorrupt", err)
			}
			return
		}
		// Whatever decodes re-encodes to the same bytes, unless a value was clamped.
		var again []byte
		for i := 0; i < n; i++ {
			var ev ingest.Event
			c.event(i, &ev)
			again = appendRecord(again, &ev)
		}
		if used := len(data) - len(rest); len(again) > used {
			t.Fatalf("re-encoding grew %d bytes to %d", used, len(again))
		}
	})
}

func TestSpillSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := openSpill(dir)
	if err != nil {
		t.Fatal(err)
	}
	evs := testEvents(3, 10, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), time.Second, 2)
	var want []*block
	for i := 0; i < 3; i++ {
		b := newBlock(uint64(100+i), evs)
		b.seq = uint64(i + 1)
		if err := s.write(b); err != nil {
			t.Fatal(err)
		}
		want = append(want, b)
	}
	// An unfinished write from a crash, and a stranger's file.
	if err := os.WriteFile(filepath.Join(dir, "0000000000000009-0000000000000001.seg.tmp"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("not ours"), 0o600); err != nil {
		t.Fatal(err)
	}

	s2, err := openSpill(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.events(); got != 30 {
		t.Fatalf("reopened spill holds %d events, want 30", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "0000000000000009-0000000000000001.seg.tmp")); !os.IsNotExist(err) {
		t.Errorf("unfinished segment not discarded: %v", err)
	}
	for i, w := range want {
		seg := s2.segs[0]
		if seg.seq != 0 {
			t.Errorf("recovered segment has seq %d, want 0 (from an earlier process)", seg.seq)
		}
		b, err := s2.read(seg)
		if err != nil {
			t.Fatal(err)
		}
		if b.id != w.id || b.n != w.n || string(b.data) != string(w.data) || b.attempts != 1 {
			t.Errorf("segment %d: got id %d n %d attempts %d, want id %d n %d attempts 1 and the same data", i, b.id, b.n, b.attempts, w.id, w.n)
		}
		if err := s2.remove(); err != nil {
			t.Fatal(err)
		}
	}
	if s2.next != 3 {
		t.Errorf("next segment number %d, want 3", s2.next)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(left) != 0 {
		t.Errorf("segments left after removing all: %v", left)
	}
}

func TestSpillSetsCorruptSegmentsAside(t *testing.T) {
	dir := t.TempDir()
	s, err := openSpill(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := &block{id: 7, n: 1, data: appendRecord(nil, &ingest.Event{Time: time.Unix(1e9, 0), ClientKey: "k"})}
	if err := s.write(b); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, s.segs[0].name)
	raw, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] ^= 0xff // a flipped bit in the data
	if err := os.WriteFile(name, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.read(s.segs[0]); !errors.Is(err, errCorrupt) {
		t.Fatalf("read of a damaged segment = %v, want errCorrupt", err)
	}
	if err := s.quarantine(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(name + ".corrupt"); err != nil {
		t.Errorf("damaged segment not kept as .corrupt: %v", err)
	}
	if len(s.segs) != 0 {
		t.Errorf("quarantined segment still listed")
	}
}

func TestServerVersionGate(t *testing.T) {
	for _, c := range []struct {
		server, min string
		want        bool
	}{
		{"18.16.1", "21.3", false},
		{"21.3.0", "21.3", true},
		{"21.2.9.41", "21.3", false},
		{"21.3.20.1", "21.3.21", false},
		{"24.8.4.13", "21.3", true},
		{"24.8.4.13", "24.10", false},
		{"18.16.1", "0.0", true},
	} {
		v, err := parseServerVersion(c.server)
		if err != nil {
			t.Fatal(err)
		}
		m, err := parseServerVersion(c.min)
		if err != nil {
			t.Fatal(err)
		}
		if got := v.atLeast(m); got != c.want {
			t.Errorf("%s at least %s = %v, want %v", c.server, c.min, got, c.want)
		}
	}
	for _, bad := range []string{"", "18", "x.y", "18.-1"} {
		if _, err := parseServerVersion(bad); err == nil {
			t.Errorf("parseServerVersion(%q) accepted it", bad)
		}
	}
	if (serverVersion{18, 16, 1}).atLeast(ttlMinServer) {
		t.Errorf("18.16.1 passes the TTL gate %s", ttlMinServer)
	}
}

func TestPlanSkipsGatedMigrationsUntilTheServerIsNewEnough(t *testing.T) {
	fsys := fstest.MapFS{
		"migrations/0001_base.sql":  {Data: []byte("CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = MergeTree ORDER BY x;\n")},
		"migrations/0002_ttl.sql":   {Data: []byte("-- min_server: 21.3\n-- why: TTL\nALTER TABLE a MODIFY TTL x;\n")},
		"migrations/0003_more.sql":  {Data: []byte("CREATE TABLE IF NOT EXISTS b\n(x UInt8)\nENGINE = MergeTree ORDER BY x;\nCREATE TABLE IF NOT EXISTS c (x UInt8) ENGINE = MergeTree ORDER BY x;\n")},
		"migrations/0004_codec.sql": {Data: []byte("-- min_server: 20.1.2\nALTER TABLE a MODIFY COLUMN x UInt8 CODEC(ZSTD);\n")},
	}
	all, err := loadMigrations(fsys)
	if err != nil {
		t.Fatal(err)
	}
	names := func(ms []migration) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.name)
		}
		return strings.Join(s, ",")
	}
	for _, c := range []struct {
		server          serverVersion
		done            map[int]bool
		apply, skip     string
		statementsOf3rd int
	}{
		{serverVersion{18, 16, 1}, nil, "0001_base,0003_more", "0002_ttl,0004_codec", 2},
		{serverVersion{20, 1, 2}, map[int]bool{1: true, 3: true}, "0004_codec", "0002_ttl", 2},
		{serverVersion{24, 8, 0}, map[int]bool{1: true, 3: true, 4: true}, "0002_ttl", "", 2},
		{serverVersion{24, 8, 0}, map[int]bool{1: true, 2: true, 3: true, 4: true}, "", "", 2},
	} {
		apply, skip := plan(all, c.done, c.server)
		if names(apply) != c.apply || names(skip) != c.skip {
			t.Errorf("server %s, done %v: apply %q skip %q, want apply %q skip %q", c.server, c.done, names(apply), names(skip), c.apply, c.skip)
		}
	}
	if got := len(all[2].statements); got != 2 {
		t.Errorf("0003_more has %d statements, want 2", got)
	}
	if all[1].minServer != (serverVersion{21, 3, 0}) || all[3].minServer != (serverVersion{20, 1, 2}) {
		t.Errorf("gates %v and %v, want 21.3.0 and 20.1.2", all[1].minServer, all[3].minServer)
	}
}

func TestParseMigrationRejects(t *testing.T) {
	for _, c := range []struct{ file, text, want string }{
		{"base.sql", "SELECT 1;\n", "NNNN_name.sql"},
		{"0001_x.sql", "-- only a comment\n", "no statements"},
		{"0001_x.sql", "SELECT 1\n", "does not end with ;"},
		{"0001_x.sql", "-- min_server: new\nSELECT 1;\n", "min_server"},
	} {
		if _, err := parseMigration(c.file, c.text); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseMigration(%s, %q) = %v, want an error about %q", c.file, c.text, err, c.want)
		}
	}
}

func TestEmbeddedMigrations(t *testing.T) {
	all, err := loadMigrations(migrationFiles)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 2 || all[0].version != 1 || all[0].minServer != (serverVersion{}) {
		t.Fatalf("embedded migrations %+v: want 0001 ungated first", all)
	}
	// The base schema must run on 18.16: none of what it lacks.
	for _, stmt := range all[0].statements {
		upper := strings.ToUpper(stmt)
		for _, banned := range []string{" TTL ", "DATETIME64", "CODEC(", "LOWCARDINALITY", "TOSTARTOFINTERVAL", "JSONEXTRACT", "VISITPARAM"} {
			if strings.Contains(upper, banned) {
				t.Errorf("base migration uses %s, which 18.16 lacks:\n%s", strings.TrimSpace(banned), stmt)
			}
		}
		if !strings.Contains(upper, "IF NOT EXISTS") {
			t.Errorf("base migration statement is not idempotent:\n%s", stmt)
		}
	}
	// Every statement can run again, and from several instances at once: IF NOT
	// EXISTS, or an ADD COLUMN, which Migrate takes as done when the column exists.
	for _, m := range all[1:] {
		for _, stmt := range m.statements {
			if !strings.Contains(strings.ToUpper(stmt), "IF NOT EXISTS") && !isAddColumn(stmt) {
				t.Errorf("%s: statement is not idempotent:\n%s", m.name, stmt)
			}
		}
	}
	for _, c := range []struct {
		stmt string
		want bool
	}{
		{"ALTER TABLE key_stats ADD COLUMN first_seen_ms UInt16", true},
		{"alter table t\n  add column a UInt8, add column b UInt8", true},
		{"ALTER TABLE t ADD COLUMN a UInt8, DROP COLUMN b", false},
		{"ALTER TABLE t MODIFY COLUMN a UInt16", false},
		{"CREATE TABLE t (a UInt8) ENGINE = Log", false},
	} {
		if got := isAddColumn(c.stmt); got != c.want {
			t.Errorf("isAddColumn(%q) = %v, want %v", c.stmt, got, c.want)
		}
	}
}

func TestRetentionStatement(t *testing.T) {
	const plain = "ReplacingMergeTree PARTITION BY toYYYYMMDD(time) ORDER BY (toStartOfHour(time), client_key, time, batch_id, seq) SETTINGS index_granularity = 8192"
	const ttl30d = "ReplacingMergeTree PARTITION BY toYYYYMMDD(time) ORDER BY (toStartOfHour(time), client_key, time, batch_id, seq) TTL time + toIntervalSecond(2592000) SETTINGS index_granularity = 8192"
	for _, c := range []struct {
		engine string
		secs   int64
		want   string
	}{
		{plain, 0, ""},
		{plain, 2592000, "ALTER TABLE events MODIFY TTL time + toIntervalSecond(2592000)"},
		{ttl30d, 2592000, ""},
		{ttl30d, 86400, "ALTER TABLE events MODIFY TTL time + toIntervalSecond(86400)"},
		{ttl30d, 0, "ALTER TABLE events REMOVE TTL"},
	} {
		if got := retentionStatement("events", "time", c.engine, c.secs); got != c.want {
			t.Errorf("retentionStatement(%q, %d) = %q, want %q", c.engine, c.secs, got, c.want)
		}
	}
}

// TestOnceMoreIfBroken: a read that failed on a broken connection runs once more; one
// that failed otherwise, or whose context ended, does not.
func TestOnceMoreIfBroken(t *testing.T) {
	closed := fmt.Errorf("store: writing alerts: %w", fmt.Errorf("send data: write error to 127.0.0.1:9000 (conn_id=13): %w",
		&net.OpError{Op: "set", Net: "tcp", Err: net.ErrClosed}))
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		name  string
		ctx   context.Context
		first error
		runs  int
	}{
		{"closed connection", context.Background(), closed, 2},
		{"reset", context.Background(), fmt.Errorf("read: %w", syscall.ECONNRESET), 2},
		{"cut short", context.Background(), fmt.Errorf("read: %w", io.ErrUnexpectedEOF), 2},
		{"timeout", context.Background(), timeout, 1},
		{"statement", context.Background(), errors.New("code: 60, message: Table default.alerts doesn't exist"), 1},
		{"context ended", cancelled, closed, 1},
		{"no error", context.Background(), nil, 1},
	} {
		runs := 0
		v, err := onceMoreIfBroken(c.ctx, func() (int, error) {
			runs++
			if runs == 1 {
				return 0, c.first
			}
			return 2, nil
		})
		if runs != c.runs {
			t.Errorf("%s: ran %d times, want %d", c.name, runs, c.runs)
		}
		if c.runs == 2 && (err != nil || v != 2) {
			t.Errorf("%s: %d, %v after the second run", c.name, v, err)
		}
		if c.runs == 1 && !errors.Is(err, c.first) {
			t.Errorf("%s: %v, want the first run's error", c.name, err)
		}
	}
}

// flakyConn fails its first statement with err.
type flakyConn struct {
	driver.Conn
	err   error
	calls int
}

func (f *flakyConn) fail() error {
	if f.calls++; f.calls == 1 {
		return f.err
	}
	return nil
}

func (f *flakyConn) Query(context.Context, string, ...any) (driver.Rows, error) { return nil, f.fail() }
func (f *flakyConn) Exec(context.Context, string, ...any) error                 { return f.fail() }

// TestRetryConn: the store's connection runs a query once more after any broken
// connection, and a statement only when the connection was closed before it went out.
func TestRetryConn(t *testing.T) {
	closed := fmt.Errorf("send data: write error (conn_id=11, block_cols=0, block_rows=0): %w",
		&net.OpError{Op: "set", Net: "tcp", Err: net.ErrClosed})
	reset := fmt.Errorf("read: %w", syscall.ECONNRESET)
	ctx := context.Background()
	for _, c := range []struct {
		name       string
		err        error
		exec       bool
		wantCalls  int
		wantFailed bool
	}{
		{"query, closed", closed, false, 2, false},
		{"query, reset", reset, false, 2, false},
		{"exec, closed", closed, true, 2, false},
		{"exec, reset", reset, true, 1, true},
	} {
		f := &flakyConn{err: c.err}
		conn := retryConn{f}
		var err error
		if c.exec {
			err = conn.Exec(ctx, "ALTER TABLE t DELETE WHERE 1")
		} else {
			_, err = conn.Query(ctx, "SELECT 1")
		}
		if f.calls != c.wantCalls || (err != nil) != c.wantFailed {
			t.Errorf("%s: %d calls, error %v; want %d calls, failed %t", c.name, f.calls, err, c.wantCalls, c.wantFailed)
		}
	}
}

package store

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// benchRows is how many events each benchmark iteration archives: one batch of the
// default batch_size, which amortises a clickhouse-client process start.
const benchRows = 100_000

// BenchmarkArchiveInsert measures events per second into a local ClickHouse through
// the whole archive path (copy into the buffer, batch, native-protocol insert, the
// materialized views) as a steady stream: events keep arriving while earlier batches
// are written, as they do from ingest. For comparison, clickhouse-client inserts the
// same rows in Native format into the same table, one process per batch. Compare runs with
//
//	go test ./store -run '^$' -bench ArchiveInsert -benchmem -count 6 > new.txt
//	benchstat old.txt new.txt
func BenchmarkArchiveInsert(b *testing.B) {
	addr := clickhousetest.Require(b)
	evs := testEvents(1, benchRows, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), 3*time.Millisecond, 5000)
	var encoded int
	for i := range evs {
		encoded += len(appendRecord(nil, &evs[i]))
	}

	b.Run("gatewatch", func(b *testing.B) {
		db := clickhousetest.NewDatabase(b, addr)
		c := benchClickHouse(b, addr, db)
		ctx := b.Context()
		b.SetBytes(int64(encoded))
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			for chunk := range slices.Chunk(evs, 1000) { // the size of an ingest batch
				for {
					err := c.ArchiveEvents(ctx, chunk)
					if err == nil {
						break
					}
					if !errors.Is(err, ErrBufferFull) {
						b.Fatal(err)
					}
					// Ingest would go on without archiving these; the benchmark waits for room.
					time.Sleep(time.Millisecond)
				}
			}
		}
		if err := c.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N*benchRows)/b.Elapsed().Seconds(), "rows/s")
	})

	b.Run("clickhouse-client", func(b *testing.B) {
		client, err := exec.LookPath("clickhouse-client")
		if err != nil {
			b.Skip("clickhouse-client not installed (apt-get install clickhouse-client)")
		}
		db := clickhousetest.NewDatabase(b, addr)
		c := benchClickHouse(b, addr, db)
		ctx := b.Context()
		if err := c.ArchiveEvents(ctx, evs[:1]); err != nil { // migrate through the writer, then export
			b.Fatal(err)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			b.Fatal(err)
		}
		// The same rows in Native format: archive them once, export them, truncate.
		for chunk := range slices.Chunk(evs[1:], 1000) {
			if err := c.ArchiveEvents(ctx, chunk); err != nil {
				b.Fatal(err)
			}
		}
		if err := c.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		native := filepath.Join(b.TempDir(), "events.native")
		run := func(query string, stdin []byte) []byte {
			cmd := exec.CommandContext(ctx, client, "--host", host, "--port", port, "--database", db, "--query", query)
			cmd.Stdin = bytes.NewReader(stdin)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				b.Fatalf("clickhouse-client %q: %v: %s", query, err, stderr.String())
			}
			return out
		}
		data := run("SELECT "+insertColumns+" FROM events FORMAT Native", nil)
		if err := os.WriteFile(native, data, 0o600); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(encoded))
		b.ResetTimer()
		for b.Loop() {
			run("INSERT INTO events ("+insertColumns+") FORMAT Native", data)
		}
		b.ReportMetric(float64(b.N*benchRows)/b.Elapsed().Seconds(), "rows/s")
	})
}

func benchClickHouse(b *testing.B, addr, db string) *ClickHouse {
	b.Helper()
	cfg := Config{DataDir: b.TempDir(), ClickHouse: &ClickHouseConfig{Addr: []string{addr}, Database: db}}
	c, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := c.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	b.Cleanup(func() {
		cancel()
		<-done
		_ = c.Close(context.Background())
	})
	return c
}

// BenchmarkLocalArchive measures events per second into the embedded store's archive,
// in chunks the size of an ingest batch, its transactions of archiveBuffer events
// included: the embedded store archives when no ClickHouse is configured.
//
//	go test ./store -run '^$' -bench LocalArchive -benchmem -count 6
func BenchmarkLocalArchive(b *testing.B) {
	evs := testEvents(1, benchRows, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), 3*time.Millisecond, 5000)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		l, err := NewLocal(Config{DataDir: b.TempDir()}, LocalOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for chunk := range slices.Chunk(evs, 1000) {
			if err := l.ArchiveEvents(b.Context(), chunk); err != nil {
				b.Fatal(err)
			}
		}
		if err := l.Flush(b.Context()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := l.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N*benchRows)/b.Elapsed().Seconds(), "rows/s")
}

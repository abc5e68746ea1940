package store

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/testcert"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// TestBoundedConnWrite: a peer that reads nothing fails the write once write_timeout
// passes, where a bare connection would block for as long as TCP retransmits.
func TestBoundedConnWrite(t *testing.T) {
	client, server := net.Pipe() // synchronous: a write waits for a read that never comes
	t.Cleanup(func() { client.Close(); server.Close() })
	c := &boundedConn{Conn: client, writeTimeout: 10 * time.Millisecond}
	if _, err := c.Write([]byte("INSERT")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a peer that never reads = %v, want a deadline error", err)
	}
	// Each write gets a fresh deadline: the connection is usable again once the peer reads.
	go func() { _, _ = server.Read(make([]byte, 16)) }()
	c.writeTimeout = time.Minute
	if n, err := c.Write([]byte("INSERT")); err != nil || n != 6 {
		t.Fatalf("write after a timed-out one = (%d, %v), want (6, nil)", n, err)
	}
}

// TestClickHouseOverTLS archives and reads back through a server's TLS port, trusting
// it through ca_file, and refuses a server whose certificate it cannot verify.
func TestClickHouseOverTLS(t *testing.T) {
	ca := testcert.NewCA(t)
	certPEM, keyPEM := testcert.PEM(t, ca.Issue(t, "clickhouse", x509.ExtKeyUsageServerAuth))
	srv := clickhousetest.StartTLS(t, certPEM, keyPEM)
	db := clickhousetest.NewDatabase(t, srv.Addr())
	cfg := testConfig(t, srv.TLSAddr(), db)
	cfg.ClickHouse.TLS = config.TLS{Enabled: true, CAFile: testcert.WriteFile(t, t.TempDir(), "ca.pem", ca.CertPEM())}
	c := startClickHouse(t, cfg, prometheus.NewRegistry())
	ctx := testContext(t)
	evs := testEvents(3, 2500, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), time.Millisecond, 4)
	if err := c.ArchiveEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	for _, err := range c.ReadEvents(ctx, evs[0].Time, evs[len(evs)-1].Time.Add(time.Millisecond), "") {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != len(evs) {
		t.Errorf("read back %d events over TLS, want %d", n, len(evs))
	}

	untrusted := testConfig(t, srv.TLSAddr(), db)
	untrusted.ClickHouse.TLS = config.TLS{Enabled: true}
	u, err := NewClickHouse(untrusted, ClickHouseOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close(context.Background())
	if err := u.Migrate(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Migrate against a server signed by an unknown CA = %v, want a certificate error", err)
	}
}

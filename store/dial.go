package store

import (
	"context"
	"crypto/tls"
	"net"
	"time"
)

// dialer connects to ClickHouse, over TLS when tlsConfig is set, and bounds every write
// on the connection by writeTimeout. clickhouse-go bounds a write only by the context's
// deadline and only in some calls: Flush, which streams an archive insert's pieces,
// writes with no deadline at all, so a server that stopped reading (hung, or cut off
// without a reset) would hold the writer until TCP gave up, many minutes later.
func dialer(dialTimeout, writeTimeout time.Duration, tlsConfig *tls.Config) func(context.Context, string) (net.Conn, error) {
	d := &net.Dialer{Timeout: dialTimeout}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		conn = &boundedConn{Conn: conn, writeTimeout: writeTimeout}
		if tlsConfig == nil {
			return conn, nil
		}
		cfg := tlsConfig
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		tc := tls.Client(conn, cfg)
		hctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return tc, nil
	}
}

// boundedConn sets a fresh write deadline before every write, replacing whatever
// clickhouse-go set: a server that takes no bytes for write_timeout is as good as gone.
// Where clickhouse-go watches a context (Send, queries), closing the connection when it
// ends, that still bounds the whole call.
type boundedConn struct {
	net.Conn
	writeTimeout time.Duration
}

func (c *boundedConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

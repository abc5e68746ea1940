// Package syslog sends gatewatch alerts to a syslog receiver or SIEM as RFC 5424
// messages:
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [gatewatch@32473 id=".." detector=".." severity=".." key=".."] MSG
//
// PRI is the configured facility (default 10, authpriv) times 8 plus the syslog
// severity of the alert (critical 2 crit, high 3 err, medium 4 warning, low 5 notice).
// TIMESTAMP is the alert's last_seen, so the SIEM files each version of an incident at
// its newest evidence and a replayed alert lands where the original did; MSGID is the
// detector; the structured data identifies the alert for SIEM rules that do not parse
// the payload. MSG is the alert's JSON (with a schema_version), or with format cef an
// ArcSight CEF record (see AppendCEF).
//
// Transports: TCP with octet counting (RFC 6587 §3.4.1), TLS with the same framing
// (RFC 5425), or UDP with one message a datagram (RFC 5426). A stream connection is
// kept between calls and checked before reuse; a failed write drops it and the next
// attempt reconnects (retry=true).
package syslog

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/config"
)

// SchemaVersion is the version of the JSON payload, written as its schema_version.
const SchemaVersion = "1"

// SDID is the SD-ID of the structured data element. 32473 is the private enterprise
// number IANA reserves for documentation and examples (RFC 5612); gatewatch has none of
// its own, and the @ form keeps the name out of the IANA-registered namespace.
const SDID = "gatewatch@32473"

// Defaults for the SyslogConfig fields left empty.
const (
	DefaultAppName  = "gatewatch"
	DefaultFacility = 10 // authpriv: security and authorization messages
)

// maxUDPMessage is the largest UDP payload over IPv4; a larger message cannot be sent
// as one datagram, and RFC 5426 forbids splitting one.
const maxUDPMessage = 65507

// aliveProbe is how long the reuse check of a kept connection waits for the peer's
// close to show; a receiver never writes to us, so anything but a timeout means the
// connection is gone.
const aliveProbe = time.Millisecond

// Options carries what a Receiver needs besides its configuration.
type Options struct {
	// Logger gets state changes (connection lost); nil discards.
	Logger *slog.Logger
	// Hostname is the HOSTNAME field; empty: this machine's host name.
	Hostname string
	// Version is gatewatch's version, the CEF header's Device Version; empty: the
	// module version from the build info, else "dev".
	Version string
	// Dial opens the transport connection (before TLS); nil: a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Receiver sends alerts to one syslog destination; it is safe for concurrent use.
type Receiver struct {
	name     string
	network  string // tcp, tls or udp
	address  string
	cef      bool
	facility int
	app      string
	host     string
	version  string
	tls      *tls.Config
	dial     func(ctx context.Context, network, address string) (net.Conn, error)
	log      *slog.Logger

	mu   sync.Mutex // one writer on the connection at a time
	conn net.Conn   // kept between calls; nil: dial on the next
}

var _ alerting.GroupReceiver = (*Receiver)(nil)

// New builds the receiver called name from cfg. It starts nothing and connects to
// nothing: the first Notify dials.
func New(name string, cfg alerting.SyslogConfig, o Options) (*Receiver, error) {
	if name == "" {
		return nil, errors.New("syslog: receiver needs a name")
	}
	r := &Receiver{
		name: name, network: cfg.Network, address: cfg.Address, cef: cfg.Format == "cef",
		facility: cfg.Facility, app: cfg.AppName, host: o.Hostname, version: o.Version, dial: o.Dial,
	}
	switch r.network {
	case "":
		r.network = "tcp"
	case "tcp", "tls", "udp":
	default:
		return nil, fmt.Errorf("syslog: receiver %s: network must be tcp, tls or udp, got %q", name, cfg.Network)
	}
	if _, _, err := net.SplitHostPort(cfg.Address); err != nil {
		return nil, fmt.Errorf("syslog: receiver %s: address must be host:port: %w", name, err)
	}
	if cfg.Format != "" && cfg.Format != "json" && cfg.Format != "cef" {
		return nil, fmt.Errorf("syslog: receiver %s: format must be json or cef, got %q", name, cfg.Format)
	}
	if r.facility == 0 {
		r.facility = DefaultFacility // kern (0) is the kernel's, never an application's
	}
	if r.facility < 0 || r.facility > 23 {
		return nil, fmt.Errorf("syslog: receiver %s: facility must be 0-23, got %d", name, cfg.Facility)
	}
	if r.app == "" {
		r.app = DefaultAppName
	}
	r.app = headerField(r.app, 48)
	if r.host == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("syslog: receiver %s: host name: %w", name, err)
		}
		r.host = h
	}
	r.host = headerField(r.host, 255)
	if r.version == "" {
		r.version = buildVersion()
	}
	if r.network == "udp" && cfg.TLS.On() {
		return nil, fmt.Errorf("syslog: receiver %s: TLS needs network tls, not udp", name)
	}
	tc, err := cfg.TLS.Client(r.network == "tls")
	if err != nil {
		return nil, fmt.Errorf("syslog: receiver %s: %w", name, config.Prefix("tls", err))
	}
	if tc != nil {
		if tc.ServerName == "" {
			tc.ServerName, _, _ = net.SplitHostPort(cfg.Address)
		}
		r.tls = tc
		if r.network == "tcp" {
			r.network = "tls" // tls.enabled on a tcp receiver means RFC 5425
		}
	}
	if r.dial == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		r.dial = d.DialContext
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r.log = log.With("component", "alerting", "receiver", name)
	return r, nil
}

// buildVersion is the main module's version, as `go install` stamps it.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// Name returns the receiver's name from the configuration.
func (r *Receiver) Name() string { return r.name }

// Notify sends one message per alert. Building a message fails only for an alert that
// cannot be encoded or is too large for a datagram (retry=false); any network failure
// drops the connection and asks for a retry, which reconnects. A stream write that
// fails part way may have delivered the first messages, which the retry sends again.
func (r *Receiver) Notify(ctx context.Context, alerts []detectors.Alert) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var buf []byte
	var ends []int // end of each message in buf (UDP sends them one by one)
	for i := range alerts {
		start := len(buf)
		var err error
		if r.network == "udp" {
			buf, err = r.AppendMessage(buf, &alerts[i])
		} else {
			buf, err = r.AppendFramed(buf, &alerts[i])
		}
		if err != nil {
			return false, fmt.Errorf("syslog: receiver %s: alert %s: %w", r.name, alerts[i].ID, err)
		}
		if r.network == "udp" && len(buf)-start > maxUDPMessage {
			return false, fmt.Errorf("syslog: receiver %s: alert %s: %d-byte message exceeds a UDP datagram", r.name, alerts[i].ID, len(buf)-start)
		}
		ends = append(ends, len(buf))
	}
	return r.send(ctx, buf, ends)
}

// send writes the messages in buf (each ending at ends) on the kept connection,
// dialling one when needed; r.mu is held.
func (r *Receiver) send(ctx context.Context, buf []byte, ends []int) (bool, error) {
	if len(buf) == 0 {
		return false, nil
	}
	conn, err := r.connect(ctx)
	if err != nil {
		return true, fmt.Errorf("syslog: receiver %s: connect to %s: %w", r.name, r.address, err)
	}
	if err := r.write(ctx, conn, buf, ends); err != nil {
		r.drop("write failed", err)
		return true, fmt.Errorf("syslog: receiver %s: send to %s: %w", r.name, r.address, err)
	}
	return false, nil
}

// write sends buf (all messages at once on a stream, one datagram a message over UDP)
// within ctx: its deadline becomes the write deadline, and its cancellation interrupts a
// blocked write.
func (r *Receiver) write(ctx context.Context, conn net.Conn, buf []byte, ends []int) error {
	dl, _ := ctx.Deadline()
	if err := conn.SetWriteDeadline(dl); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	if r.network != "udp" {
		_, err := conn.Write(buf)
		return contextErr(ctx, err)
	}
	start := 0
	for _, end := range ends {
		if _, err := conn.Write(buf[start:end]); err != nil {
			return contextErr(ctx, err)
		}
		start = end
	}
	return nil
}

// contextErr reports a write interrupted by ctx as ctx's error.
func contextErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return err
}

// connect returns the kept connection when it is still open, else dials a new one.
func (r *Receiver) connect(ctx context.Context) (net.Conn, error) {
	if r.conn != nil {
		if r.network == "udp" || alive(r.conn) {
			return r.conn, nil
		}
		r.drop("closed by the receiver", nil)
	}
	network := r.network
	if network == "tls" {
		network = "tcp"
	}
	conn, err := r.dial(ctx, network, r.address)
	if err != nil {
		return nil, err
	}
	if r.tls != nil {
		tc := tls.Client(conn, r.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		conn = tc
	}
	r.conn = conn
	return conn, nil
}

// alive reports whether a kept stream connection is still open. A syslog receiver
// never sends, so a read that times out means open; EOF, a reset or unexpected data
// mean the peer closed or broke it, and a write would vanish into a dead socket. The
// read is done on the raw connection, below TLS.
func alive(c net.Conn) bool {
	raw := c
	if tc, ok := c.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if err := raw.SetReadDeadline(time.Now().Add(aliveProbe)); err != nil {
		return false
	}
	var b [1]byte
	_, err := raw.Read(b[:])
	_ = raw.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// drop closes the kept connection; the next Notify dials again.
func (r *Receiver) drop(reason string, err error) {
	if r.conn == nil {
		return
	}
	_ = r.conn.Close()
	r.conn = nil
	r.log.Warn("syslog connection dropped", "reason", reason, "address", r.address, "err", err)
}

// Close closes the connection, if one is open.
func (r *Receiver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return nil
	}
	err := r.conn.Close()
	r.conn = nil
	return err
}

// syslogSeverity maps gatewatch's severities to RFC 5424 §6.2.1 severities.
func syslogSeverity(s detectors.Severity) int {
	switch s {
	case detectors.SeverityCritical:
		return 2 // crit
	case detectors.SeverityHigh:
		return 3 // err
	case detectors.SeverityMedium:
		return 4 // warning
	}
	return 5 // notice: low, and anything unknown
}

// AppendFramed appends a's message with octet-counting framing (RFC 6587 §3.4.1):
// its length in bytes, a space, the message.
func (r *Receiver) AppendFramed(dst []byte, a *detectors.Alert) ([]byte, error) {
	start := len(dst)
	msg, err := r.AppendMessage(dst, a)
	if err != nil {
		return dst, err
	}
	n := len(msg) - start
	prefix := strconv.AppendInt(nil, int64(n), 10)
	prefix = append(prefix, ' ')
	msg = append(msg, prefix...) // grow, then shift the message right by len(prefix)
	copy(msg[start+len(prefix):], msg[start:start+n])
	copy(msg[start:], prefix)
	return msg, nil
}

// AppendMessage appends a's RFC 5424 message, without framing.
func (r *Receiver) AppendMessage(dst []byte, a *detectors.Alert) ([]byte, error) {
	dst = append(dst, '<')
	dst = strconv.AppendInt(dst, int64(r.facility*8+syslogSeverity(a.Severity)), 10)
	dst = append(dst, ">1 "...)
	if a.LastSeen.IsZero() {
		dst = append(dst, '-')
	} else {
		dst = a.LastSeen.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000Z07:00")
	}
	dst = append(dst, ' ')
	dst = append(dst, r.host...)
	dst = append(dst, ' ')
	dst = append(dst, r.app...)
	dst = append(dst, " - "...) // PROCID: which process sent it does not help the SIEM
	dst = append(dst, headerField(a.Detector, 32)...)
	dst = append(dst, ' ')
	dst = appendSD(dst, a)
	dst = append(dst, ' ')
	if r.cef {
		return AppendCEF(dst, a, r.host, r.version), nil
	}
	// MSG-ANY without a BOM: a BOM in front of the JSON (or of "CEF:") breaks the
	// SIEM parsers that expect the payload to start there.
	b, err := a.MarshalJSON()
	if err != nil {
		return dst, err
	}
	dst = append(dst, `{"schema_version":"`+SchemaVersion+`",`...)
	return append(dst, b[1:]...), nil
}

// appendSD appends the structured data element that identifies the alert.
func appendSD(dst []byte, a *detectors.Alert) []byte {
	dst = append(dst, "["+SDID...)
	for _, p := range [...]struct{ name, value string }{
		{"id", a.ID}, {"detector", a.Detector}, {"severity", string(a.Severity)}, {"key", a.Key},
	} {
		dst = append(dst, ' ')
		dst = append(dst, p.name...)
		dst = append(dst, '=', '"')
		dst = appendParamValue(dst, p.value)
		dst = append(dst, '"')
	}
	return append(dst, ']')
}

// appendParamValue escapes a PARAM-VALUE as RFC 5424 §6.3.3 requires: '"', '\' and ']'
// get a backslash. Invalid UTF-8 becomes U+FFFD, since the value must be UTF-8.
func appendParamValue(dst []byte, s string) []byte {
	for _, c := range s {
		switch c {
		case '"', '\\', ']':
			dst = append(dst, '\\', byte(c))
		default:
			dst = utf8.AppendRune(dst, c)
		}
	}
	return dst
}

// headerField makes s a valid HOSTNAME, APP-NAME or MSGID: printable US-ASCII without
// spaces (RFC 5424 §6), at most n characters; "-" (NILVALUE) when nothing is left.
func headerField(s string, n int) string {
	b := make([]byte, 0, min(len(s), n))
	for i := 0; i < len(s) && len(b) < n; i++ {
		if c := s[i]; c >= 33 && c <= 126 {
			b = append(b, c)
		} else {
			b = append(b, '_')
		}
	}
	if len(b) == 0 {
		return "-"
	}
	return string(b)
}

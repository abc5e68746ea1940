package syslog

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/testcert"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from current output")

// readAlerts returns the shared sample of realistic alerts, incidents with their versions.
func readAlerts(t testing.TB) []detectors.Alert { return alertingtest.Sample(t) }

func newReceiver(t testing.TB, cfg alerting.SyslogConfig) *Receiver {
	t.Helper()
	if cfg.Address == "" {
		cfg.Address = "127.0.0.1:6514"
	}
	r, err := New("siem-syslog", cfg, Options{Hostname: "gw-1", Version: "1.4.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// messages returns the RFC 5424 message of each alert, unframed.
func messages(t testing.TB, r *Receiver, alerts []detectors.Alert) []string {
	t.Helper()
	out := make([]string, len(alerts))
	for i := range alerts {
		b, err := r.AppendMessage(nil, &alerts[i])
		if err != nil {
			t.Fatal(err)
		}
		out[i] = string(b)
	}
	return out
}

// TestGolden compares the exact bytes of every test alert's message, JSON and CEF,
// with testdata/<format>.golden (one message a line: none contains a line break).
func TestGolden(t *testing.T) {
	alerts := readAlerts(t)
	for _, format := range []string{"json", "cef"} {
		t.Run(format, func(t *testing.T) {
			r := newReceiver(t, alerting.SyslogConfig{Format: format})
			got := []byte(strings.Join(messages(t, r, alerts), "\n") + "\n")
			golden := filepath.Join("testdata", format+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run Golden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("messages differ from %s (run with -update and review the diff):\n%s", golden, got)
			}
		})
	}
}

func TestFraming(t *testing.T) {
	r := newReceiver(t, alerting.SyslogConfig{})
	a := readAlerts(t)[0]
	msg, _ := r.AppendMessage(nil, &a)
	framed, err := r.AppendFramed([]byte("prev"), &a)
	if err != nil {
		t.Fatal(err)
	}
	if want := "prev" + strconv.Itoa(len(msg)) + " " + string(msg); string(framed) != want {
		t.Errorf("AppendFramed = %q, want %q (octet count, space, message)", framed, want)
	}
}

func TestPRI(t *testing.T) {
	for _, tc := range []struct {
		facility int
		sev      detectors.Severity
		want     string
	}{
		{0, detectors.SeverityCritical, "<82>1 "}, // default facility 10 (authpriv): 80 + 2 crit
		{10, detectors.SeverityHigh, "<83>1 "},    // err
		{4, detectors.SeverityMedium, "<36>1 "},   // auth, warning
		{23, detectors.SeverityLow, "<189>1 "},    // local7, notice
		{1, "bogus", "<13>1 "},                    // user, notice
	} {
		r := newReceiver(t, alerting.SyslogConfig{Facility: tc.facility})
		a := detectors.Alert{ID: "x", Detector: "d", Severity: tc.sev}
		b, err := r.AppendMessage(nil, &a)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte(tc.want)) {
			t.Errorf("facility %d, severity %s: message starts %q, want %q", tc.facility, tc.sev, b[:min(len(b), 8)], tc.want)
		}
	}
}

func TestEscaping(t *testing.T) {
	for _, tc := range []struct{ name, got, want string }{
		{"param value", string(appendParamValue(nil, `a"b\c]d`)), `a\"b\\c\]d`},
		{"param value invalid utf-8", string(appendParamValue(nil, "a\xffb")), "a\uFFFDb"},
		{"cef header", string(appendCEFHeader(nil, "a|b\\c\nd=e")), `a\|b\\c d=e`},
		{"cef value", string(appendCEFValue(nil, "a=b\\c\nd\re|f")), `a\=b\\c\nd\re|f`},
		{"header field", headerField("my host\x01é", 255), "my_host___"},
		{"header field length", headerField(strings.Repeat("x", 40), 32), strings.Repeat("x", 32)},
		{"header field empty", headerField("", 48), "-"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}

	// A hostile key cannot end the structured data or the CEF field early.
	a := readAlerts(t)[3]
	a.Key = `k"] [fake@1 x="y`
	a.Summary = "sum|mary\nwith CEF:0|break"
	a.Evidence.SamplePaths = []string{"/p?x=1 cs1=forged"}
	r := newReceiver(t, alerting.SyslogConfig{Format: "cef"})
	b, err := r.AppendMessage(nil, &a)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`key="k\"\] [fake@1 x=\"y"]`, `|sum\|mary with CEF:0\|break|`, `request=/p?x\=1 cs1\=forged`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("message %s\ndoes not contain %s", b, want)
		}
	}
	if bytes.ContainsAny(b, "\r\n") {
		t.Errorf("message %q contains a line break", b)
	}
}

// TestRsyslog sends every test alert to a real rsyslogd over TCP (octet counting) and
// UDP, in JSON and CEF, and reads back what it received: the raw message must be
// byte for byte what was sent, and rsyslog's RFC 5424 parser must find each field.
func TestRsyslog(t *testing.T) {
	alerts := readAlerts(t)
	for _, network := range []string{"tcp", "udp"} {
		for _, format := range []string{"json", "cef"} {
			t.Run(network+"/"+format, func(t *testing.T) {
				rs := startRsyslog(t, 0)
				addr := rs.TCPAddr
				if network == "udp" {
					addr = rs.UDPAddr
				}
				r := newReceiver(t, alerting.SyslogConfig{Network: network, Address: addr, Format: format})
				// Two calls: the second reuses the connection the first opened.
				for _, batch := range [][]detectors.Alert{alerts[:3], alerts[3:]} {
					if retry, err := r.Notify(context.Background(), batch); err != nil {
						t.Fatalf("Notify = (%v, %v)", retry, err)
					}
				}
				want := messages(t, r, alerts)
				raw := rs.waitLines(t, rs.raw, len(want))
				parsed := rs.waitLines(t, rs.parsed, len(want))
				// One socket to one imudp listener on loopback keeps datagrams in order,
				// so UDP is compared in order too.
				for i, w := range want {
					if raw[i] != w {
						t.Errorf("rsyslog received message %d as\n%s\nwant\n%s", i, raw[i], w)
					}
					checkParsed(t, parsed[i], r, &alerts[i], format)
				}
			})
		}
	}
}

// checkParsed checks the fields rsyslog parsed from one message (the "parsed" template:
// pri|version|timestamp|hostname|app-name|procid|msgid|structured-data|msg).
func checkParsed(t *testing.T, line string, r *Receiver, a *detectors.Alert, format string) {
	t.Helper()
	f := strings.SplitN(line, "|", 9)
	if len(f) != 9 {
		t.Errorf("rsyslog parsed %q into %d fields, want 9", line, len(f))
		return
	}
	sd := string(appendSD(nil, a))
	var payload string
	if format == "cef" {
		payload = string(AppendCEF(nil, a, "gw-1", "1.4.0"))
	} else {
		j, _ := a.MarshalJSON()
		payload = `{"schema_version":"1",` + string(j[1:])
	}
	want := []string{
		strconv.Itoa(10*8 + syslogSeverity(a.Severity)), "1", a.LastSeen.UTC().Format("2006-01-02T15:04:05.000Z"),
		"gw-1", "gatewatch", "-", a.Detector, sd, payload,
	}
	names := []string{"pri", "version", "timestamp", "hostname", "app-name", "procid", "msgid", "structured-data", "msg"}
	for i := range want {
		if f[i] != want[i] {
			t.Errorf("rsyslog parsed %s = %q, want %q", names[i], f[i], want[i])
		}
	}
}

// TestReconnect stops rsyslogd under a kept connection: the next Notify must notice
// the dead connection (not write into it and report success), fail with retry=true
// while nothing listens, and deliver once rsyslogd is back on the same port.
func TestReconnect(t *testing.T) {
	alerts := readAlerts(t)
	rs := startRsyslog(t, 0)
	_, port, _ := net.SplitHostPort(rs.TCPAddr)
	r := newReceiver(t, alerting.SyslogConfig{Address: rs.TCPAddr})
	if _, err := r.Notify(context.Background(), alerts[:1]); err != nil {
		t.Fatal(err)
	}
	rs.waitLines(t, rs.raw, 1)
	rs.stop(t)

	retry, err := r.Notify(context.Background(), alerts[1:2])
	if err == nil || !retry {
		t.Fatalf("Notify with rsyslogd stopped = (%v, %v), want (true, error)", retry, err)
	}

	p, _ := strconv.Atoi(port)
	rs2 := startRsyslog(t, p)
	if retry, err := r.Notify(context.Background(), alerts[1:2]); err != nil {
		t.Fatalf("Notify after rsyslogd came back = (%v, %v), want success", retry, err)
	}
	got := rs2.waitLines(t, rs2.raw, 1)
	if want := messages(t, r, alerts[1:2])[0]; got[0] != want {
		t.Errorf("after reconnecting, rsyslog received\n%s\nwant\n%s", got[0], want)
	}
}

// TestTLS sends over RFC 5425 to a Go TLS listener (rsyslog's TLS needs the gtls
// driver, not installed with Debian's rsyslog): the client must verify the server with
// the configured CA and frame each message with its octet count.
func TestTLS(t *testing.T) {
	testCA := testcert.NewCA(t)
	cert := testCA.Issue(t, "syslog test", x509.ExtKeyUsageServerAuth)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	received := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go readFrames(c, received)
		}
	}()
	ca := testcert.WriteFile(t, t.TempDir(), "ca.pem", testCA.CertPEM())
	alerts := readAlerts(t)
	r := newReceiver(t, alerting.SyslogConfig{Network: "tls", Address: ln.Addr().String(), Format: "cef", TLS: config.TLS{CAFile: ca}})
	if retry, err := r.Notify(context.Background(), alerts); err != nil {
		t.Fatalf("Notify over TLS = (%v, %v)", retry, err)
	}
	for i, want := range messages(t, r, alerts) {
		select {
		case got := <-received:
			if got != want {
				t.Errorf("TLS listener received message %d as\n%s\nwant\n%s", i, got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("TLS listener received %d of %d messages", i, len(alerts))
		}
	}

	untrusted := newReceiver(t, alerting.SyslogConfig{Network: "tls", Address: ln.Addr().String()})
	retry, err := untrusted.Notify(context.Background(), alerts[:1])
	if err == nil || !retry || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Notify to an untrusted server = (%v, %v), want (true, a certificate error)", retry, err)
	}
}

// readFrames reads octet-counted messages from c until it closes.
func readFrames(c net.Conn, out chan<- string) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		n, err := br.ReadString(' ')
		if err != nil {
			return
		}
		size, err := strconv.Atoi(strings.TrimSuffix(n, " "))
		if err != nil {
			return
		}
		msg := make([]byte, size)
		if _, err := io.ReadFull(br, msg); err != nil {
			return
		}
		out <- string(msg)
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := newReceiver(t, alerting.SyslogConfig{Address: addr})
	retry, err := r.Notify(context.Background(), readAlerts(t)[:1])
	if err == nil || !retry || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Notify with nothing listening = (%v, %v), want (true, connection refused)", retry, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	retry, err = r.Notify(ctx, readAlerts(t)[:1])
	if err == nil || !retry || !errors.Is(err, context.Canceled) {
		t.Errorf("Notify with a cancelled context = (%v, %v), want (true, context.Canceled)", retry, err)
	}
}

func TestUDPMessageTooLarge(t *testing.T) {
	a := readAlerts(t)[0]
	for i := range 5000 {
		a.Evidence.SamplePaths = append(a.Evidence.SamplePaths, fmt.Sprintf("/v1/users/%032d", i))
	}
	r := newReceiver(t, alerting.SyslogConfig{Network: "udp", Address: "127.0.0.1:9"})
	retry, err := r.Notify(context.Background(), []detectors.Alert{a})
	if err == nil || retry || !strings.Contains(err.Error(), "exceeds a UDP datagram") {
		t.Errorf("Notify of a %d-path alert over UDP = (%v, %v), want (false, too large)", len(a.Evidence.SamplePaths), retry, err)
	}
}

func TestNewRejects(t *testing.T) {
	for _, cfg := range []alerting.SyslogConfig{
		{Address: "no-port"},
		{Address: "h:514", Network: "sctp"},
		{Address: "h:514", Format: "leef"},
		{Address: "h:514", Facility: 24},
		{Address: "h:514", Network: "udp", TLS: config.TLS{Enabled: true}},
	} {
		if _, err := New("s", cfg, Options{Hostname: "h"}); err == nil {
			t.Errorf("New(%+v) succeeded, want an error", cfg)
		}
	}
}

// BenchmarkCEF measures building one alert's syslog message with a CEF payload.
func BenchmarkCEF(b *testing.B) {
	r, err := New("s", alerting.SyslogConfig{Address: "127.0.0.1:514", Format: "cef"}, Options{Hostname: "gw-1", Version: "1.4.0"})
	if err != nil {
		b.Fatal(err)
	}
	a := &readAlerts(b)[4] // forbidden_burst
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		if buf, err = r.AppendFramed(buf[:0], a); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

package splunkhec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/alerting/splunkhec/hectest"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/config"
)

var _ alerting.BatchSizer = (*Receiver)(nil)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from current output")

// readAlerts returns the shared sample of realistic alerts, incidents with their versions.
func readAlerts(t testing.TB) []detectors.Alert { return alertingtest.Sample(t) }

func writeSecret(t testing.TB, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hec-token")
	if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newReceiver builds a receiver for srv with the token the server accepts.
func newReceiver(t testing.TB, srv *hectest.Server, cfg alerting.SplunkHECConfig) *Receiver {
	t.Helper()
	cfg.URL = srv.URL
	if cfg.TokenFile == "" {
		cfg.TokenFile = writeSecret(t, hectest.DefaultToken)
	}
	if cfg.Index == "" {
		cfg.Index = "security"
	}
	r, err := New("siem", cfg, Options{Host: "gw-1"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestGoldenPayload sends every test alert in one batch and compares the exact request
// body with testdata/events.golden; the test server must parse it as HEC does, and each
// event must carry the alert unchanged plus its schema_version.
func TestGoldenPayload(t *testing.T) {
	srv := hectest.New(t, hectest.Options{})
	alerts := readAlerts(t)
	r := newReceiver(t, srv, alerting.SplunkHECConfig{})
	if retry, err := r.Notify(context.Background(), alerts); err != nil {
		t.Fatalf("Notify = (%v, %v)", retry, err)
	}
	reqs := srv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1 batch", len(reqs))
	}
	req := reqs[0]
	if got, want := req.Header.Get("Authorization"), "Splunk "+hectest.DefaultToken; got != want {
		t.Errorf("Authorization = %q, want %q", got, want)
	}
	if req.Path != "/services/collector/event" || req.Method != http.MethodPost {
		t.Errorf("request %s %s, want POST /services/collector/event", req.Method, req.Path)
	}
	golden := filepath.Join("testdata", "events.golden")
	if *update {
		if err := os.WriteFile(golden, req.Body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run Golden -update to create it)", err)
	}
	if !bytes.Equal(req.Body, want) {
		t.Errorf("body differs from %s (run with -update and review the diff):\n%s", golden, req.Body)
	}

	events := srv.Events()
	if len(events) != len(alerts) {
		t.Fatalf("server indexed %d events, want %d", len(events), len(alerts))
	}
	for i, ev := range events {
		a := alerts[i]
		if ev.Host != "gw-1" || ev.Source != DefaultSource || ev.SourceType != DefaultSourceType || ev.Index != "security" {
			t.Errorf("event %d metadata = %s/%s/%s/%s, want gw-1/%s/%s/security", i, ev.Host, ev.Source, ev.SourceType, ev.Index, DefaultSource, DefaultSourceType)
		}
		wantTime := time.UnixMilli(a.LastSeen.UnixMilli())
		if sec, err := ev.Time.Float64(); err != nil || time.UnixMilli(int64(sec*1000+0.5)) != wantTime {
			t.Errorf("event %d time = %s, want last_seen %s in epoch seconds", i, ev.Time, a.LastSeen)
		}
		var payload struct {
			SchemaVersion string `json:"schema_version"`
			detectors.Alert
		}
		if err := json.Unmarshal(ev.Event, &payload); err != nil {
			t.Fatal(err)
		}
		got, _ := json.Marshal(payload.Alert)
		orig, _ := json.Marshal(a)
		if payload.SchemaVersion != SchemaVersion || !bytes.Equal(got, orig) {
			t.Errorf("event %d = %s, want schema_version %s and the alert %s", i, ev.Event, SchemaVersion, orig)
		}
	}
}

func TestBatches(t *testing.T) {
	srv := hectest.New(t, hectest.Options{})
	alerts := readAlerts(t)
	r := newReceiver(t, srv, alerting.SplunkHECConfig{BatchSize: 3})
	if retry, err := r.Notify(context.Background(), alerts); err != nil {
		t.Fatalf("Notify = (%v, %v)", retry, err)
	}
	if n, want := len(srv.Requests()), (len(alerts)+2)/3; n != want {
		t.Errorf("%d alerts in batches of 3 took %d requests, want %d", len(alerts), n, want)
	}
	events := srv.Events()
	for i, ev := range events {
		if !strings.Contains(string(ev.Event), `"id":"`+alerts[i].ID+`"`) {
			t.Errorf("event %d is not alert %s: order lost", i, alerts[i].ID)
		}
	}

	// The second batch fails: the error names it, and the first batch is indexed.
	srv2 := hectest.New(t, hectest.Options{})
	r2 := newReceiver(t, srv2, alerting.SplunkHECConfig{BatchSize: 3})
	srv2.FailNext(hectest.Fault{}, hectest.Fault{Status: http.StatusServiceUnavailable, Code: 9, Text: "Server is busy"})
	retry, err := r2.Notify(context.Background(), alerts)
	if !retry || err == nil || !strings.Contains(err.Error(), fmt.Sprintf("events 4-6 of %d", len(alerts))) {
		t.Errorf("Notify with the second batch refused = (%v, %v), want (true, an error naming events 4-6)", retry, err)
	}
}

func TestErrors(t *testing.T) {
	alerts := readAlerts(t)[:2]
	for _, tc := range []struct {
		name      string
		fault     hectest.Fault
		wantRetry bool
		wantAfter time.Duration
		wantText  string
	}{
		{"server busy", hectest.Fault{Status: 503, Code: 9, Text: "Server is busy"}, true, 0, "Server is busy (HEC code 9)"},
		{"queues full", hectest.Fault{Status: 503, Code: 18, Text: "HEC is unhealthy, queues are full"}, true, 0, "queues are full"},
		{"internal error", hectest.Fault{Status: 500, Code: 8, Text: "Internal server error"}, true, 0, "500"},
		{"429 with Retry-After", hectest.Fault{Status: 429, RetryAfter: "5"}, true, 5 * time.Second, "429"},
		{"invalid token", hectest.Fault{Status: 403, Code: 4, Text: "Invalid token"}, false, 0, "Invalid token (HEC code 4)"},
		{"token disabled", hectest.Fault{Status: 403, Code: 1, Text: "Token disabled"}, false, 0, "Token disabled"},
		{"token required", hectest.Fault{Status: 401, Code: 2, Text: "Token is required"}, false, 0, "401"},
		{"invalid data", hectest.Fault{Status: 400, Code: 6, Text: "Invalid data format"}, false, 0, "Invalid data format"},
		{"redirect", hectest.Fault{Status: 302}, false, 0, "302"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := hectest.New(t, hectest.Options{})
			r := newReceiver(t, srv, alerting.SplunkHECConfig{})
			srv.FailNext(tc.fault)
			retry, err := r.Notify(context.Background(), alerts)
			checkErr(t, retry, err, tc.wantRetry, tc.wantAfter, tc.wantText)
		})
	}
}

func checkErr(t *testing.T, retry bool, err error, wantRetry bool, wantAfter time.Duration, wantText string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Notify = (%v, nil), want an error", retry)
	}
	if retry != wantRetry {
		t.Errorf("Notify retry = %v, want %v (err: %v)", retry, wantRetry, err)
	}
	var ra *alerting.RetryAfterError
	if got := errors.As(err, &ra); got != (wantAfter > 0) || (got && ra.After != wantAfter) {
		t.Errorf("Notify err = %v, want a RetryAfterError of %s: %v", err, wantAfter, got)
	}
	if !strings.Contains(err.Error(), wantText) {
		t.Errorf("Notify err = %q, want it to mention %q", err, wantText)
	}
	if strings.Contains(err.Error(), hectest.DefaultToken) {
		t.Errorf("Notify err = %q carries the token", err)
	}
}

// TestServerRejects runs into the test server's own checks, as a misconfigured
// receiver would into Splunk's.
func TestServerRejects(t *testing.T) {
	alerts := readAlerts(t)[:1]
	t.Run("wrong token", func(t *testing.T) {
		srv := hectest.New(t, hectest.Options{})
		r := newReceiver(t, srv, alerting.SplunkHECConfig{TokenFile: writeSecret(t, "00000000-wrong-token")})
		retry, err := r.Notify(context.Background(), alerts)
		checkErr(t, retry, err, false, 0, "Invalid token (HEC code 4)")
		if strings.Contains(err.Error(), "00000000-wrong-token") {
			t.Errorf("error %q carries the configured token", err)
		}
	})
	t.Run("index not allowed", func(t *testing.T) {
		srv := hectest.New(t, hectest.Options{Indexes: []string{"main"}})
		r := newReceiver(t, srv, alerting.SplunkHECConfig{Index: "security"})
		retry, err := r.Notify(context.Background(), alerts)
		checkErr(t, retry, err, false, 0, "Incorrect index (HEC code 7, event 1 of the batch)")
	})
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r, err := New("siem", alerting.SplunkHECConfig{URL: "http://admin:hunter2@" + addr, TokenFile: writeSecret(t, hectest.DefaultToken)}, Options{Host: "gw-1"})
	if err != nil {
		t.Fatal(err)
	}
	retry, err := r.Notify(context.Background(), readAlerts(t)[:1])
	checkErr(t, retry, err, true, 0, "connection refused")
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q carries the password of the URL", err)
	}

	srv := hectest.New(t, hectest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	retry, err = newReceiver(t, srv, alerting.SplunkHECConfig{}).Notify(ctx, readAlerts(t)[:1])
	checkErr(t, retry, err, true, 0, "context canceled")
}

func TestTLS(t *testing.T) {
	srv := hectest.New(t, hectest.Options{TLS: true})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, srv.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	r := newReceiver(t, srv, alerting.SplunkHECConfig{TLS: config.TLS{CAFile: ca}})
	alerts := readAlerts(t)
	if retry, err := r.Notify(context.Background(), alerts); err != nil {
		t.Fatalf("Notify over TLS with the server's CA = (%v, %v)", retry, err)
	}
	if n := len(srv.Events()); n != len(alerts) {
		t.Errorf("server indexed %d events over TLS, want %d", n, len(alerts))
	}

	untrusted := newReceiver(t, srv, alerting.SplunkHECConfig{})
	if _, err := untrusted.Notify(context.Background(), readAlerts(t)[:1]); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Notify to a server with an untrusted certificate = %v, want a certificate error", err)
	}
}

func TestNewRejectsBadURL(t *testing.T) {
	tok := writeSecret(t, hectest.DefaultToken)
	for _, u := range []string{"", "splunk:8088", "ftp://splunk:8088"} {
		if _, err := New("siem", alerting.SplunkHECConfig{URL: u, TokenFile: tok}, Options{Host: "h"}); err == nil {
			t.Errorf("New with url %q succeeded", u)
		}
	}
	r, err := New("siem", alerting.SplunkHECConfig{URL: "https://splunk:8088/services/collector/event", TokenFile: tok}, Options{Host: "h"})
	if err != nil || r.endpoint != "https://splunk:8088/services/collector/event" {
		t.Errorf("New with the full collector URL: endpoint %q, err %v; want the URL unchanged", r.endpoint, err)
	}
}

// BenchmarkHECEvents measures encoding a batch of the test alerts as HEC events.
func BenchmarkHECEvents(b *testing.B) {
	alerts := readAlerts(b)
	r, err := New("siem", alerting.SplunkHECConfig{URL: "https://splunk:8088", TokenFile: writeSecret(b, "t"), Index: "security"}, Options{Host: "gw-1"})
	if err != nil {
		b.Fatal(err)
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = buf[:0]
		for i := range alerts {
			if buf, err = r.AppendEvent(buf, &alerts[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.SetBytes(int64(len(buf)))
	b.ReportMetric(float64(b.N*len(alerts))/b.Elapsed().Seconds(), "events/s")
}

package webhook_test

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/alerting/webhook"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	secret     = "hmac-key-0123456789"
	secretPath = "/hooks/T0001/B0002/sEcReTtOkEn"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newReceiver points a webhook receiver at url, with the URL and secret in files as
// an operator would keep them.
func newReceiver(t *testing.T, url string) *webhook.Receiver {
	t.Helper()
	r, err := webhook.New("hook", alerting.WebhookConfig{
		URLFile:    writeFile(t, "url", url),
		SecretFile: writeFile(t, "secret", secret),
	}, webhook.Options{Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// request is what the test endpoint received.
type request struct {
	method, path string
	header       http.Header
	body         []byte
}

func endpoint(t *testing.T, respond func(w http.ResponseWriter, r *http.Request)) (*httptest.Server, func() []request) {
	t.Helper()
	var mu sync.Mutex
	var got []request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, request{r.Method, r.URL.Path, r.Header.Clone(), body})
		mu.Unlock()
		respond(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []request {
		mu.Lock()
		defer mu.Unlock()
		return append([]request(nil), got...)
	}
}

func TestNotifyPostsSignedPayload(t *testing.T) {
	srv, got := endpoint(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })
	r := newReceiver(t, srv.URL+secretPath)
	as := alertingtest.Alerts(2, t0)
	if retry, err := r.Notify(context.Background(), as); err != nil {
		t.Fatalf("Notify = %v, %v", retry, err)
	}
	reqs := got()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	req := reqs[0]
	if req.method != http.MethodPost || req.path != secretPath || req.header.Get("Content-Type") != "application/json" {
		t.Errorf("request %s %s %q", req.method, req.path, req.header.Get("Content-Type"))
	}
	// What an endpoint does: recompute the HMAC over the raw body, compare in
	// constant time.
	want := webhook.Sign([]byte(secret), req.body)
	if sig := req.header.Get(webhook.SignatureHeader); !hmac.Equal([]byte(sig), []byte(want)) || !strings.HasPrefix(sig, "sha256=") || len(sig) != 7+64 {
		t.Errorf("signature %q, want %q", sig, want)
	}
	if ts := req.header.Get(webhook.TimestampHeader); ts != strconv.FormatInt(t0.Unix(), 10) {
		t.Errorf("timestamp %q, want %d", ts, t0.Unix())
	}
	var p struct {
		Version string            `json:"version"`
		Alerts  []json.RawMessage `json:"alerts"`
	}
	if err := json.Unmarshal(req.body, &p); err != nil {
		t.Fatal(err)
	}
	if p.Version != "1" || len(p.Alerts) != 2 {
		t.Fatalf("payload version %q with %d alerts, want version 1 with 2", p.Version, len(p.Alerts))
	}
	for i, raw := range p.Alerts {
		want, _ := json.Marshal(as[i])
		if string(raw) != string(want) {
			t.Errorf("alert %d = %s, want the Alert JSON contract %s", i, raw, want)
		}
	}
	// A different secret gives a different signature.
	if webhook.Sign([]byte("other"), req.body) == want {
		t.Error("the signature does not depend on the secret")
	}
}

func TestNotifyStatuses(t *testing.T) {
	for _, c := range []struct {
		name       string
		status     int
		header     map[string]string
		wantErr    bool
		wantRetry  bool
		retryAfter time.Duration
	}{
		{"200 accepts", 200, nil, false, false, 0},
		{"204 accepts", 204, nil, false, false, 0},
		{"429 with seconds", 429, map[string]string{"Retry-After": "7"}, true, true, 7 * time.Second},
		{"429 with a date", 429, map[string]string{"Retry-After": t0.Add(2 * time.Minute).Format(http.TimeFormat)}, true, true, 2 * time.Minute},
		{"429 without a header", 429, nil, true, true, 0},
		{"500 retries", 500, nil, true, true, 0},
		{"503 retries", 503, nil, true, true, 0},
		{"408 retries", 408, nil, true, true, 0},
		{"400 is final", 400, nil, true, false, 0},
		{"401 is final", 401, nil, true, false, 0},
		{"404 is final", 404, nil, true, false, 0},
		{"a redirect is not followed", 301, map[string]string{"Location": "https://elsewhere.example/"}, true, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, got := endpoint(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range c.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(c.status)
				// An endpoint echoing the request path, which is the credential.
				_, _ = io.WriteString(w, "no such hook: "+r.URL.Path)
			})
			r := newReceiver(t, srv.URL+secretPath)
			retry, err := r.Notify(context.Background(), alertingtest.Alerts(1, t0))
			if (err != nil) != c.wantErr || retry != c.wantRetry {
				t.Fatalf("Notify = %v, %v; want retry %v, error %v", retry, err, c.wantRetry, c.wantErr)
			}
			if n := len(got()); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
			if err == nil {
				return
			}
			if strings.Contains(err.Error(), "sEcReTtOkEn") || strings.Contains(err.Error(), srv.URL) {
				t.Errorf("error %q carries the webhook URL", err)
			}
			var ra *alerting.RetryAfterError
			if gotRA := errors.As(err, &ra); gotRA != (c.status == 429) {
				t.Errorf("RetryAfterError = %v, want %v", gotRA, c.status == 429)
			} else if gotRA && ra.After != c.retryAfter {
				t.Errorf("Retry-After = %v, want %v", ra.After, c.retryAfter)
			}
			var se *alerting.HTTPStatusError
			if !errors.As(err, &se) || se.StatusCode != c.status {
				t.Errorf("error %v does not carry status %d", err, c.status)
			}
		})
	}
}

func TestNotifyTransportErrorsRetryWithoutTheURL(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL + secretPath
		srv.Close()
		r := newReceiver(t, url)
		retry, err := r.Notify(context.Background(), alertingtest.Alerts(1, t0))
		if err == nil || !retry {
			t.Fatalf("Notify = %v, %v; want a retryable error", retry, err)
		}
		if strings.Contains(err.Error(), "sEcReTtOkEn") || strings.Contains(err.Error(), url) {
			t.Errorf("error %q carries the webhook URL", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		srv, _ := endpoint(t, func(http.ResponseWriter, *http.Request) { <-release })
		defer close(release)
		r := newReceiver(t, srv.URL+secretPath)
		cause := errors.New("alerting: receiver hook: attempt took longer than its timeout 50ms")
		ctx, cancel := context.WithTimeoutCause(context.Background(), 50*time.Millisecond, cause)
		defer cancel()
		retry, err := r.Notify(ctx, alertingtest.Alerts(1, t0))
		if err == nil || !retry || !(errors.Is(err, cause) || errors.Is(err, context.DeadlineExceeded)) {
			t.Fatalf("Notify = %v, %v; want a retryable error that says the attempt timed out", retry, err)
		}
		if strings.Contains(err.Error(), "sEcReTtOkEn") {
			t.Errorf("error %q carries the webhook URL", err)
		}
	})
}

func TestNewLoadsSecrets(t *testing.T) {
	t.Setenv("GW_TEST_HOOK_URL", "https://hooks.example.com"+secretPath)
	t.Setenv("GW_TEST_HOOK_SECRET", secret)
	if _, err := webhook.New("hook", alerting.WebhookConfig{URLEnv: "GW_TEST_HOOK_URL", SecretEnv: "GW_TEST_HOOK_SECRET"}, webhook.Options{}); err != nil {
		t.Errorf("New from the environment: %v", err)
	}
	for _, c := range []struct {
		name string
		cfg  alerting.WebhookConfig
	}{
		{"no url", alerting.WebhookConfig{SecretEnv: "GW_TEST_HOOK_SECRET"}},
		{"no secret", alerting.WebhookConfig{URLEnv: "GW_TEST_HOOK_URL"}},
		{"not a URL", alerting.WebhookConfig{URLFile: writeFile(t, "url", "hooks.example.com"+secretPath), SecretEnv: "GW_TEST_HOOK_SECRET"}},
		{"not http", alerting.WebhookConfig{URLFile: writeFile(t, "url", "ftp://hooks.example.com"+secretPath), SecretEnv: "GW_TEST_HOOK_SECRET"}},
	} {
		_, err := webhook.New("hook", c.cfg, webhook.Options{})
		if err == nil {
			t.Errorf("%s: New accepted it", c.name)
			continue
		}
		if strings.Contains(err.Error(), "sEcReTtOkEn") || strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error %q carries a secret", c.name, err)
		}
	}
}

// TestRouterToWebhook sends through a Router: what an operator's `notify` does.
func TestRouterToWebhook(t *testing.T) {
	srv, got := endpoint(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) })
	r := newReceiver(t, srv.URL+secretPath)
	cfg := alerting.DefaultConfig()
	ob := alerting.NewMemoryOutbox()
	rt, err := alerting.NewRouter(cfg, alerting.RouterOptions{Outbox: ob, Receivers: map[string]alerting.Receiver{"hook": r}, Registerer: newRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rt.Run(context.Background()) }()
	as := alertingtest.Alerts(5, t0)
	for range 2 { // the second time delivers nothing new
		if err := rt.Put(context.Background(), as); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := rt.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	if err := rt.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, req := range got() {
		var p webhook.Payload
		if err := json.Unmarshal(req.body, &p); err != nil {
			t.Fatal(err)
		}
		n += len(p.Alerts)
	}
	if n != len(as) {
		t.Errorf("the endpoint got %d alerts, want %d", n, len(as))
	}
}

func newRegistry() *prometheus.Registry { return prometheus.NewPedanticRegistry() }

package alerting_test

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/internal/config"
)

func TestCheckResponse(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		status     int
		retryAfter string
		wantRetry  bool
		wantErr    bool
		wantAfter  time.Duration
	}{
		{200, "", false, false, 0},
		{299, "", false, false, 0},
		{302, "", false, true, 0},
		{400, "", false, true, 0},
		{403, "", false, true, 0},
		{408, "", true, true, 0},
		{429, "30", true, true, 30 * time.Second},
		{429, now.Add(90 * time.Second).Format(http.TimeFormat), true, true, 90 * time.Second},
		{429, now.Add(-time.Minute).Format(http.TimeFormat), true, true, 0},
		{429, "soon", true, true, 0},
		{429, "86400", true, true, time.Hour}, // capped
		{500, "", true, true, 0},
		{503, "5", true, true, 0}, // Retry-After is only read with 429
	} {
		resp := &http.Response{StatusCode: c.status, Header: http.Header{}}
		if c.retryAfter != "" {
			resp.Header.Set("Retry-After", c.retryAfter)
		}
		retry, err := alerting.CheckResponse(resp, now)
		if retry != c.wantRetry || (err != nil) != c.wantErr {
			t.Errorf("CheckResponse(%d, Retry-After %q) = %v, %v; want retry %v, error %v", c.status, c.retryAfter, retry, err, c.wantRetry, c.wantErr)
			continue
		}
		var ra *alerting.RetryAfterError
		if errors.As(err, &ra) != (c.status == 429) {
			t.Errorf("CheckResponse(%d): RetryAfterError = %v", c.status, ra)
		} else if ra != nil && ra.After != c.wantAfter {
			t.Errorf("CheckResponse(429, %q): After = %v, want %v", c.retryAfter, ra.After, c.wantAfter)
		}
	}
}

func TestRedactURL(t *testing.T) {
	secret := "https://hooks.example.com/services/T000/B000/XXXXSECRET"
	inner := errors.New("dial tcp 192.0.2.1:443: connect: connection refused")
	err := alerting.RedactURL(&url.Error{Op: "Post", URL: secret, Err: inner})
	if strings.Contains(err.Error(), "XXXXSECRET") {
		t.Errorf("RedactURL left the URL in %q", err)
	}
	if !errors.Is(err, inner) {
		t.Error("RedactURL lost the wrapped error")
	}
	plain := errors.New("something else")
	if alerting.RedactURL(plain) != plain {
		t.Error("RedactURL changed an error without a URL")
	}
}

func TestConfigValidateOutboxAndRepeat(t *testing.T) {
	if c := alerting.DefaultConfig(); c.Validate() != nil {
		t.Fatalf("DefaultConfig does not validate: %v", c.Validate())
	}
	for _, c := range []struct {
		name   string
		change func(*alerting.Config)
		key    string
	}{
		{"retention", func(c *alerting.Config) { c.Outbox.Retention = 0 }, "outbox.retention"},
		{"repeat", func(c *alerting.Config) { c.RepeatInterval = -time.Minute }, "repeat_interval"},
		{"resolve", func(c *alerting.Config) { c.ResolveTimeout = 0 }, "resolve_timeout"},
		{"route repeat", func(c *alerting.Config) {
			c.Receivers = []alerting.ReceiverConfig{{Name: "a", File: &alerting.FileConfig{Path: "a"}}}
			c.Routes = []alerting.Route{{Receivers: []string{"a"}, RepeatInterval: -time.Second}}
		}, "routes[0].repeat_interval"},
		{"burst", func(c *alerting.Config) {
			c.Receivers = []alerting.ReceiverConfig{{Name: "a", Burst: -1, File: &alerting.FileConfig{Path: "a"}}}
		}, "receivers[0].burst"},
	} {
		cfg := alerting.DefaultConfig()
		c.change(&cfg)
		err := cfg.Validate()
		var ce *config.Error
		if !errors.As(err, &ce) || ce.Key() != c.key {
			t.Errorf("%s: Validate = %v, want an error at %s", c.name, err, c.key)
		}
	}
}

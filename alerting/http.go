package alerting

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/gatewatch/gatewatch/internal/config"
)

// An HTTPStatusError is a response whose status was not 2xx. Its text holds the
// status only: never the URL, nor the response body, because an endpoint may echo
// the request path, and a webhook's path is its credential.
type HTTPStatusError struct {
	StatusCode int
}

func (e *HTTPStatusError) Error() string {
	return fmt.Sprintf("unexpected HTTP status %d %s", e.StatusCode, http.StatusText(e.StatusCode))
}

// CheckResponse says whether a receiver's HTTP request succeeded and, if not,
// whether trying again can help, the way Alertmanager's Retrier does: 2xx succeeds;
// 429 asks to wait (a *RetryAfterError with the Retry-After of the response, in
// seconds or as an HTTP date, relative to now); 408 and 5xx retry; anything else
// (other 4xx; 3xx, because receivers do not follow redirects) is final.
func CheckResponse(resp *http.Response, now time.Time) (retry bool, err error) {
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return false, nil
	case code == http.StatusTooManyRequests:
		return true, &RetryAfterError{After: retryAfter(resp.Header.Get("Retry-After"), now), Err: &HTTPStatusError{code}}
	case code == http.StatusRequestTimeout || code >= 500:
		return true, &HTTPStatusError{code}
	}
	return false, &HTTPStatusError{code}
}

// maxRetryAfter caps what a destination may ask for, so that a bogus header cannot
// stall a receiver for days; backoff and give_up_after take over beyond it.
const maxRetryAfter = time.Hour

// retryAfter reads a Retry-After header; 0 when it is missing or unreadable.
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	var d time.Duration
	if s, err := strconv.Atoi(h); err == nil {
		d = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(h); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// RedactURL returns err without the URL a *url.Error carries: the http client puts
// the request URL into its errors, and a webhook URL is a credential. The error
// keeps what it wraps, so errors.Is still finds a timeout.
func RedactURL(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	return &url.Error{Op: ue.Op, URL: "<redacted>", Err: ue.Err}
}

// ClientTLS returns the TLS settings of an HTTP receiver's client for u, by the one
// rule of config.TLS: an https:// URL has TLS, with the block's settings (the system
// roots unless ca_file); a block that turns TLS on for an http:// URL is an error
// rather than ignored. nil: plain HTTP.
func ClientTLS(t config.TLS, u *url.URL) (*tls.Config, error) {
	if u.Scheme == "http" && t.On() {
		return nil, config.Errorf("tls", "turns TLS on, but the url is http://; use https://")
	}
	tc, err := t.Client(u.Scheme == "https")
	return tc, config.Prefix("tls", err)
}

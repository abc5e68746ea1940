package alerting

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
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

// ClientConfig builds the TLS settings of a client connection from c: the CA file
// replaces the system roots, a certificate and key pair authenticates the client.
// It always returns a usable config; whether to use TLS at all is the caller's
// choice (Enabled for syslog and Kafka, the URL's scheme for HTTP).
func (c *TLSConfig) ClientConfig() (*tls.Config, error) {
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // the operator's explicit choice, off by default
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("alerting: tls: read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("alerting: tls: ca_file %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("alerting: tls: cert_file and key_file go together")
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("alerting: tls: load client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

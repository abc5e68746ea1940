// Package webhook is the alerting receiver that POSTs alerts as JSON to an HTTP
// endpoint, signed so the endpoint can tell gatewatch's requests from anyone else's.
//
// The request body is {"version":"1","alerts":[...]}, each alert in the Alert JSON
// contract of DESIGN.md. Headers:
//
//	Content-Type: application/json
//	X-Gatewatch-Signature: sha256=<hex HMAC-SHA-256 of the body, keyed with the secret>
//	X-Gatewatch-Timestamp: <Unix seconds when the request was signed>
//
// An endpoint verifies the signature over the raw body with a constant-time compare
// before it parses anything. A 2xx answer accepts the alerts; 429 asks gatewatch to
// wait (Retry-After is honoured); 408, 5xx, timeouts and connection errors are retried;
// any other status (other 4xx, 3xx: redirects are not followed) is final. An alert may
// arrive twice (see alerting.Receiver): an endpoint that must see each once keeps the
// (id, last_seen, labels.reminder) it has seen.
//
// The URL is a credential (whoever knows it can post), so it comes from a file or the
// environment and never appears in an error or a log.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// PayloadVersion is the version field of every body; a change of the body's shape
// that an endpoint must know about gets a new one.
const PayloadVersion = "1"

// Header names of a request.
const (
	SignatureHeader = "X-Gatewatch-Signature"
	TimestampHeader = "X-Gatewatch-Timestamp"
)

// Payload is the request body.
type Payload struct {
	Version string            `json:"version"`
	Alerts  []detectors.Alert `json:"alerts"`
}

// Options carries the receiver's runtime dependencies.
type Options struct {
	// Client sends the requests; nil: a client with the config's TLS settings that
	// follows no redirects. Timeouts come from each Notify's context.
	Client *http.Client
	// Now stamps X-Gatewatch-Timestamp and reads Retry-After dates; nil: time.Now.
	Now func() time.Time
}

// Receiver posts alerts to one webhook.
type Receiver struct {
	name   string
	url    string
	secret []byte
	client *http.Client
	now    func() time.Time
}

var _ alerting.Receiver = (*Receiver)(nil)

// New loads the URL and the secret (from their files or environment variables),
// checks them and builds the client. It sends nothing.
func New(name string, cfg alerting.WebhookConfig, o Options) (*Receiver, error) {
	if name == "" {
		return nil, errors.New("webhook: receiver needs a name")
	}
	rawURL, err := cfg.URL().Load(1)
	if err != nil {
		return nil, fmt.Errorf("webhook: receiver %s: %w", name, err)
	}
	raw := rawURL.Reveal()
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Not the parse error: it would quote the URL.
		return nil, fmt.Errorf("webhook: receiver %s: the url must be an absolute http or https URL", name)
	}
	secret, err := cfg.Secret().Load(alerting.MinWebhookSecretBytes)
	if err != nil {
		return nil, fmt.Errorf("webhook: receiver %s: %w", name, err)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Client == nil {
		tc, err := alerting.ClientTLS(cfg.TLS, u)
		if err != nil {
			return nil, fmt.Errorf("webhook: receiver %s: %w", name, err)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		o.Client = &http.Client{
			Transport: tr,
			// A redirect would take the signed alerts somewhere the operator did not
			// configure; it is a final error instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &Receiver{name: name, url: raw, secret: []byte(secret.Reveal()), client: o.Client, now: o.Now}, nil
}

// Name returns the receiver's name.
func (r *Receiver) Name() string { return r.name }

// Notify posts alerts in one request.
func (r *Receiver) Notify(ctx context.Context, alerts []detectors.Alert) (bool, error) {
	body, err := json.Marshal(Payload{Version: PayloadVersion, Alerts: alerts})
	if err != nil {
		return false, fmt.Errorf("webhook: %s: encode: %w", r.name, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("webhook: %s: build request: %w", r.name, alerting.RedactURL(err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "gatewatch")
	req.Header.Set(SignatureHeader, Sign(r.secret, body))
	req.Header.Set(TimestampHeader, strconv.FormatInt(r.now().Unix(), 10))
	resp, err := r.client.Do(req)
	if err != nil {
		// Connection refused, reset, TLS, the attempt's deadline: all transient
		// as far as we can tell.
		return true, fmt.Errorf("webhook: %s: post: %w", r.name, alerting.RedactURL(err))
	}
	defer resp.Body.Close()
	// Drain a little so the connection can be reused; the body itself is never
	// reported, since an endpoint may echo the request path.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	retry, err := alerting.CheckResponse(resp, r.now())
	if err != nil {
		return retry, fmt.Errorf("webhook: %s: post: %w", r.name, err)
	}
	return false, nil
}

// Sign returns the X-Gatewatch-Signature value of body: "sha256=" and the hex
// HMAC-SHA-256 of body keyed with secret. An endpoint computes the same over the body
// it received and compares with hmac.Equal.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

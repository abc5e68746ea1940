// Package splunkhec sends gatewatch alerts to Splunk through the HTTP Event Collector
// (HEC) JSON protocol: POST {url}/services/collector/event with
// "Authorization: Splunk <token>" and a body of concatenated event objects
//
//	{"time":1762071595.000,"host":"gw-1","source":"gatewatch","sourcetype":"gatewatch:alert","index":"security","event":{"schema_version":"1","id":...}}
//
// one per alert, up to batch_size to a request. The event is the alert's JSON (the
// DESIGN.md contract) with a schema_version in front, so searches and field extractions
// can tell payload versions apart; time is the alert's last_seen in epoch seconds with
// milliseconds, so Splunk files each version of an incident at the event time of its
// newest evidence, and a replayed alert lands where the original did.
//
// HEC answers {"text":"Success","code":0}. A 503 (code 9, server busy) or another 5xx
// retries; a 429 retries after its Retry-After; 400 (bad data, unknown index) and 401 or
// 403 (missing, disabled or invalid token) do not. The token never appears in errors or
// logs.
package splunkhec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// SchemaVersion is the version of the event payload, written as its schema_version.
// It changes when a field is renamed or removed, not when one is added.
const SchemaVersion = "1"

// Defaults of the SplunkHECConfig fields left empty.
const (
	DefaultSource     = "gatewatch"
	DefaultSourceType = "gatewatch:alert"
	DefaultBatchSize  = 100
)

// collectorPath is HEC's JSON event endpoint.
const collectorPath = "/services/collector/event"

// maxErrorBody bounds how much of an error answer is read for its text and code.
const maxErrorBody = 4 << 10

// Options carries what a Receiver needs besides its configuration.
type Options struct {
	// Logger gets state changes; nil discards.
	Logger *slog.Logger
	// HTTPClient sends the requests; nil: a client built from the TLS settings, which
	// follows no redirects (a redirected POST would lose its body and its token would
	// go to another host).
	HTTPClient *http.Client
	// Host is the events' host field; empty: this machine's host name.
	Host string
	// Now reads the clock for an HTTP-date Retry-After; nil: time.Now.
	Now func() time.Time
}

// Receiver posts alerts to a HEC endpoint; it is safe for concurrent use.
type Receiver struct {
	name      string
	endpoint  string // the full collector URL
	shownURL  string // endpoint without user info, for errors
	auth      string // "Splunk <token>": secret
	token     string // secret
	host      string
	source    string
	srcType   string
	index     string
	batchSize int
	http      *http.Client
	now       func() time.Time
	log       *slog.Logger
}

var _ alerting.Receiver = (*Receiver)(nil)

// New builds the receiver called name from cfg, reading its token. It starts nothing
// and sends nothing.
func New(name string, cfg alerting.SplunkHECConfig, o Options) (*Receiver, error) {
	if name == "" {
		return nil, errors.New("splunkhec: receiver needs a name")
	}
	u, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("splunkhec: receiver %s: url must be like https://splunk:8088", name)
	}
	if !strings.HasSuffix(u.Path, collectorPath) {
		u.Path += collectorPath
	}
	secret, err := cfg.Token().Load(1)
	if err != nil {
		return nil, fmt.Errorf("splunkhec: receiver %s: %w", name, err)
	}
	tok := secret.Reveal()
	r := &Receiver{
		name: name, endpoint: u.String(), shownURL: u.Redacted(), auth: "Splunk " + tok, token: tok,
		host: o.Host, source: cfg.Source, srcType: cfg.SourceType, index: cfg.Index,
		batchSize: cfg.BatchSize, http: o.HTTPClient, now: o.Now,
	}
	if r.source == "" {
		r.source = DefaultSource
	}
	if r.srcType == "" {
		r.srcType = DefaultSourceType
	}
	if r.batchSize <= 0 {
		r.batchSize = DefaultBatchSize
	}
	if r.host == "" {
		if r.host, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("splunkhec: receiver %s: host name: %w", name, err)
		}
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.http == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if tr.TLSClientConfig, err = alerting.ClientTLS(cfg.TLS, u); err != nil {
			return nil, fmt.Errorf("splunkhec: receiver %s: %w", name, err)
		}
		r.http = &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r.log = log.With("component", "alerting", "receiver", name)
	return r, nil
}

// Name returns the receiver's name from the configuration.
func (r *Receiver) Name() string { return r.name }

// MaxBatch tells the router to hand over at most batch_size alerts per Notify, so that
// each call is one POST and a failure never resends events Splunk already indexed.
func (r *Receiver) MaxBatch() int { return r.batchSize }

// Notify sends alerts in batches of batch_size events, in order, and stops at the
// first batch that fails; the batches before it are in Splunk, so a retry may index
// them again (at least once: an event's alert id and last_seen identify duplicates).
func (r *Receiver) Notify(ctx context.Context, alerts []detectors.Alert) (bool, error) {
	var body []byte
	for start := 0; start < len(alerts); start += r.batchSize {
		batch := alerts[start:min(start+r.batchSize, len(alerts))]
		body = body[:0]
		for i := range batch {
			var err error
			if body, err = r.AppendEvent(body, &batch[i]); err != nil {
				return false, fmt.Errorf("splunkhec: receiver %s: encode alert %s: %w", r.name, batch[i].ID, err)
			}
		}
		if retry, err := r.post(ctx, body); err != nil {
			return retry, fmt.Errorf("splunkhec: receiver %s: events %d-%d of %d: %w", r.name, start+1, start+len(batch), len(alerts), err)
		}
	}
	return false, nil
}

func (r *Receiver) post(ctx context.Context, body []byte) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.endpoint, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", r.auth)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = &url.Error{Op: ue.Op, URL: r.shownURL, Err: ue.Err}
		}
		return true, err // unreachable, timed out, cancelled: worth another try
	}
	defer resp.Body.Close()
	retry, err := alerting.CheckResponse(resp, r.now())
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body) // lets the connection be reused
		return false, nil
	}
	// HEC explains the failure in {"text":...,"code":N}; the text is Splunk's own
	// message, never our request, but guard against a proxy echoing the token.
	var hr struct {
		Text        string `json:"text"`
		Code        *int   `json:"code"`
		InvalidItem *int   `json:"invalid-event-number"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if json.Unmarshal(b, &hr) == nil && hr.Code != nil && !strings.Contains(hr.Text, r.token) {
		detail := fmt.Sprintf("%s (HEC code %d", hr.Text, *hr.Code)
		if hr.InvalidItem != nil {
			detail += ", event " + strconv.Itoa(*hr.InvalidItem+1) + " of the batch"
		}
		err = fmt.Errorf("%w: %s)", err, detail)
	}
	return retry, err
}

// AppendEvent appends a's HEC event object to dst: time (last_seen, epoch seconds
// with milliseconds), host, source, sourcetype, index when set, and the alert as event
// with its schema_version.
func (r *Receiver) AppendEvent(dst []byte, a *detectors.Alert) ([]byte, error) {
	alert, err := a.MarshalJSON()
	if err != nil {
		return dst, err
	}
	dst = append(dst, `{"time":`...)
	ms := max(a.LastSeen.UnixMilli(), 0)
	dst = strconv.AppendInt(dst, ms/1000, 10)
	dst = append(dst, '.', byte('0'+ms%1000/100), byte('0'+ms%100/10), byte('0'+ms%10))
	dst = appendField(dst, "host", r.host)
	dst = appendField(dst, "source", r.source)
	dst = appendField(dst, "sourcetype", r.srcType)
	if r.index != "" {
		dst = appendField(dst, "index", r.index)
	}
	dst = append(dst, `,"event":{"schema_version":"`+SchemaVersion+`",`...)
	dst = append(dst, alert[1:]...) // the alert object without its opening brace
	dst = append(dst, '}')          // HEC's batch format is events back to back, no separator

	return dst, nil
}

// appendField appends ,"name":"value" with value JSON-escaped.
func appendField(dst []byte, name, value string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	v, _ := json.Marshal(value) // a string always encodes
	return append(dst, v...)
}

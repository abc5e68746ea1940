// Package hectest runs an HTTP server on loopback that speaks Splunk's HTTP Event
// Collector protocol, for testing what gatewatch sends to Splunk without a Splunk.
//
// It answers the way HEC documents (docs.splunk.com, "Format events for HTTP Event
// Collector" and "Troubleshoot HTTP Event Collector"): POST /services/collector/event
// with "Authorization: Splunk <token>"; a body of concatenated JSON event objects, each
// with a non-blank "event" and optional time, host, source, sourcetype, index and
// fields; {"text":"Success","code":0} on success; status 401 code 2 or 3 without a
// usable Authorization header, 403 code 4 for a wrong token, 400 code 5 for an empty
// body, 6 for invalid JSON (with "invalid-event-number"), 7 for an index the token may
// not write to, 12 and 13 for a missing or blank event. A batch is indexed whole or not
// at all. The next answers can be replaced with faults (503 code 9 "Server is busy",
// 429 with Retry-After, ...). Every request and every indexed event is recorded.
package hectest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
)

// DefaultToken is the token a Server accepts unless Options says otherwise.
const DefaultToken = "8c4e2a1b-5d6f-4a3b-9c8d-7e6f5a4b3c2d"

// Options configures a Server. The zero value accepts DefaultToken, any index, over
// plain HTTP.
type Options struct {
	Token   string   // the HEC token it accepts
	Indexes []string // the indexes the token may write to; empty: any
	TLS     bool     // serve HTTPS with a self-signed certificate (Server.CertPEM)
}

// An Event is one event the server indexed.
type Event struct {
	Time       json.Number       `json:"time"`
	Host       string            `json:"host"`
	Source     string            `json:"source"`
	SourceType string            `json:"sourcetype"`
	Index      string            `json:"index"`
	Event      json.RawMessage   `json:"event"`
	Fields     map[string]string `json:"fields"`
}

// A Request is one request the server received.
type Request struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte // as sent (still gzipped if it was)
}

// A Fault replaces the server's answer to one request. The zero Fault lets the request
// through, so FailNext(Fault{}, f) fails the second request.
type Fault struct {
	Status     int    // HTTP status
	Code       int    // HEC code in the JSON body
	Text       string // HEC text in the JSON body
	RetryAfter string // Retry-After header, when not empty
}

// Response is HEC's JSON answer.
type Response struct {
	Text               string `json:"text"`
	Code               int    `json:"code"`
	InvalidEventNumber *int   `json:"invalid-event-number,omitempty"`
}

// A Server is a running HEC endpoint; t.Cleanup closes it.
type Server struct {
	URL     string // base URL, as splunk_hec.url takes it: https://host:port
	CertPEM []byte // the server certificate with TLS, PEM encoded, to trust as a CA

	token   string
	indexes []string
	srv     *httptest.Server

	mu       sync.Mutex
	requests []Request
	events   []Event
	faults   []Fault
}

// New starts a server on 127.0.0.1; t.Cleanup closes it.
func New(t testing.TB, o Options) *Server {
	t.Helper()
	s := &Server{token: o.Token, indexes: o.Indexes}
	if s.token == "" {
		s.token = DefaultToken
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/services/collector/event", s.collect)
	mux.HandleFunc("/services/collector/event/1.0", s.collect)
	mux.HandleFunc("/services/collector", s.collect)
	s.srv = httptest.NewUnstartedServer(mux)
	// A client that rejects the certificate is a case under test, not news for the log.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if o.TLS {
		s.srv.StartTLS()
		s.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
	} else {
		s.srv.Start()
	}
	t.Cleanup(s.srv.Close)
	s.URL = s.srv.URL
	return s
}

// FailNext makes the next len(faults) requests get faults, in order.
func (s *Server) FailNext(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, faults...)
}

// Requests returns every request received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Events returns every event indexed so far, in order.
func (s *Server) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

func (s *Server) collect(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
	var f *Fault
	if len(s.faults) > 0 {
		if s.faults[0] != (Fault{}) {
			f = &s.faults[0]
		}
		s.faults = s.faults[1:]
	}
	s.mu.Unlock()
	switch {
	case f != nil:
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		reply(w, f.Status, Response{Text: f.Text, Code: f.Code})
		return
	case err != nil:
		reply(w, http.StatusBadRequest, Response{Text: "No data", Code: 5})
		return
	case r.Method != http.MethodPost:
		reply(w, http.StatusMethodNotAllowed, Response{Text: "Method not allowed", Code: 8})
		return
	}
	auth := r.Header.Get("Authorization")
	switch tok, ok := strings.CutPrefix(auth, "Splunk "); {
	case auth == "":
		reply(w, http.StatusUnauthorized, Response{Text: "Token is required", Code: 2})
		return
	case !ok:
		reply(w, http.StatusUnauthorized, Response{Text: "Invalid authorization", Code: 3})
		return
	case tok != s.token:
		reply(w, http.StatusForbidden, Response{Text: "Invalid token", Code: 4})
		return
	}
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err == nil {
			body, err = io.ReadAll(zr)
		}
		if err != nil {
			reply(w, http.StatusBadRequest, Response{Text: "Invalid data format", Code: 6})
			return
		}
	}
	events, status, resp := s.parse(body)
	if status != http.StatusOK {
		reply(w, status, resp)
		return
	}
	s.mu.Lock()
	s.events = append(s.events, events...)
	s.mu.Unlock()
	reply(w, http.StatusOK, Response{Text: "Success", Code: 0})
}

// parse decodes the concatenated event objects of a batch, checking each as HEC does.
func (s *Server) parse(body []byte) ([]Event, int, Response) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, http.StatusBadRequest, Response{Text: "No data", Code: 5}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var events []Event
	for i := 0; ; i++ {
		n := i
		var obj json.RawMessage
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return events, http.StatusOK, Response{}
		}
		var raw map[string]json.RawMessage
		if err == nil {
			err = json.Unmarshal(obj, &raw)
		}
		if err != nil || raw == nil {
			return nil, http.StatusBadRequest, Response{Text: "Invalid data format", Code: 6, InvalidEventNumber: &n}
		}
		ev, ok := raw["event"]
		if !ok {
			return nil, http.StatusBadRequest, Response{Text: "Event field is required", Code: 12, InvalidEventNumber: &n}
		}
		if t := string(bytes.TrimSpace(ev)); t == `""` || t == "null" {
			return nil, http.StatusBadRequest, Response{Text: "Event field cannot be blank", Code: 13, InvalidEventNumber: &n}
		}
		var e Event
		d := json.NewDecoder(bytes.NewReader(obj))
		d.UseNumber()
		if err := d.Decode(&e); err != nil {
			return nil, http.StatusBadRequest, Response{Text: "Invalid data format", Code: 6, InvalidEventNumber: &n}
		}
		if len(s.indexes) > 0 && e.Index != "" && !slices.Contains(s.indexes, e.Index) {
			return nil, http.StatusBadRequest, Response{Text: "Incorrect index", Code: 7, InvalidEventNumber: &n}
		}
		events = append(events, e)
	}
}

func reply(w http.ResponseWriter, status int, r Response) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(r)
}

// Package slacktest runs an HTTP server on loopback that answers like Slack's Web API
// (auth.test, chat.postMessage, chat.update, conversations.history,
// conversations.list) and an incoming webhook, so that the Slack
// receiver is tested against Slack's wire protocol through the real client library
// (github.com/slack-go/slack pointed at Server.URL) instead of a fake of our own code.
//
// Like Slack, the server authenticates the bot token, resolves channel names to ids,
// keeps the messages it was sent (so a test sees threads and edits) with their message
// metadata, pages the channel history newest first as Slack does, checks the Block Kit
// limits that make Slack reject a message (invalid_blocks), answers errors with
// {"ok":false,"error":...}, and can be told to fail the next calls of a method with an
// error code, an HTTP status or a 429 with Retry-After. It records every request, body
// included, for assertions.
package slacktest

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// DefaultToken is the bot token a Server accepts unless Options says otherwise.
const DefaultToken = "xoxb-1111111111-2222222222-slacktestslacktestslacktest"

// WebhookMethod is the Method of a recorded incoming-webhook request and the name to
// pass to FailNext for webhook faults.
const WebhookMethod = "webhook"

// Options configures a Server. The zero value accepts DefaultToken and knows one
// channel, #soc-alerts, with id C0SOCALERTS.
type Options struct {
	Token    string            // bot token the Web API accepts
	Channels map[string]string // channel name (without #) → channel id
	// Now is the clock message timestamps are taken from, as Slack's ts is its time of
	// posting; nil: time.Now. Tests with golden timestamps pass a fixed clock: each
	// message then gets the next microsecond.
	Now func() time.Time
}

// A Request is one request the server received.
type Request struct {
	Method string      // Web API method ("chat.postMessage") or WebhookMethod
	Header http.Header // as received
	Form   url.Values  // the parameters, from a form-encoded or a JSON body
	Body   []byte      // the raw body
}

// A Fault is how the server answers one call instead of handling it. The zero Fault
// lets the call through, so FailNext(m, Fault{}, f) fails the second call of m.
type Fault struct {
	// Status is the HTTP status; 0 answers 200 with {"ok":false,"error":Error} (a Web
	// API error) or, for a webhook, 400 with Error as the body.
	Status int
	// Error is the Slack error code (ratelimited, channel_not_found, ...) or, with a
	// Status, the body.
	Error string
	// RetryAfter, when positive, is sent as the Retry-After header in seconds.
	RetryAfter int
}

// A Message is what a channel holds: a top-level message or a reply in a thread.
type Message struct {
	Channel  string          // channel id
	TS       string          // message timestamp, its id within the channel
	ThreadTS string          // parent's TS for a reply; empty for a top-level message
	Text     string          // the notification text
	Blocks   json.RawMessage // the Block Kit blocks as posted, nil when none
	Edits    int             // how many times chat.update changed it
	// Metadata is the message metadata ({"event_type":...,"event_payload":{...}}) as
	// posted or last updated; nil when none.
	Metadata  json.RawMessage
	Broadcast bool      // a reply also shown in the channel (reply_broadcast)
	Posted    time.Time // when the server took it, for latency measurements
}

// A Server is a running Slack-compatible server; t.Cleanup closes it.
type Server struct {
	// URL is the Web API base, ending in "/api/": slack.OptionAPIURL or api_url.
	URL string
	// WebhookURL is an incoming webhook that posts to the first channel (by name).
	WebhookURL string

	srv      *httptest.Server
	now      func() time.Time
	token    string
	channels map[string]string // name → id
	ids      map[string]bool

	mu       sync.Mutex
	requests []Request
	faults   map[string][]Fault
	messages []*Message
	seq      int
	lastTS   int64 // microseconds of the newest message's ts: each ts is unique
}

// New starts a server on 127.0.0.1; t.Cleanup closes it.
func New(t testing.TB, o Options) *Server {
	t.Helper()
	s := &Server{token: o.Token, channels: o.Channels, now: o.Now, faults: map[string][]Fault{}, ids: map[string]bool{}}
	if s.now == nil {
		s.now = time.Now
	}
	if s.token == "" {
		s.token = DefaultToken
	}
	if len(s.channels) == 0 {
		s.channels = map[string]string{"soc-alerts": "C0SOCALERTS"}
	}
	for _, id := range s.channels {
		s.ids[id] = true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/{method}", s.api)
	mux.HandleFunc("/services/T0SLACKTEST/B0SLACKTEST/{secret}", s.webhook)
	mux.HandleFunc("POST /actions/{channel}/{ts}", s.respond)
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.srv.Close)
	s.URL = s.srv.URL + "/api/"
	s.WebhookURL = s.srv.URL + "/services/T0SLACKTEST/B0SLACKTEST/whsecretwhsecretwhsecret"
	return s
}

// FailNext makes the next len(faults) calls of method (a Web API method such as
// "chat.postMessage", or WebhookMethod) answer with faults, in order.
func (s *Server) FailNext(method string, faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[method] = append(s.faults[method], faults...)
}

// Requests returns every request received so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Calls returns the requests of one method, in order.
func (s *Server) Calls(method string) []Request {
	var out []Request
	for _, r := range s.Requests() {
		if r.Method == method {
			out = append(out, r)
		}
	}
	return out
}

// Messages returns a copy of every message the channels hold, in the order they were
// posted.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.messages))
	for i, m := range s.messages {
		out[i] = *m
	}
	return out
}

// response is the envelope of every Web API answer.
type response map[string]any

func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	method := r.PathValue("method")
	req, err := s.record(method, r)
	if err != nil {
		writeJSON(w, http.StatusOK, response{"ok": false, "error": "invalid_form_data"})
		return
	}
	if s.fault(w, method, true) {
		return
	}
	if errCode := s.authenticate(req); errCode != "" {
		writeJSON(w, http.StatusOK, response{"ok": false, "error": errCode})
		return
	}
	var resp response
	switch method {
	case "auth.test":
		resp = response{"ok": true, "url": "https://slacktest.slack.com/", "team": "slacktest",
			"user": "gatewatch", "team_id": "T0SLACKTEST", "user_id": "U0GATEWATCH", "bot_id": "B0GATEWATCH"}
	case "chat.postMessage":
		resp = s.postMessage(req.Form)
	case "chat.update":
		resp = s.update(req.Form)
	case "conversations.history":
		resp = s.history(req.Form)
	case "conversations.list":
		resp = s.list(req.Form)
	default:
		resp = response{"ok": false, "error": "unknown_method"}
	}
	writeJSON(w, http.StatusOK, resp)
}

// record reads the body and the parameters (form or JSON) and keeps the request.
func (s *Server) record(method string, r *http.Request) (Request, error) {
	body, err := io.ReadAll(r.Body)
	req := Request{Method: method, Header: r.Header.Clone(), Body: body, Form: url.Values{}}
	if err == nil {
		req.Form, err = params(r.Header.Get("Content-Type"), body, r.URL.Query())
	}
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	return req, err
}

// params decodes a form-encoded or JSON body the way Slack accepts both; query
// parameters count too. JSON values that are not strings keep their JSON text.
func params(contentType string, body []byte, query url.Values) (url.Values, error) {
	v := url.Values{}
	maps.Copy(v, query)
	mt, _, _ := mime.ParseMediaType(contentType)
	switch mt {
	case "application/json":
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			return v, err
		}
		for k, raw := range m {
			var str string
			if json.Unmarshal(raw, &str) == nil {
				v.Set(k, str)
			} else {
				v.Set(k, string(raw))
			}
		}
	default:
		f, err := url.ParseQuery(string(body))
		if err != nil {
			return v, err
		}
		for k, vs := range f {
			v[k] = vs
		}
	}
	return v, nil
}

// fault answers with the next queued fault of method, if any.
func (s *Server) fault(w http.ResponseWriter, method string, api bool) bool {
	s.mu.Lock()
	q := s.faults[method]
	if len(q) == 0 {
		s.mu.Unlock()
		return false
	}
	f := q[0]
	s.faults[method] = q[1:]
	s.mu.Unlock()
	if f == (Fault{}) {
		return false
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
	}
	switch {
	case f.Status != 0 && f.Status != http.StatusOK:
		// Slack answers 5xx with an HTML page and 429 with an empty body.
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(f.Status)
		_, _ = io.WriteString(w, f.Error)
	case api:
		writeJSON(w, http.StatusOK, response{"ok": false, "error": f.Error})
	default:
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, f.Error)
	}
	return true
}

// authenticate checks the bot token, from the form or an Authorization header.
func (s *Server) authenticate(req Request) string {
	tok := req.Form.Get("token")
	if h := req.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		tok = strings.TrimPrefix(h, "Bearer ")
	}
	switch tok {
	case "":
		return "not_authed"
	case s.token:
		return ""
	}
	return "invalid_auth"
}

// channel resolves "#name", "name" or an id to the channel id.
func (s *Server) channel(c string) (string, bool) {
	if s.ids[c] {
		return c, true
	}
	id, ok := s.channels[strings.TrimPrefix(c, "#")]
	return id, ok
}

func (s *Server) postMessage(f url.Values) response {
	ch, ok := s.channel(f.Get("channel"))
	if !ok {
		return response{"ok": false, "error": "channel_not_found"}
	}
	blocks, errCode := checkMessage(f)
	if errCode != "" {
		return response{"ok": false, "error": errCode}
	}
	meta, errCode := checkMetadata(f)
	if errCode != "" {
		return response{"ok": false, "error": errCode}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	threadTS := f.Get("thread_ts")
	if threadTS != "" {
		if parent := s.find(ch, threadTS); parent == nil || parent.ThreadTS != "" {
			return response{"ok": false, "error": "thread_not_found"}
		}
	}
	m := s.add(ch, threadTS, f.Get("text"), blocks)
	m.Metadata = meta
	m.Broadcast = threadTS != "" && isTrue(f.Get("reply_broadcast"))
	return response{"ok": true, "channel": ch, "ts": m.TS, "message": messageJSON(m, true)}
}

func (s *Server) update(f url.Values) response {
	ch, ok := s.channel(f.Get("channel"))
	if !ok {
		return response{"ok": false, "error": "channel_not_found"}
	}
	blocks, errCode := checkMessage(f)
	if errCode != "" {
		return response{"ok": false, "error": errCode}
	}
	meta, errCode := checkMetadata(f)
	if errCode != "" {
		return response{"ok": false, "error": errCode}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.find(ch, f.Get("ts"))
	if m == nil {
		return response{"ok": false, "error": "message_not_found"}
	}
	m.Text, m.Blocks = f.Get("text"), blocks
	if meta != nil { // an update without metadata keeps the message's
		m.Metadata = meta
	}
	m.Edits++
	return response{"ok": true, "channel": ch, "ts": m.TS, "text": m.Text}
}

func (s *Server) webhook(w http.ResponseWriter, r *http.Request) {
	req, err := s.record(WebhookMethod, r)
	if s.fault(w, WebhookMethod, false) {
		return
	}
	if err != nil || req.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "invalid_payload", http.StatusBadRequest)
		return
	}
	blocks, errCode := checkMessage(req.Form)
	if errCode != "" {
		http.Error(w, errCode, http.StatusBadRequest)
		return
	}
	names := slices.Sorted(maps.Keys(s.channels))
	s.mu.Lock()
	s.add(s.channels[names[0]], "", req.Form.Get("text"), blocks)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/html")
	_, _ = io.WriteString(w, "ok")
}

// find returns the message ts of channel ch; s.mu is held.
func (s *Server) find(ch, ts string) *Message {
	for _, m := range s.messages {
		if m.Channel == ch && m.TS == ts {
			return m
		}
	}
	return nil
}

// add stores a new message with the next timestamp: the server's clock in
// microseconds, or one more than the newest message's when the clock has not moved
// past it (Slack's ts is unique within a channel); s.mu is held.
func (s *Server) add(ch, threadTS, text string, blocks json.RawMessage) *Message {
	s.seq++
	s.lastTS = max(s.now().UnixMicro(), s.lastTS+1)
	ts := fmt.Sprintf("%d.%06d", s.lastTS/1e6, s.lastTS%1e6)
	m := &Message{Channel: ch, TS: ts, ThreadTS: threadTS, Text: text, Blocks: blocks, Posted: time.Now()}
	s.messages = append(s.messages, m)
	return m
}

// Block Kit limits past which Slack rejects a message with invalid_blocks
// (docs.slack.dev, "Block Kit" reference for each block type).
const (
	maxBlocks        = 50
	maxHeaderText    = 150
	maxSectionText   = 3000
	maxSectionFields = 10
	maxFieldText     = 2000
	maxContextElems  = 10
	maxButtonText    = 75
	maxButtonURL     = 3000
	maxActionElems   = 25
	maxMessageText   = 40000
)

type textObject struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type block struct {
	Type      string         `json:"type"`
	Text      *textObject    `json:"text"`
	Fields    []textObject   `json:"fields"`
	Elements  []blockElement `json:"elements"`
	Accessory *accessory     `json:"accessory"`
}

// accessory is a section's element; gatewatch uses overflow menus.
type accessory struct {
	Type    string `json:"type"`
	Options []struct {
		Text  textObject `json:"text"`
		Value string     `json:"value"`
	} `json:"options"`
}

// Limits of an overflow menu.
const (
	minOverflowOptions = 1
	maxOverflowOptions = 5
	maxOptionValue     = 150
	maxOptionText      = 75
)

func (a *accessory) valid() bool {
	switch a.Type {
	case "button", "image":
		return true
	case "overflow":
		if len(a.Options) < minOverflowOptions || len(a.Options) > maxOverflowOptions {
			return false
		}
		for _, o := range a.Options {
			if o.Value == "" || len(o.Value) > maxOptionValue || o.Text.Text == "" || utf8.RuneCountInString(o.Text.Text) > maxOptionText {
				return false
			}
		}
		return true
	}
	return false
}

type blockElement struct {
	Type string          `json:"type"`
	Text json.RawMessage `json:"text"` // an object for buttons, a string for context text
	URL  string          `json:"url"`
}

// checkMessage returns the blocks of a message, or the error code Slack would answer.
func checkMessage(f url.Values) (json.RawMessage, string) {
	text, rawBlocks := f.Get("text"), f.Get("blocks")
	if text == "" && rawBlocks == "" {
		return nil, "no_text"
	}
	if utf8.RuneCountInString(text) > maxMessageText {
		return nil, "msg_too_long"
	}
	if rawBlocks == "" {
		return nil, ""
	}
	var blocks []block
	if err := json.Unmarshal([]byte(rawBlocks), &blocks); err != nil || len(blocks) == 0 || len(blocks) > maxBlocks {
		return nil, "invalid_blocks"
	}
	for _, b := range blocks {
		if !validBlock(b) {
			return nil, "invalid_blocks"
		}
	}
	return json.RawMessage(rawBlocks), ""
}

func validBlock(b block) bool {
	runes := utf8.RuneCountInString
	switch b.Type {
	case "header":
		return b.Text != nil && b.Text.Type == "plain_text" && b.Text.Text != "" && runes(b.Text.Text) <= maxHeaderText
	case "section":
		if b.Text == nil && len(b.Fields) == 0 {
			return false
		}
		if b.Text != nil && (b.Text.Text == "" || runes(b.Text.Text) > maxSectionText) {
			return false
		}
		if len(b.Fields) > maxSectionFields {
			return false
		}
		for _, f := range b.Fields {
			if f.Text == "" || runes(f.Text) > maxFieldText {
				return false
			}
		}
		return b.Accessory == nil || b.Accessory.valid()
	case "context":
		return len(b.Elements) > 0 && len(b.Elements) <= maxContextElems
	case "actions":
		if len(b.Elements) == 0 || len(b.Elements) > maxActionElems {
			return false
		}
		for _, e := range b.Elements {
			var t textObject
			if e.Type != "button" || json.Unmarshal(e.Text, &t) != nil || t.Text == "" ||
				runes(t.Text) > maxButtonText || len(e.URL) > maxButtonURL {
				return false
			}
		}
		return true
	case "divider":
		return true
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

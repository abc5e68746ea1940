package slacktest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ResponseMethod is the Method of a recorded request to an interaction's response_url.
const ResponseMethod = "response_url"

// ResponseURL returns the response_url Slack gives the interactions of message m: a
// POST of {"replace_original":true,"text":...,"blocks":[...]} to it rewrites m.
func (s *Server) ResponseURL(m Message) string {
	return s.srv.URL + "/actions/" + url.PathEscape(m.Channel) + "/" + url.PathEscape(m.TS)
}

// respond handles a POST to a response_url: replace_original rewrites the message.
func (s *Server) respond(w http.ResponseWriter, r *http.Request) {
	req, err := s.record(ResponseMethod, r)
	if err != nil {
		http.Error(w, "invalid_payload", http.StatusBadRequest)
		return
	}
	if s.fault(w, ResponseMethod, false) {
		return
	}
	var body struct {
		ReplaceOriginal bool            `json:"replace_original"`
		Text            string          `json:"text"`
		Blocks          json.RawMessage `json:"blocks"`
	}
	if err := json.Unmarshal(req.Body, &body); err != nil || !body.ReplaceOriginal {
		http.Error(w, "invalid_payload", http.StatusBadRequest)
		return
	}
	f := url.Values{"text": {body.Text}}
	if len(body.Blocks) > 0 {
		f.Set("blocks", string(body.Blocks))
	}
	blocks, code := checkMessage(f)
	if code != "" {
		http.Error(w, code, http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	m := s.find(r.PathValue("channel"), r.PathValue("ts"))
	if m != nil {
		m.Text, m.Blocks = body.Text, blocks
		m.Edits++
	}
	s.mu.Unlock()
	if m == nil {
		http.Error(w, "message_not_found", http.StatusNotFound)
		return
	}
	writeJSON(w, http.StatusOK, response{"ok": true})
}

// A User is who clicks in an Interaction.
type User struct {
	ID   string // U0123ABCD
	Name string
}

// An Action is what a user clicked: a button (ActionID, Value) or an option of an
// overflow menu (ActionID, Selected).
type Action struct {
	ActionID string
	BlockID  string
	Value    string // a button's value
	Selected string // the value of the overflow option chosen
}

// An Interaction is the request Slack sends to an app's Request URL when a user acts
// on a message: a form with one field, payload, the block_actions JSON.
type Interaction struct {
	Body []byte // form-encoded: payload=...
}

// NewInteraction builds the block_actions request of user clicking a on message m,
// as Slack would send it: the message with its blocks, the channel, the user, the
// action with its action_ts, and the message's response_url.
func (s *Server) NewInteraction(m Message, user User, a Action) Interaction {
	s.mu.Lock()
	s.seq++
	ts := fmt.Sprintf("1700001000.%06d", s.seq)
	s.mu.Unlock()
	act := map[string]any{"action_id": a.ActionID, "block_id": a.BlockID, "action_ts": ts}
	if a.Selected != "" {
		act["type"] = "overflow"
		act["selected_option"] = map[string]any{"value": a.Selected, "text": map[string]any{"type": "plain_text", "text": a.Selected}}
	} else {
		act["type"] = "button"
		act["value"] = a.Value
	}
	msg := map[string]any{"type": "message", "ts": m.TS, "text": m.Text, "bot_id": "B0GATEWATCH"}
	if m.Blocks != nil {
		msg["blocks"] = m.Blocks
	}
	payload := map[string]any{
		"type":         "block_actions",
		"api_app_id":   "A0GATEWATCH",
		"team":         map[string]any{"id": "T0SLACKTEST", "domain": "slacktest"},
		"user":         map[string]any{"id": user.ID, "username": user.Name, "name": user.Name, "team_id": "T0SLACKTEST"},
		"container":    map[string]any{"type": "message", "message_ts": m.TS, "channel_id": m.Channel, "is_ephemeral": false},
		"channel":      map[string]any{"id": m.Channel, "name": "soc-alerts"},
		"message":      msg,
		"trigger_id":   "1111." + ts,
		"response_url": s.ResponseURL(m),
		"actions":      []any{act},
	}
	b, _ := json.Marshal(payload) // maps of strings and raw JSON always encode
	return Interaction{Body: []byte(url.Values{"payload": {string(b)}}.Encode())}
}

// Send posts the interaction to endpoint signed with secret at ts, as Slack does
// (X-Slack-Request-Timestamp and X-Slack-Signature v0).
func (in Interaction) Send(endpoint, secret string, ts time.Time) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(in.Body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range Sign(secret, ts, in.Body) {
		req.Header[k] = v
	}
	return http.DefaultClient.Do(req)
}

// Sign returns the headers with which Slack signs body at ts with an app's signing
// secret: v0=hex(HMAC-SHA256(secret, "v0:" + ts + ":" + body)).
func Sign(secret string, ts time.Time, body []byte) http.Header {
	sec := strconv.FormatInt(ts.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("v0:" + sec + ":"))
	mac.Write(body)
	h := http.Header{}
	h.Set("X-Slack-Request-Timestamp", sec)
	h.Set("X-Slack-Signature", "v0="+hex.EncodeToString(mac.Sum(nil)))
	return h
}

package slacktest

import (
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Paging limits of conversations.history and conversations.list (docs.slack.dev,
// "Pagination": limit defaults to 100 and must stay under 1000).
const (
	defaultPageLimit = 100
	maxPageLimit     = 999
)

// history answers conversations.history as Slack does: the channel's messages (the
// top-level ones and the replies broadcast to it, never the other replies) between
// oldest and latest (exclusive unless inclusive), newest first, at most limit of them;
// has_more and response_metadata.next_cursor say where the next page starts. Message
// metadata is only in the answer with include_all_metadata. The channel must be an id:
// Slack does not resolve names for this method.
func (s *Server) history(f url.Values) response {
	ch := f.Get("channel")
	if !s.ids[ch] {
		return response{"ok": false, "error": "channel_not_found"}
	}
	oldest, ok := parseTS(f.Get("oldest"), 0)
	if !ok {
		return response{"ok": false, "error": "invalid_ts_oldest"}
	}
	s.mu.Lock()
	now := max(s.now().UnixMicro(), s.lastTS+1) // a frozen test clock is never behind its messages
	s.mu.Unlock()
	latest, ok := parseTS(f.Get("latest"), now)
	if !ok {
		return response{"ok": false, "error": "invalid_ts_latest"}
	}
	limit, ok := pageLimit(f.Get("limit"))
	if !ok {
		return response{"ok": false, "error": "invalid_limit"}
	}
	inclusive, withMeta := isTrue(f.Get("inclusive")), isTrue(f.Get("include_all_metadata"))
	// The first page starts at latest, a cursor's at the message it names.
	start, startIncluded := latest, inclusive
	if c := f.Get("cursor"); c != "" {
		if start, ok = parseCursor(c, "next_ts:"); !ok {
			return response{"ok": false, "error": "invalid_cursor"}
		}
		startIncluded = true
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	replies := map[string][]*Message{} // parent ts → replies, for reply_count
	var in []*Message
	for _, m := range s.messages {
		if m.Channel != ch {
			continue
		}
		if m.ThreadTS != "" {
			replies[m.ThreadTS] = append(replies[m.ThreadTS], m)
			if !m.Broadcast {
				continue
			}
		}
		ts, _ := parseTS(m.TS, 0)
		if ts < oldest || ts > start || (!inclusive && ts == oldest) || (!startIncluded && ts == start) {
			continue
		}
		in = append(in, m)
	}
	slices.Reverse(in) // s.messages is in posting order, which is ts order
	page, more := in[:min(limit, len(in))], len(in) > limit
	msgs := make([]response, 0, len(page))
	for _, m := range page {
		msg := messageJSON(m, withMeta)
		if rs := replies[m.TS]; len(rs) > 0 && m.ThreadTS == "" {
			msg["thread_ts"], msg["reply_count"], msg["latest_reply"] = m.TS, len(rs), rs[len(rs)-1].TS
		}
		msgs = append(msgs, msg)
	}
	resp := response{"ok": true, "messages": msgs, "has_more": more, "pin_count": 0}
	if more {
		next, _ := parseTS(in[limit].TS, 0)
		resp["response_metadata"] = response{"next_cursor": cursor("next_ts:", strconv.FormatInt(next, 10))}
	}
	return resp
}

// list answers conversations.list: the channels the server knows, by id, limit at a
// time, with a next_cursor while more remain.
func (s *Server) list(f url.Values) response {
	limit, ok := pageLimit(f.Get("limit"))
	if !ok {
		return response{"ok": false, "error": "invalid_limit"}
	}
	byID := map[string]string{}
	for name, id := range s.channels {
		byID[id] = name
	}
	ids := slices.Sorted(maps.Keys(byID))
	from := 0
	if c := f.Get("cursor"); c != "" {
		id, ok := decodeCursor(c, "channel:")
		if from = slices.Index(ids, id); !ok || from < 0 {
			return response{"ok": false, "error": "invalid_cursor"}
		}
	}
	end := min(from+limit, len(ids))
	chans := make([]response, 0, end-from)
	for _, id := range ids[from:end] {
		chans = append(chans, response{"id": id, "name": byID[id], "is_channel": true, "is_member": true, "is_archived": false})
	}
	next := ""
	if end < len(ids) {
		next = cursor("channel:", ids[end])
	}
	return response{"ok": true, "channels": chans, "response_metadata": response{"next_cursor": next}}
}

// messageJSON is m as the Web API shows a message; its metadata only when withMeta.
func messageJSON(m *Message, withMeta bool) response {
	msg := response{"type": "message", "text": m.Text, "ts": m.TS, "bot_id": "B0GATEWATCH", "user": "U0GATEWATCH"}
	if m.Blocks != nil {
		msg["blocks"] = m.Blocks
	}
	if m.ThreadTS != "" {
		msg["thread_ts"] = m.ThreadTS
	}
	if m.Broadcast {
		msg["subtype"] = "thread_broadcast"
	}
	if withMeta && m.Metadata != nil {
		msg["metadata"] = m.Metadata
	}
	return msg
}

// checkMetadata returns a message's metadata parameter, or the error code Slack
// answers for one it cannot take: a JSON object with an event_type and an object
// event_payload (docs.slack.dev, "Using message metadata").
func checkMetadata(f url.Values) (json.RawMessage, string) {
	raw := f.Get("metadata")
	if raw == "" {
		return nil, ""
	}
	var m struct {
		EventType    string          `json:"event_type"`
		EventPayload json.RawMessage `json:"event_payload"`
	}
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return nil, "invalid_metadata_format"
	}
	var payload map[string]any
	if m.EventType == "" || json.Unmarshal(m.EventPayload, &payload) != nil || payload == nil {
		return nil, "invalid_metadata_schema"
	}
	return json.RawMessage(raw), ""
}

// parseTS reads a Slack timestamp ("1700000000.000123", or whole seconds) as
// microseconds; empty is def.
func parseTS(s string, def int64) (int64, bool) {
	if s == "" {
		return def, true
	}
	sec, frac, _ := strings.Cut(s, ".")
	if len(frac) > 6 {
		return 0, false
	}
	n, err := strconv.ParseInt(sec, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var us int64
	if frac != "" {
		if us, err = strconv.ParseInt(frac+strings.Repeat("0", 6-len(frac)), 10, 64); err != nil || us < 0 {
			return 0, false
		}
	}
	return n*1e6 + us, true
}

func pageLimit(s string) (int, bool) {
	if s == "" {
		return defaultPageLimit, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, false
	}
	if n == 0 {
		return defaultPageLimit, true
	}
	return min(n, maxPageLimit), true
}

// cursor encodes a page's start the way Slack's cursors look (base64 of
// "next_ts:..." or "channel:...").
func cursor(prefix, v string) string {
	return base64.StdEncoding.EncodeToString([]byte(prefix + v))
}

func decodeCursor(c, prefix string) (string, bool) {
	b, err := base64.StdEncoding.DecodeString(c)
	if err != nil || !strings.HasPrefix(string(b), prefix) {
		return "", false
	}
	return strings.TrimPrefix(string(b), prefix), true
}

func parseCursor(c, prefix string) (int64, bool) {
	v, ok := decodeCursor(c, prefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

func isTrue(s string) bool { return s == "1" || s == "true" }

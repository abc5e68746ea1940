package ingest

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Event is one request, normalised from whichever vendor format logged it. Its JSON
// form (AppendJSON) is the contract in DESIGN.md that `gatewatch parse` prints.
//
// The strings of events filled by one parser share large backing chunks, so holding a
// single field keeps its chunk alive: code that keeps a field beyond the batch (a sample
// path in an alert's evidence, say) should strings.Clone it.
type Event struct {
	Time      time.Time // event time, UTC, from the record itself
	Source    string    // the format name: awswaf, apigw, kong, envoy, nginx, cloudflare
	ClientKey string    // consumer / API key id, else the fingerprint of the API key header
	TokenFP   string    // keyed HMAC-SHA-256 of the bearer token or API key, 32 hex digits
	Device    string    // device id header, else a hash of user agent and TLS fingerprint
	ClientIP  string
	Country   string // ISO 3166-1 alpha-2, upper case; empty when unknown
	Method    string
	Host      string
	Route     string // route template, or the path with ids folded to {id}
	Path      string // raw path without the query string
	Status    int    // HTTP status sent to the client; 0 when the log has none
	Action    string // WAF or security action as logged
	RuleID    string // terminating rule as logged
	UserAgent string
	RequestID string // the gateway's request id, for evidence and forensics
}

// Reset clears ev for reuse.
func (ev *Event) Reset() { *ev = Event{} }

// Clone returns ev with strings of its own: a parsed event's point into its parser's
// buffers, which the source reuses once the batch is released.
func (ev Event) Clone() Event {
	for _, f := range []*string{&ev.Source, &ev.ClientKey, &ev.TokenFP, &ev.Device, &ev.ClientIP, &ev.Country, &ev.Method,
		&ev.Host, &ev.Route, &ev.Path, &ev.Action, &ev.RuleID, &ev.UserAgent, &ev.RequestID} {
		*f = strings.Clone(*f)
	}
	return ev
}

// TimeLayout is how Event times are written: RFC 3339 in UTC with milliseconds.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// AppendJSON appends ev as one JSON object, fields in the contract's order, and returns
// the extended buffer. It allocates nothing when dst has room.
func (ev *Event) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"time":"`...)
	dst = ev.Time.UTC().AppendFormat(dst, TimeLayout)
	dst = append(dst, '"')
	dst = appendField(dst, "source", ev.Source)
	dst = appendField(dst, "client_key", ev.ClientKey)
	dst = appendField(dst, "token_fp", ev.TokenFP)
	dst = appendField(dst, "device", ev.Device)
	dst = appendField(dst, "client_ip", ev.ClientIP)
	dst = appendField(dst, "country", ev.Country)
	dst = appendField(dst, "method", ev.Method)
	dst = appendField(dst, "host", ev.Host)
	dst = appendField(dst, "route", ev.Route)
	dst = appendField(dst, "path", ev.Path)
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(ev.Status), 10)
	dst = appendField(dst, "action", ev.Action)
	dst = appendField(dst, "rule_id", ev.RuleID)
	dst = appendField(dst, "user_agent", ev.UserAgent)
	dst = appendField(dst, "request_id", ev.RequestID)
	return append(dst, '}')
}

// MarshalJSON implements json.Marshaler with AppendJSON.
func (ev Event) MarshalJSON() ([]byte, error) { return ev.AppendJSON(nil), nil }

func appendField(dst []byte, name, v string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	return AppendJSONString(dst, v)
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string literal. Invalid UTF-8 becomes U+FFFD, so
// the output is always valid JSON.
func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

package ingest

import (
	"bytes"

	"github.com/valyala/fastjson"
)

// Logs rarely reach gatewatch as the gateway wrote them. Between the two, a container
// runtime or a log shipper often puts each line in an envelope of its own:
//
//	Docker json-file   {"log":"<line>\n","stream":"stdout","time":"2025-06-14T09:21:44.517Z"}
//	Kubernetes (CRI)   2025-06-14T09:21:44.517312345Z stdout F <line>
//	shippers           {"@timestamp":"...","message":"<line>","host":{...},...}   (Filebeat, Logstash)
//	                   {"file":"...","message":"<line>","source_type":"file",...} (Vector)
//	                   {"log":"<line>","stream":"stdout","logtag":"F",...}        (Fluent Bit, Fluentd)
//	syslog             Dec  7 13:00:00 web1 nginx[812]: <line>                  (RFC 3164, as rsyslog writes files)
//	                   <190>1 2025-06-14T09:21:44.517Z web1 kong 812 - - <line>  (RFC 5424)
//
// An unwrapper takes the line back out, through up to maxEnvelopes envelopes (a shipper
// forwarding Docker's files wraps twice). It is tried only on a record that does not
// parse as it is, so a record that merely has a field called "message" or "log" (an
// Envoy log with %LOCAL_REPLY_BODY% as "message", say) is never taken apart, and records
// that need no unwrapping cost nothing. A JSON envelope counts only when its "log" or
// "message" string holds what looks like a log record (a JSON object, or a line one of
// the text formats recognises), so the error of a record that is no envelope stays its
// own.
//
// Container runtimes split lines longer than 16 KiB into parts (CRI tag "P", a Docker
// "log" without its final newline). A part is not a record: it is rejected saying so,
// as bad_syntax, unless the source joined the parts before (FileSource does).
type unwrapper struct {
	json fastjson.Parser
	buf  []byte // the line taken out, valid until the next unwrap
}

// maxEnvelopes bounds how many envelopes unwrap takes off one record.
const maxEnvelopes = 3

var errPartialLine = parseErrorf(ReasonBadSyntax, "record holds part of a line the container runtime split (lines over 16 KiB are logged in parts); the parts were not joined")

// unwrap returns the log line inside line's envelopes, or nil when line is in none. The
// result is valid until the next call.
func (u *unwrapper) unwrap(line []byte) ([]byte, error) {
	found := false
	for range maxEnvelopes {
		inner, partial := u.open(line)
		if partial {
			return nil, errPartialLine
		}
		if inner == nil {
			break
		}
		// inner points into line or into the JSON parser, which the next round reuses;
		// copying it to the front of buf is safe even when it points into buf already.
		u.buf = append(u.buf[:0], inner...)
		line, found = u.buf, true
	}
	if !found {
		return nil, nil
	}
	return line, nil
}

// open takes one envelope off line: the line inside, or nil when line is in no envelope;
// partial when the envelope holds part of a split line.
func (u *unwrapper) open(line []byte) (inner []byte, partial bool) {
	line = trimRecord(line)
	if len(line) == 0 {
		return nil, false
	}
	if line[0] == '{' {
		return u.openJSON(line)
	}
	if line[0] >= '0' && line[0] <= '9' {
		if inner, partial = openCRI(line); inner != nil || partial {
			return inner, partial
		}
	}
	return openSyslog(line), false
}

// openSyslog reads a syslog header before a record, as syslog daemons forward it or
// write it to files: RFC 3164 ("<190>Dec  7 13:00:00 web1 nginx[812]: <line>", the
// priority left out in files, or an RFC 3339 time in its place as rsyslog's
// high-precision file format writes it) and RFC 5424 ("<190>1 <time> <host> <app>
// <procid> <msgid> <structured data> <line>"). It returns the line, or nil when line has
// no such header or what follows it looks like no record.
func openSyslog(line []byte) []byte {
	s, pri := line, false
	if s[0] == '<' {
		i := bytes.IndexByte(s[:min(len(s), 5)], '>')
		if i < 2 || !isDigits(s[1:i]) {
			return nil
		}
		s, pri = s[i+1:], true
	}
	var content []byte
	if pri && len(s) > 2 && s[0] == '1' && s[1] == ' ' {
		content = syslog5424Message(s[2:])
	} else {
		content = syslog3164Message(s)
	}
	content = bytes.TrimPrefix(trimRecord(content), []byte("\ufeff")) // RFC 5424's BOM
	// Not looksLikeRecord, which would open a syslog header inside it again: a line of
	// headers one after the other would cost the square of its length.
	if len(content) == 0 || !looksLikeBareRecord(content) {
		return nil
	}
	return content
}

// syslog3164Message returns what follows an RFC 3164 header ("Dec  7 13:00:00 web1
// nginx[812]: "), nil when s does not start with one.
func syslog3164Message(s []byte) []byte {
	if n := bsdStampLen(s); n > 0 {
		s = s[n:]
	} else {
		ts, rest := cutToken(s)
		if _, err := parseISO(ts); err != nil {
			return nil
		}
		s = rest
	}
	host, rest := cutToken(s)
	tag, rest := cutToken(rest)
	if len(host) == 0 || len(tag) < 2 || tag[len(tag)-1] != ':' {
		return nil
	}
	return rest
}

// bsdStampLen returns the length of the RFC 3164 timestamp ("Dec  7 13:00:00") at the
// start of s and the space after it, 0 when there is none.
func bsdStampLen(s []byte) int {
	const months = "JanFebMarAprMayJunJulAugSepOctNovDec"
	if len(s) < 16 || s[3] != ' ' || s[6] != ' ' || s[15] != ' ' || s[9] != ':' || s[12] != ':' {
		return 0
	}
	if i := bytes.Index([]byte(months), s[:3]); i < 0 || i%3 != 0 {
		return 0
	}
	if !(s[4] == ' ' || isDigits(s[4:5])) || !isDigits(s[5:6]) {
		return 0
	}
	for _, i := range [...]int{7, 8, 10, 11, 13, 14} {
		if !isDigits(s[i : i+1]) {
			return 0
		}
	}
	return 16
}

// syslog5424Message returns the MSG of an RFC 5424 message after "<PRI>1 ", nil when
// the header does not parse.
func syslog5424Message(s []byte) []byte {
	ts, rest := cutToken(s)
	if string(ts) != "-" {
		if _, err := parseISO(ts); err != nil {
			return nil
		}
	}
	for range 4 { // HOSTNAME APP-NAME PROCID MSGID
		var f []byte
		if f, rest = cutToken(rest); len(f) == 0 {
			return nil
		}
	}
	if len(rest) > 0 && rest[0] == '-' {
		return rest[1:]
	}
	for len(rest) > 0 && rest[0] == '[' { // SD-ELEMENTs, "]" escaped as "\]" in values
		i := 1
		for i < len(rest) && (rest[i] != ']' || rest[i-1] == '\\') {
			i++
		}
		if i == len(rest) {
			return nil
		}
		rest = rest[i+1:]
	}
	return rest
}

// openCRI reads the CRI logging format (kubelet's /var/log/pods files):
// "<RFC 3339 time> <stdout|stderr> <tag>[:<tag>...] <line>", tag F for a full line or P
// for a part.
func openCRI(line []byte) (inner []byte, partial bool) {
	_, _, tag, content, ok := splitCRI(line)
	switch {
	case !ok:
		return nil, false
	case tag == 'P':
		return nil, true
	}
	return content, false
}

// openJSON reads a JSON envelope: the string under "log" or "message" that holds a log
// record. Docker's json-file (exactly "log", "stream", "time" and maybe "attrs") marks a
// part by a line without its final newline, Fluent Bit's CRI parser by "logtag": "P".
func (u *unwrapper) openJSON(line []byte) (inner []byte, partial bool) {
	// Cheap test first: most records that fail to parse are no envelope at all.
	if !bytes.Contains(line, []byte(`"log"`)) && !bytes.Contains(line, []byte(`"message"`)) {
		return nil, false
	}
	v, err := u.json.ParseBytes(line)
	if err != nil {
		return nil, false
	}
	o, err := v.Object()
	if err != nil {
		return nil, false
	}
	var logv, msg, stream, ts, logtag *fastjson.Value
	others := false // keys Docker's json-file driver does not write
	o.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "log":
			pickValue(&logv, v)
		case "message":
			pickValue(&msg, v)
			others = true
		case "stream":
			pickValue(&stream, v)
		case "time":
			pickValue(&ts, v)
		case "attrs":
		case "logtag":
			pickValue(&logtag, v)
			others = true
		default:
			others = true
		}
	})
	for _, c := range [...]*fastjson.Value{logv, msg} {
		if c == nil || c.Type() != fastjson.TypeString {
			continue
		}
		s, _ := c.StringBytes()
		content := trimRecord(s)
		if !looksLikeRecord(content) {
			continue
		}
		if c == logv {
			if logtag != nil && string(logtag.GetStringBytes()) == "P" {
				return nil, true
			}
			if stream != nil && ts != nil && !others && len(s) > 0 && s[len(s)-1] != '\n' {
				return nil, true // Docker json-file: a line without its newline is a part
			}
		}
		return content, false
	}
	return nil, false
}

// looksLikeRecord reports whether the content of an envelope is a log record: a JSON
// object, or a line one of the text formats (or a further envelope) recognises.
func looksLikeRecord(s []byte) bool {
	return looksLikeBareRecord(s) || len(s) > 0 && openSyslog(s) != nil
}

// looksLikeBareRecord is looksLikeRecord without a syslog header.
func looksLikeBareRecord(s []byte) bool {
	if len(s) == 0 {
		return false
	}
	if s[0] == '{' {
		return true
	}
	if recogniseFormat(s) != "" {
		return true
	}
	inner, partial := openCRI(s)
	return inner != nil || partial
}

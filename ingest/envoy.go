package ingest

import (
	"bytes"
	"strings"

	"github.com/valyala/fastjson"
)

// Envoy access logs (--format envoy). The parser takes a record starting with '{' as a
// JSON access log and one starting with '[' as the default text format.
//
// JSON access logs (json_format renders every value as a string, typed_json_format
// writes numbers and null). The keys are whatever the operator configured, so before
// matching, a key is lower-cased, camelCase is split with "_", "-", "." and spaces
// become "_" and a leading ":" is dropped: "startTime", "START_TIME", "x-forwarded-for"
// and ":authority" all match. A value that is null, "" or "-" is unset; when a record
// sets several keys of one field, the first key listed below wins.
//
//	time        start_time, @timestamp, timestamp, time: RFC 3339 / ISO 8601, or an
//	            epoch (seconds with an optional fraction, ms, µs or ns); required
//	method      method, request_method (an HTTP method token, else left out)
//	path        x_envoy_original_path, original_path, path, request_path (query dropped;
//	            the host of an absolute-form path is the host when none is logged)
//	status      response_code, status_code, status (0: the client left before a response)
//	client_ip   client_ip, downstream_remote_address, downstream_direct_remote_address
//	            (the peer), unless it is a private, loopback or shared address (a
//	            proxy of the operator's) and x_forwarded_for or forwarded_for names
//	            hops: then the client among them (see clientOfList), as with no peer;
//	            the port and IPv6 brackets are stripped, and a value that is no IP
//	            address is ignored
//	host        authority, host, http_host (as logged, port included)
//	route       route_name, route, unless Istio generated it ("default", "allow_any",
//	            "block_all": see isRouteName); else the path with ids folded
//	user_agent  user_agent, http_user_agent
//	request_id  request_id, x_request_id
//	client_key  client_key, consumer_id, consumer
//	token       authorization, http_authorization (fingerprinted, never kept)
//	API key     the configured api_key_header (x_api_key by default), api_key
//	            (fingerprinted, never kept)
//	device      the configured device_header (x_device_id by default), device_id
//	TLS         ja4, tls_ja4_fingerprint, ja4_fingerprint, then ja3,
//	            tls_ja3_fingerprint, ja3_fingerprint, ja3_hash (hashed into device
//	            with the user agent when no device id is logged; JA4 first because
//	            JA3 changes with every connection of browsers that shuffle TLS extensions)
//	country     country, client_country, cf_ipcountry (ISO alpha-2)
//
// Every other key (protocol, response_flags, bytes_*, duration, upstream_*,
// requested_server_name, nested objects ...) is read past. Only top-level keys count.
//
// Text: Envoy's default format,
//
//	[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
//	%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
//	"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"
//
// (one line), where the client IP is taken from X-Forwarded-For (see clientOfList:
// the rightmost entry that is not a private address, which a client cannot forge) and the host the
// :authority (else the host of an absolute-form path). Emissary-ingress (Ambassador)
// writes the same format after "ACCESS ". Istio's default text format, which adds %RESPONSE_CODE_DETAILS%
// %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" after the flags
// and %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%
// %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME% at the end, is read
// too: its downstream remote address is the client IP and its route name the route
// (unless Istio generated it, see isRouteName).
// Quoted fields appended to the default format are ignored; other customised text
// formats are not supported (they do not describe themselves: log JSON instead).
type envoyParser struct {
	*base
	j         flatJSON
	apiKeyKey string // the API key header as a normalised JSON key: x-api-key → x_api_key
	deviceKey string
}

// emissaryPrefix starts Emissary-ingress's default access-log line.
var emissaryPrefix = []byte("ACCESS ")

func newEnvoyParser(b *base) *envoyParser {
	return &envoyParser{base: b, apiKeyKey: headerJSONKey(b.opts.APIKeyHeader), deviceKey: headerJSONKey(b.opts.DeviceHeader)}
}

// Parse fills ev from one Envoy access log record and keeps no reference to line.
func (p *envoyParser) Parse(ev *Event, line []byte) error {
	ev.Reset()
	line = trimRecord(line)
	line, _ = bytes.CutPrefix(line, emissaryPrefix)
	var err error
	switch {
	case len(line) == 0:
		return parseErrorf(ReasonBadSyntax, "empty record")
	case line[0] == '{':
		err = p.parseJSON(ev, line)
	case line[0] == '[':
		err = p.parseText(ev, line)
	default:
		return parseErrorf(ReasonBadSyntax, "record is neither an Envoy JSON access log nor the default text format")
	}
	if err != nil {
		return err
	}
	ev.Source = FormatEnvoy
	p.finish(ev)
	if line[0] == '[' && !hasClient(ev) {
		return errEnvoyNoClient // complete would say errNoClient, without what to add
	}
	return nil
}

// errEnvoyNoClient is errNoClient for a text record, with what to change: Envoy's
// default format names the client only in X-Forwarded-For, which an edge proxy that
// does not set use_remote_address leaves as the client sent it ("-", most often).
var errEnvoyNoClient = parseErrorf(ReasonMissingField, "record has no client: Envoy's default format logs the client only in X-Forwarded-For, empty here; "+
	"append %%DOWNSTREAM_REMOTE_ADDRESS%% to the access log format (or log JSON with downstream_remote_address)")

func (p *envoyParser) parseJSON(ev *Event, line []byte) error {
	obj, err := p.j.parse(line)
	if err != nil {
		return err
	}
	obj.Visit(func(k []byte, v *fastjson.Value) {
		s, rank := p.jsonKey(p.j.normKey(k))
		p.j.put(s, rank, v)
	})
	if err := p.j.fill(p.base, ev); err != nil {
		return err
	}
	method, _ := p.j.text(slotMethod)
	p.setMethod(ev, method)
	if v, _ := p.j.text(slotPath); !isUnset(v) {
		p.setTarget(ev, method, v)
	}
	if v, _ := p.j.text(slotRoute); isRouteName(v) {
		ev.Route = p.intern(v)
	}
	return nil
}

// isRouteName reports whether a logged %ROUTE_NAME% names a route of the operator's. Unset
// values are not, and neither are the names Istio gives every route it generates:
// "default" (the inbound route of every sidecar, and outbound routes with no
// VirtualService route name), "allow_any" (passthrough) and "block_all" (registry-only
// blackhole). Taken as the route they would make one endpoint of a whole mesh, so the
// path with ids folded is the route instead.
func isRouteName(v []byte) bool {
	if isUnset(v) {
		return false
	}
	switch string(v) {
	case "default", "allow_any", "block_all":
		return false
	}
	return true
}

// jsonKey maps a normalised key of an Envoy JSON record to the field it feeds.
func (p *envoyParser) jsonKey(k []byte) (jsonSlot, uint8) {
	if len(k) == 0 {
		return slotNone, 0
	}
	switch string(k) {
	case "start_time":
		return slotTime, 0
	case "@timestamp":
		return slotTime, 1
	case "timestamp":
		return slotTime, 2
	case "time":
		return slotTime, 3
	case "method":
		return slotMethod, 0
	case "request_method":
		return slotMethod, 1
	case "x_envoy_original_path":
		return slotPath, 0
	case "original_path":
		return slotPath, 1
	case "path":
		return slotPath, 2
	case "request_path":
		return slotPath, 3
	case "response_code":
		return slotStatus, 0
	case "status_code":
		return slotStatus, 1
	case "status":
		return slotStatus, 2
	case "client_ip":
		return slotClientIP, 0
	case "downstream_remote_address":
		return slotClientIP, 1
	case "downstream_direct_remote_address":
		return slotClientIP, 2
	case "x_forwarded_for":
		return slotForwardedFor, 0
	case "forwarded_for":
		return slotForwardedFor, 1
	case "authority":
		return slotHost, 0
	case "host":
		return slotHost, 1
	case "http_host":
		return slotHost, 2
	case "route_name":
		return slotRoute, 0
	case "route":
		return slotRoute, 1
	case "user_agent":
		return slotUserAgent, 0
	case "http_user_agent":
		return slotUserAgent, 1
	case "request_id":
		return slotRequestID, 0
	case "x_request_id":
		return slotRequestID, 1
	case "client_key":
		return slotConsumer, 0
	case "consumer_id":
		return slotConsumer, 1
	case "consumer":
		return slotConsumer, 2
	case "authorization":
		return slotAuthorization, 0
	case "http_authorization":
		return slotAuthorization, 1
	case "api_key":
		return slotAPIKey, 1
	case "device_id":
		return slotDeviceID, 1
	case "ja4", "tls_ja4_fingerprint", "ja4_fingerprint":
		return slotTLS, 0
	case "ja3", "tls_ja3_fingerprint", "ja3_fingerprint", "ja3_hash":
		return slotTLS, 1
	case "country":
		return slotCountry, 0
	case "client_country":
		return slotCountry, 1
	case "cf_ipcountry":
		return slotCountry, 2
	}
	// Comparisons, not a switch: a switch with non-constant cases would copy k.
	switch {
	case string(k) == p.apiKeyKey:
		return slotAPIKey, 0
	case string(k) == p.deviceKey:
		return slotDeviceID, 0
	}
	return slotNone, 0
}

// parseText reads Envoy's default text format, or Istio's.
func (p *envoyParser) parseText(ev *Event, line []byte) error {
	end := bytes.IndexByte(line, ']')
	if end < 0 {
		return parseErrorf(ReasonBadSyntax, "no ] closing the start time")
	}
	t, err := parseTimeBytes(line[1:end])
	if err := p.setTime(ev, t, err); err != nil {
		return err
	}
	rest := line[end+1:]
	if len(rest) < 2 || rest[0] != ' ' || rest[1] != '"' {
		return parseErrorf(ReasonBadSyntax, "no quoted request line after the start time")
	}
	req, rest, ok := cutEnvoyRequest(rest[2:])
	if !ok {
		return parseErrorf(ReasonBadSyntax, "request line is not followed by a response code")
	}
	method, target := splitRequestLine(req)
	p.setMethod(ev, method)

	var code, t1, t2 []byte
	code, rest = cutToken(rest)
	if err := p.setStatusText(ev, code); err != nil {
		return err
	}
	_, rest = cutToken(rest) // %RESPONSE_FLAGS%
	t1, rest = cutToken(rest)
	t2, rest = cutToken(rest)
	if len(t1) == 0 || len(t2) == 0 {
		return parseErrorf(ReasonBadSyntax, "record ends after the response code")
	}
	var remote, route []byte
	if len(rest) > 0 && rest[0] == '"' {
		// Istio: t1, t2 were %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%;
		// then "%UPSTREAM_TRANSPORT_FAILURE_REASON%" and the byte counts and durations.
		i := bytes.Index(rest[1:], []byte(`" `))
		if i < 0 {
			return parseErrorf(ReasonBadSyntax, "unterminated upstream failure reason")
		}
		rest = rest[i+3:]
		for range 4 {
			_, rest = cutToken(rest)
		}
		// The six unquoted fields after the quoted ones, from the right: Envoy's own
		// values, which a quote in a header cannot shift.
		var tail [6][]byte
		for i := range tail {
			rest, tail[len(tail)-1-i] = cutLastToken(rest)
			if len(tail[len(tail)-1-i]) == 0 || bytes.IndexByte(tail[len(tail)-1-i], '"') >= 0 {
				return parseErrorf(ReasonBadSyntax, "expected six unquoted fields after the quoted ones")
			}
		}
		remote, route = tail[3], tail[5]
	} else {
		_, rest = cutToken(rest) // %DURATION%
		_, rest = cutToken(rest) // %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
	}
	xff, ua, rid, authority, ok := splitEnvoyQuoted(rest)
	if !ok {
		return parseErrorf(ReasonBadSyntax, "expected five quoted fields after the durations")
	}
	ev.UserAgent = p.str(ua)
	ev.Host = p.str(authority)
	p.setTarget(ev, method, target)
	ev.RequestID = p.str(rid)
	p.setClientBehind(ev, remote, xff)
	if isRouteName(route) {
		ev.Route = p.intern(route)
	}
	var c credentials
	p.setIdentity(ev, &c)
	return nil
}

// cutEnvoyRequest splits s, the text after the opening quote of the request line, at
// the quote that closes it: the first `" ` followed by a response code (one to three
// digits and a space), so that a quote inside the path cannot shift the fields after it.
func cutEnvoyRequest(s []byte) (req, rest []byte, ok bool) {
	for off := 0; ; {
		i := bytes.Index(s[off:], []byte(`" `))
		if i < 0 {
			return nil, nil, false
		}
		i += off
		n := 0
		for i+2+n < len(s) && n < 4 && s[i+2+n] >= '0' && s[i+2+n] <= '9' {
			n++
		}
		if n >= 1 && n <= 3 && i+2+n < len(s) && s[i+2+n] == ' ' {
			return s[:i], s[i+2:], true
		}
		off = i + 1
	}
}

// splitEnvoyQuoted splits `"XFF" "UA" "REQUEST-ID" "AUTHORITY" "UPSTREAM-HOST"`, and
// any quoted fields an operator appended, at each `" "`, from the left. Envoy does not
// escape header values, so a user agent holding `" "` shifts the request id and the
// authority; both are headers the client sets anyway, the client IP (the first
// X-Forwarded-For entry) comes before the user agent, and an appended field, which
// could hold anything (a token, say), never lands in a field that is kept.
func splitEnvoyQuoted(s []byte) (xff, ua, rid, authority []byte, ok bool) {
	if len(s) < 2 || s[0] != '"' {
		return nil, nil, nil, nil, false
	}
	s = s[1:]
	sep := []byte(`" "`)
	var f [4][]byte
	for i := range f {
		j := bytes.Index(s, sep)
		if j < 0 {
			return nil, nil, nil, nil, false
		}
		f[i], s = s[:j], s[j+len(sep):]
	}
	if bytes.IndexByte(s, '"') < 0 { // the upstream host is never closed
		return nil, nil, nil, nil, false
	}
	return f[0], f[1], f[2], f[3], true
}

// cutToken returns the first space-separated token of s and what follows it.
func cutToken(s []byte) (tok, rest []byte) {
	for len(s) > 0 && s[0] == ' ' {
		s = s[1:]
	}
	if i := bytes.IndexByte(s, ' '); i >= 0 {
		return s[:i], s[i+1:]
	}
	return s, nil
}

// cutLastToken returns the last space-separated token of s and what precedes it.
func cutLastToken(s []byte) (rest, tok []byte) {
	for len(s) > 0 && s[len(s)-1] == ' ' {
		s = s[:len(s)-1]
	}
	if i := bytes.LastIndexByte(s, ' '); i >= 0 {
		return s[:i], s[i+1:]
	}
	return nil, s
}

// trimRecord drops surrounding blanks and a trailing CR.
func trimRecord(line []byte) []byte {
	for len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
		line = line[1:]
	}
	for len(line) > 0 {
		switch line[len(line)-1] {
		case ' ', '\t', '\r', '\n':
			line = line[:len(line)-1]
			continue
		}
		break
	}
	return line
}

// headerJSONKey turns a header name into the key a JSON access log usually gives it:
// x-api-key → x_api_key.
func headerJSONKey(h string) string {
	return strings.ReplaceAll(strings.ToLower(h), "-", "_")
}

// A jsonSlot is an Event input that a flat JSON access log (Envoy, nginx) carries under
// one of several operator-chosen keys.
type jsonSlot uint8

const (
	slotNone jsonSlot = iota
	slotTime
	slotMethod
	slotRequest // nginx $request: "METHOD target PROTOCOL"
	slotPath
	slotURI // nginx $uri, the normalised path: used when neither $request_uri nor $request is logged
	slotStatus
	slotUserAgent
	slotHost
	slotClientIP
	slotForwardedFor
	slotRoute
	slotRequestID
	slotAuthorization
	slotAPIKey
	slotDeviceID
	slotTLS
	slotConsumer
	slotCountry
	numJSONSlots
)

// flatJSON collects the values of a flat JSON access-log record by slot, keeping per
// slot the value of the best-ranked key that is set. Its values point into its
// fastjson.Parser and are valid until the next parse.
type flatJSON struct {
	parser fastjson.Parser
	vals   [numJSONSlots]*fastjson.Value
	ranks  [numJSONSlots]uint8
	key    [96]byte // the normalised key being matched
	num    []byte   // the text of numeric values handed out by text
}

// parse parses line and returns its top-level object, with no slot filled yet.
func (j *flatJSON) parse(line []byte) (*fastjson.Object, error) {
	v, err := j.parser.ParseBytes(line)
	if err != nil {
		// fastjson's message quotes the record, which may hold credentials.
		return nil, parseErrorf(ReasonInvalidJSON, "record is not valid JSON")
	}
	obj, err := v.Object()
	if err != nil {
		return nil, parseErrorf(ReasonInvalidJSON, "record is a JSON %s, not an object", v.Type())
	}
	j.vals = [numJSONSlots]*fastjson.Value{}
	j.num = j.num[:0]
	return obj, nil
}

// normKey returns k normalised by normJSONKey, in j.key, or k itself when it is
// already in normal form (lower-case snake_case, the usual spelling).
func (j *flatJSON) normKey(k []byte) []byte {
	for _, c := range k {
		if (c < 'a' || c > 'z') && c != '_' && (c < '0' || c > '9') {
			return normJSONKey(j.key[:0], k)
		}
	}
	if len(k) > len(j.key)/2 {
		return nil
	}
	return k
}

// normJSONKey appends k to dst lower-cased, with camelCase split by "_", "-", "." and
// " " turned into "_" and a leading ":" dropped. It returns nil for a key that might
// not fit in dst's capacity, which is no key of ours.
func normJSONKey(dst, k []byte) []byte {
	if len(k) == 0 || 2*len(k) > cap(dst)-len(dst) {
		return nil
	}
	out := dst
	for i, c := range k {
		switch {
		case c >= 'A' && c <= 'Z':
			if i > 0 && len(out) > len(dst) && out[len(out)-1] != '_' {
				prev := k[i-1]
				lowerOrDigit := prev >= 'a' && prev <= 'z' || prev >= '0' && prev <= '9'
				acronymEnd := prev >= 'A' && prev <= 'Z' && i+1 < len(k) && k[i+1] >= 'a' && k[i+1] <= 'z'
				if lowerOrDigit || acronymEnd {
					out = append(out, '_')
				}
			}
			out = append(out, c+'a'-'A')
		case c == '-' || c == '.' || c == ' ':
			out = append(out, '_')
		case c == ':' && i == 0:
		default:
			out = append(out, c)
		}
	}
	return out
}

// put offers v as the value of slot s under a key of the given rank (0 is best).
// Unset values (null, "", "-") are not offered, so they never hide a set one.
func (j *flatJSON) put(s jsonSlot, rank uint8, v *fastjson.Value) {
	if s == slotNone {
		return
	}
	switch v.Type() {
	case fastjson.TypeNull:
		return
	case fastjson.TypeString:
		if b, _ := v.StringBytes(); isUnset(b) {
			return
		}
	}
	if j.vals[s] != nil && j.ranks[s] <= rank {
		return
	}
	j.vals[s], j.ranks[s] = v, rank
}

// text returns slot s as text: a string's contents or a number's digits, nil when
// unset. ok is false when the value is an object, an array or a boolean.
func (j *flatJSON) text(s jsonSlot) (b []byte, ok bool) {
	v := j.vals[s]
	if v == nil {
		return nil, true
	}
	switch v.Type() {
	case fastjson.TypeString:
		b, _ = v.StringBytes()
		return b, true
	case fastjson.TypeNumber:
		start := len(j.num)
		j.num = v.MarshalTo(j.num)
		return j.num[start:len(j.num):len(j.num)], true
	}
	return nil, false
}

// fill stores what Envoy and nginx JSON records hold alike: time, status, user agent,
// host, client IP, request id, country and identity. Method, path and route are the
// caller's.
func (j *flatJSON) fill(b *base, ev *Event) error {
	v, ok := j.text(slotTime)
	if !ok {
		return parseErrorf(ReasonBadTimestamp, "event time is neither a string nor a number")
	}
	t, err := parseTimeBytes(v)
	if err := b.setTime(ev, t, err); err != nil {
		return err
	}
	if v, ok = j.text(slotStatus); !ok {
		return parseErrorf(ReasonBadValue, "status is neither a string nor a number")
	}
	if err := b.setStatusText(ev, v); err != nil {
		return err
	}
	v, _ = j.text(slotUserAgent)
	ev.UserAgent = b.str(v)
	v, _ = j.text(slotHost)
	ev.Host = b.str(v)
	v, _ = j.text(slotRequestID)
	ev.RequestID = b.str(v)
	peer, _ := j.text(slotClientIP)
	xff, _ := j.text(slotForwardedFor)
	b.setClientBehind(ev, peer, xff)
	if v, _ = j.text(slotCountry); len(v) > 0 {
		b.setCountry(ev, v)
	}
	var c credentials
	c.consumer, _ = j.text(slotConsumer)
	c.authorization, _ = j.text(slotAuthorization)
	c.apiKey, _ = j.text(slotAPIKey)
	c.deviceID, _ = j.text(slotDeviceID)
	c.tlsFP, _ = j.text(slotTLS)
	b.setIdentity(ev, &c)
	return nil
}

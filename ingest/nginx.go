package ingest

import (
	"bytes"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// nginx access logs (--format nginx). A record starting with '{' is a JSON log_format,
// anything else the predefined combined format.
//
// Combined: '$remote_addr - $remote_user [$time_local] "$request" $status
// $body_bytes_sent "$http_referer" "$http_user_agent"', optionally after the virtual
// host ("$host $remote_addr ...", Apache's vhost_combined "%v:%p %h ..."), which is the
// host when the request names none. Apache may write an identd answer for the "-" and
// unquoted fields (%D, %T) before the referer. Fields appended after it are ignored but
// for the stock nginx.conf "main" format's "$http_x_forwarded_for"; so is a missing
// referer and user agent (the common log format). $remote_addr may be a list
// ("203.0.113.7, 10.0.0.2"). The client is the remote address, unless that is a
// private, loopback or shared address (a load balancer or proxy of the operator's) and
// X-Forwarded-For names hops: then it is chosen among them, and of a list, as
// clientOfList says (the rightmost address that is not private, which a client cannot
// forge). Apache's combined format (%h with HostnameLookups on) may log a host name
// instead, which is kept as the client (see isHostName). $remote_user (basic auth) is the client key. nginx escapes '"', '\'
// and bytes outside printable ASCII in these fields as \xHH; the request line and user
// agent are decoded, and bytes that do not form UTF-8 become U+FFFD. Older Apache writes
// quotes inside the request as they came: the request ends at the quote followed by a
// status and a byte count. A request line that is "-" or junk (a TLS handshake sent to a
// plain-HTTP port, scanner garbage) gives an empty method and path: the record is still
// an event as long as its time, status and client parse. The combined format has no
// host; an absolute-form request ("GET http://h/", a proxy probe) or a CONNECT names one.
// A line that does not follow this layout, a status that is no number included, is
// bad_syntax.
//
// JSON (a user-defined log_format, usually with escape=json): keys are nginx variable
// names, matched after the normalisation described for Envoy; values are strings, or
// numbers where the template leaves out the quotes. The first key listed wins:
//
//	time        msec (seconds.millis), @timestamp, time_iso8601, time_local, timestamp, time; required
//	method      request_method, method, else from request
//	path        request_uri, else the target of request ("GET /a?b HTTP/1.1"), else uri
//	status      status
//	client_ip   remote_addr, client_ip (the peer), unless it is a private, loopback or
//	            shared address and http_x_forwarded_for or x_forwarded_for names hops:
//	            then the client among them (see clientOfList), as with no peer
//	host        http_host, host, server_name (as logged; "_" is no host)
//	user_agent  http_user_agent, user_agent
//	request_id  request_id, http_x_request_id
//	client_key  client_key, remote_user
//	token       http_authorization, authorization (fingerprinted, never kept)
//	API key     http_x_api_key, x_api_key: from the configured api_key_header
//	            (fingerprinted, never kept)
//	device      http_x_device_id, x_device_id: from the configured device_header
//	TLS         ja4, ssl_ja4, http_ssl_ja4, then ja3, ja3_hash, ssl_ja3_hash,
//	            http_ssl_ja3_hash (third-party JA3/JA4 modules)
//	country     http_cf_ipcountry, geoip2_country_code, geoip2_data_country_code,
//	            geoip_country_code, country_code, country
type nginxParser struct {
	*base
	j          flatJSON
	apiKeyKeys [2]string // http_x_api_key, x_api_key for the default x-api-key
	deviceKeys [2]string
	buf        []byte // quoted fields with their escapes decoded
}

func newNginxParser(b *base) *nginxParser {
	p := &nginxParser{base: b}
	if k := headerJSONKey(b.opts.APIKeyHeader); k != "" {
		p.apiKeyKeys = [2]string{"http_" + k, k}
	}
	if k := headerJSONKey(b.opts.DeviceHeader); k != "" {
		p.deviceKeys = [2]string{"http_" + k, k}
	}
	return p
}

// Parse fills ev from one nginx access log record and keeps no reference to line.
func (p *nginxParser) Parse(ev *Event, line []byte) error {
	ev.Reset()
	line = trimRecord(line)
	var err error
	switch {
	case len(line) == 0:
		return parseErrorf(ReasonBadSyntax, "empty record")
	case line[0] == '{':
		err = p.parseJSON(ev, line)
	default:
		err = p.parseCombined(ev, line)
	}
	if err != nil {
		return err
	}
	ev.Source = FormatNginx
	p.finish(ev)
	return nil
}

func (p *nginxParser) parseCombined(ev *Event, line []byte) error {
	i := bytes.Index(line, []byte(" ["))
	if i <= 0 {
		if bytes.Contains(line, []byte(" - ")) {
			return parseErrorf(ReasonBadSyntax, "no [$time_local] after $remote_user")
		}
		return parseErrorf(ReasonBadSyntax, `record does not start with "$remote_addr - "`)
	}
	remote, user, ok := splitUser(line[:i])
	if !ok {
		return parseErrorf(ReasonBadSyntax, `record does not start with "$remote_addr - "`)
	}
	vhost, addr, ok := splitRemote(remote)
	if !ok {
		return parseErrorf(ReasonBadSyntax, `record does not start with "$remote_addr - "`)
	}
	rest := line[i+2:]
	i = bytes.IndexByte(rest, ']')
	if i < 0 {
		return parseErrorf(ReasonBadSyntax, "no ] closing $time_local")
	}
	t, err := parseTimeBytes(rest[:i])
	if err := p.setTime(ev, t, err); err != nil {
		return err
	}
	rest = rest[i+1:]
	if len(rest) < 2 || rest[0] != ' ' || rest[1] != '"' {
		return parseErrorf(ReasonBadSyntax, "no quoted $request after $time_local")
	}
	req, rest, escaped, ok := cutRequest(rest[1:])
	if !ok {
		return parseErrorf(ReasonBadSyntax, "no $status after the quoted $request")
	}
	status, rest := cutToken(rest)
	if err := p.setStatusText(ev, status); err != nil {
		return err
	}
	if escaped {
		req = p.unescape(req)
	}
	method, target := splitRequestLine(req)
	p.setMethod(ev, method)
	p.setTarget(ev, method, target)

	// $body_bytes_sent, then "$http_referer" "$http_user_agent" when logged, and
	// "$http_x_forwarded_for" in the stock "main" format.
	_, rest = cutToken(rest)
	for range 3 { // unquoted fields before the referer: Apache's %D or %T, say
		if r := bytes.TrimLeft(rest, " "); len(r) == 0 || r[0] == '"' {
			break
		}
		_, rest = cutToken(rest)
	}
	var xff []byte
	if _, rest, _, ok = cutQuoted(rest); ok {
		var ua []byte
		if ua, rest, escaped, ok = cutQuoted(rest); ok {
			if escaped {
				ua = p.unescape(ua)
			}
			ev.UserAgent = p.str(ua)
			if v, _, _, ok := cutQuoted(rest); ok && isForwardedFor(v) {
				xff = v
			}
		}
	}
	if len(vhost) > 0 && ev.Host == "" {
		ev.Host = p.str(vhost)
	}
	p.setClientHost(ev, addr, xff)
	c := credentials{consumer: user}
	p.setIdentity(ev, &c)
	return nil
}

// cutRequest reads the quoted $request at the start of s and returns its contents, the
// text after its closing quote, and whether the contents hold backslash escapes. The
// closing quote is the one followed by a status and a byte count (` 404 512`): nginx
// escapes a quote inside the request as \x22 and Apache since 2.0.46 as \", but older
// Apache and other servers write it as it came, and a scanner's request such as
// `GET /a"b HTTP/1.1` must not shift every field after it.
func cutRequest(s []byte) (req, rest []byte, escaped, ok bool) {
	if req, rest, escaped, ok = cutQuoted(s); ok && isStatusThenBytes(rest) {
		return req, rest, escaped, true
	}
	if len(s) == 0 || s[0] != '"' {
		return nil, nil, false, false
	}
	for off := 1; ; {
		i := bytes.IndexByte(s[off:], '"')
		if i < 0 {
			return nil, nil, false, false
		}
		i += off
		if !escapedAt(s, i) && isStatusThenBytes(s[i+1:]) {
			req = s[1:i]
			return req, s[i+1:], bytes.IndexByte(req, '\\') >= 0, true
		}
		off = i + 1
	}
}

// isStatusThenBytes reports whether s starts with " NNN" and then ends, or goes on with
// a byte count (digits or "-"), as the text after the combined format's $request does.
func isStatusThenBytes(s []byte) bool {
	if len(s) < 4 || s[0] != ' ' {
		return false
	}
	for _, c := range s[1:4] {
		if c < '0' || c > '9' {
			return false
		}
	}
	if len(s) == 4 {
		return true
	}
	return len(s) >= 6 && s[4] == ' ' && (s[5] >= '0' && s[5] <= '9' || s[5] == '-')
}

// unescape decodes nginx's escapes in v into p.buf; the result, valid until the next
// call, is UTF-8 with U+FFFD for bytes that do not form it.
func (p *nginxParser) unescape(v []byte) []byte {
	p.buf = appendUnescaped(p.buf[:0], v)
	if utf8.Valid(p.buf) {
		return p.buf
	}
	n := len(p.buf)
	p.buf = appendValidUTF8(p.buf, p.buf[:n])
	return p.buf[n:]
}

func (p *nginxParser) parseJSON(ev *Event, line []byte) error {
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
	if ev.Host == "_" { // server_name of a catch-all server block
		ev.Host = ""
	}
	reqLine, _ := p.j.text(slotRequest)
	method, reqTarget := splitRequestLine(reqLine)
	if v, _ := p.j.text(slotMethod); !isUnset(v) {
		method = v
	}
	p.setMethod(ev, method)
	switch uri, _ := p.j.text(slotPath); {
	case !isUnset(uri):
		p.setTarget(ev, method, uri)
	case reqTarget != nil:
		p.setTarget(ev, method, reqTarget)
	default:
		uri, _ = p.j.text(slotURI)
		ev.Path = p.str(splitPath(uri))
	}
	return nil
}

// jsonKey maps a normalised key of an nginx JSON record to the field it feeds.
func (p *nginxParser) jsonKey(k []byte) (jsonSlot, uint8) {
	if len(k) == 0 {
		return slotNone, 0
	}
	switch string(k) {
	case "msec":
		return slotTime, 0
	case "@timestamp":
		return slotTime, 1
	case "time_iso8601":
		return slotTime, 2
	case "time_local":
		return slotTime, 3
	case "timestamp":
		return slotTime, 4
	case "time":
		return slotTime, 5
	case "request":
		return slotRequest, 0
	case "request_method":
		return slotMethod, 0
	case "method":
		return slotMethod, 1
	case "request_uri":
		return slotPath, 0
	case "uri":
		return slotURI, 0
	case "status":
		return slotStatus, 0
	case "http_user_agent":
		return slotUserAgent, 0
	case "user_agent":
		return slotUserAgent, 1
	case "http_host":
		return slotHost, 0
	case "host":
		return slotHost, 1
	case "server_name":
		return slotHost, 2
	case "remote_addr":
		return slotClientIP, 0
	case "client_ip":
		return slotClientIP, 1
	case "http_x_forwarded_for":
		return slotForwardedFor, 0
	case "x_forwarded_for":
		return slotForwardedFor, 1
	case "request_id":
		return slotRequestID, 0
	case "http_x_request_id":
		return slotRequestID, 1
	case "client_key":
		return slotConsumer, 0
	case "remote_user":
		return slotConsumer, 1
	case "http_authorization":
		return slotAuthorization, 0
	case "authorization":
		return slotAuthorization, 1
	case "ja4", "ssl_ja4", "http_ssl_ja4":
		return slotTLS, 0
	case "ja3", "ja3_hash", "ssl_ja3_hash", "http_ssl_ja3_hash":
		return slotTLS, 1
	case "http_cf_ipcountry":
		return slotCountry, 0
	case "geoip2_country_code", "geoip2_data_country_code":
		return slotCountry, 1
	case "geoip_country_code":
		return slotCountry, 2
	case "country_code":
		return slotCountry, 3
	case "country":
		return slotCountry, 4
	}
	// Comparisons, not a switch: a switch with non-constant cases would copy k.
	for i := range p.apiKeyKeys {
		switch {
		case string(k) == p.apiKeyKeys[i]:
			return slotAPIKey, uint8(i)
		case string(k) == p.deviceKeys[i]:
			return slotDeviceID, uint8(i)
		}
	}
	return slotNone, 0
}

// splitUser splits what comes before " [$time_local]" into the remote address (with
// any virtual host before it) and $remote_user. Between them nginx writes "-", and
// Apache its %l, the identd answer: "-" too, but for a server that asks identd, whose
// lines are read with no virtual host.
func splitUser(head []byte) (remote, user []byte, ok bool) {
	if i := bytes.Index(head, []byte(" - ")); i > 0 {
		return head[:i], head[i+3:], true
	}
	i := bytes.LastIndexByte(head, ' ')
	if i <= 0 {
		return nil, nil, false
	}
	j := bytes.LastIndexByte(head[:i], ' ')
	if j <= 0 {
		return nil, nil, false
	}
	// Only an address or a host name: a container runtime's "<time> stdout F" before
	// another format's "[" must not read as one.
	if remote = head[:j]; !isAddr(remote) && !isHostName(remote) {
		return nil, nil, false
	}
	return remote, head[i+1:], true
}

// splitRemote splits what comes before " - $remote_user" into the virtual host that
// some formats log first (nginx's "$host $remote_addr ...", Apache's vhost_combined
// "%v:%p %h ..."), without its port, and the remote address or list of addresses
// (which may then be quoted or separated by spaces alone, as a proxy's list is logged).
// It reports false when v is neither.
func splitRemote(v []byte) (vhost, addr []byte, ok bool) {
	if isAddrList(v) {
		return nil, v, true
	}
	i := bytes.IndexByte(v, ' ')
	if i <= 0 {
		return nil, nil, false
	}
	vhost, addr = v[:i], bytes.TrimLeft(v[i+1:], " ")
	if len(stripPort(vhost)) < len(vhost) && isAddr(vhost) && isHostName(stripPort(addr)) {
		// "%a:%{remote}p %v:%p ...": the client's address and port first, the virtual
		// host second ("$host $remote_addr" logs no port with the address).
		vhost, addr = addr, vhost
	}
	if vhost = stripPort(vhost); !isHostName(vhost) && !isAddr(vhost) {
		return nil, nil, false
	}
	if len(addr) == 0 || len(addr) > 512 {
		return nil, nil, false
	}
	// Every entry an address or a host name, with its port: a syslog header before the
	// record ("Dec  7 13:00:00 web1 nginx: 203.0.113.7 - - [...]") is neither.
	for e := range bytes.FieldsFuncSeq(addr, func(r rune) bool { return r == ' ' || r == ',' || r == '"' }) {
		if !isAddr(e) && !isHostName(stripPort(e)) {
			return nil, nil, false
		}
	}
	return vhost, addr, true
}

func isDigits(v []byte) bool {
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(v) > 0
}

// isForwardedFor reports whether a quoted field appended after the user agent can be an
// X-Forwarded-For header as the "main" format logs it: "-" or a list of addresses,
// without ports (so that an appended "$upstream_addr", "10.0.0.7:8080", is not taken
// for one). The addresses are parsed once, when the client is chosen among them.
func isForwardedFor(v []byte) bool {
	if len(v) == 0 || len(v) > 512 {
		return false
	}
	for e := range bytes.SplitSeq(v, []byte(",")) {
		e = bytes.TrimSpace(e)
		if string(e) == "-" || string(e) == "unknown" {
			continue
		}
		if len(e) > 64 || !looksLikeIP(e) || len(stripPort(e)) < len(e) {
			return false
		}
	}
	return true
}

// isAddrList reports whether v can be a logged $remote_addr: an address or host name,
// or a comma-separated list of them (a space only after a comma).
func isAddrList(v []byte) bool {
	if len(v) == 0 || len(v) > 512 {
		return false
	}
	for i, c := range v {
		if !isAddrByte(c) && (c != ' ' || i == 0 || v[i-1] != ',') {
			return false
		}
	}
	return true
}

// isAddrByte reports whether c may be in a logged address or host name.
func isAddrByte(c byte) bool {
	switch {
	case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		return true
	case c == '.', c == ':', c == '-', c == '_', c == '%', c == '[', c == ']', c == ',':
		return true
	}
	return false
}

// cutQuoted reads a field in double quotes at the start of s (after any spaces) and
// returns its raw contents, the text after the closing quote, and whether the contents
// hold backslash escapes (nginx's \xHH, and \" or \\ as other servers write them).
func cutQuoted(s []byte) (v, rest []byte, escaped, ok bool) {
	for len(s) > 0 && s[0] == ' ' {
		s = s[1:]
	}
	if len(s) == 0 || s[0] != '"' {
		return nil, s, false, false
	}
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			escaped = true
			i++
		case '"':
			return s[1:i], s[i+1:], escaped, true
		}
	}
	return nil, s, false, false
}

// appendUnescaped appends v with \xHH, \" and \\ decoded; other backslashes stay.
func appendUnescaped(dst, v []byte) []byte {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c != '\\' || i+1 == len(v) {
			dst = append(dst, c)
			continue
		}
		switch n := v[i+1]; {
		case n == 'x' && i+3 < len(v) && isHexDigit(v[i+2]) && isHexDigit(v[i+3]):
			dst = append(dst, unhex(v[i+2])<<4|unhex(v[i+3]))
			i += 3
		case n == '"' || n == '\\':
			dst = append(dst, n)
			i++
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// appendValidUTF8 appends s with every byte that does not form UTF-8 replaced by U+FFFD.
func appendValidUTF8(dst, s []byte) []byte {
	for len(s) > 0 {
		r, size := utf8.DecodeRune(s)
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, "\uFFFD"...)
		} else {
			dst = append(dst, s[:size]...)
		}
		s = s[size:]
	}
	return dst
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

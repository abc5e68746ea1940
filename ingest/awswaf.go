package ingest

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/valyala/fastjson"
)

// awswafParser reads AWS WAF v2 web ACL logs: one JSON object per request, as WAF
// delivers them to CloudWatch Logs, S3 or Firehose (AWS WAF Developer Guide, "Log fields
// for protection pack (web ACL) traffic").
//
//   - timestamp (epoch milliseconds) is the event time, the one required field;
//   - httpRequest.clientIp, .country ("-" when unknown), .uri (the path; the query is in
//     args), .httpMethod and .requestId as logged;
//   - httpRequest.headers[] is a list of {name, value} whose names keep the client's case
//     and may repeat: Host, User-Agent, Authorization, the API key header and the device
//     header are matched case-insensitively, the first non-empty one of each wins;
//   - action and terminatingRuleId as logged (BLOCK, Default_Action, ...);
//   - responseCodeSent, when set, is the status; a BLOCK without one is a 403 (finish);
//   - the top-level ja4Fingerprint, else ja3Fingerprint, joins the user agent in the
//     device fingerprint. JA4 is preferred because browsers that permute their TLS
//     extensions (Chrome since 110) get a new JA3 on every connection.
type awswafParser struct {
	*base
	scan jsonScanner
	json fastjson.Parser
	// the keys of a record and of its httpRequest, as the scanner predicts them
	topKeys, requestKeys keyOrder
	headerOrder          keyOrder // the header entries (jsonScanner.nameValue)
}

func newAWSWAFParser(b *base) *awswafParser { return &awswafParser{base: b} }

// wafRecord is what Parse takes from a record besides its time and status.
type wafRecord struct {
	action, rule, tlsFP                 []byte
	ip, country, method, uri, requestID []byte
	hdr                                 requestHeaders
}

// Parse fills ev from one AWS WAF log record and keeps no reference to line. Most
// records are read by scanning them for the fields an Event needs (parseScan); a record
// the scanner does not take is read with fastjson (parseTree), which is also what
// decides how a malformed one is rejected.
func (p *awswafParser) Parse(ev *Event, line []byte) error {
	ev.Reset()
	if done, err := p.parseScan(ev, line); done {
		return err
	}
	ev.Reset()
	return p.parseTree(ev, line)
}

// parseScan is Parse with a jsonScanner. It reports done, with Parse's result, or not
// done, for Parse to start again with parseTree: a record the scanner gives up on, or
// one with a field of a type whose reading (or rejection) it leaves to parseTree.
func (p *awswafParser) parseScan(ev *Event, line []byte) (done bool, err error) {
	s := &p.scan
	s.reset(line)
	if !s.enter('{') {
		return false, nil
	}
	var ts, action, rule, status, ja3, ja4 jsonValue
	var r wafRecord
	req := false
	p.topKeys.n = 0
	for {
		k, ok := s.member(&p.topKeys)
		if !ok {
			break
		}
		switch string(k) {
		case "timestamp":
			s.firstValue(&ts)
		case "action":
			s.firstValue(&action)
		case "terminatingRuleId":
			s.firstValue(&rule)
		case "responseCodeSent":
			s.firstValue(&status)
		case "ja3Fingerprint":
			s.firstValue(&ja3)
		case "ja4Fingerprint":
			s.firstValue(&ja4)
		case "httpRequest":
			if req {
				s.skip()
				break
			}
			req = true
			p.scanRequest(&r)
		default:
			s.skipMember(&p.topKeys)
		}
	}
	if !s.end() {
		return false, nil
	}
	var ok, ok2, ok3 bool
	r.action, ok = action.text()
	r.rule, ok2 = rule.text()
	if r.tlsFP, ok3 = ja4.text(); ok3 && isUnset(r.tlsFP) {
		r.tlsFP, ok3 = ja3.text()
	}
	if !ok || !ok2 || !ok3 {
		return false, nil
	}
	// The time and the status as jsonTime and jsonFields.status read them.
	var t time.Time
	var terr error
	switch ts.kind {
	case jsonAbsent, jsonNull:
		terr = errNoTime
	case jsonString:
		t, terr = parseTimeBytes(ts.b)
	default:
		n, ok := ts.uint()
		if !ok || n == 0 {
			return false, nil
		}
		t, terr = epochTime(n)
	}
	if err := p.setTime(ev, t, terr); err != nil {
		return true, err
	}
	switch status.kind {
	case jsonAbsent, jsonNull:
	case jsonString:
		err = p.setStatusText(ev, status.b)
	default:
		n, ok := status.uint()
		if !ok {
			return false, nil
		}
		err = setStatus(ev, n)
	}
	if err != nil {
		return true, err
	}
	p.fill(ev, &r)
	return true, nil
}

// scanRequest reads the httpRequest object, failing the scan on what parseTree would
// have to judge.
func (p *awswafParser) scanRequest(r *wafRecord) {
	s := &p.scan
	if !s.open('{') {
		return
	}
	var ip, country, method, uri, requestID jsonValue
	headers := false
	p.requestKeys.n = 0
	for {
		k, ok := s.member(&p.requestKeys)
		if !ok {
			break
		}
		switch string(k) {
		case "clientIp":
			s.firstValue(&ip)
		case "country":
			s.firstValue(&country)
		case "httpMethod":
			s.firstValue(&method)
		case "uri":
			s.firstValue(&uri)
		case "requestId":
			s.firstValue(&requestID)
		case "headers":
			if headers {
				s.skip()
				break
			}
			headers = true
			p.scanHeaders(&r.hdr)
		default:
			s.skipMember(&p.requestKeys)
		}
	}
	var ok [5]bool
	r.ip, ok[0] = ip.text()
	r.country, ok[1] = country.text()
	r.method, ok[2] = method.text()
	r.uri, ok[3] = uri.text()
	r.requestID, ok[4] = requestID.text()
	if ok != [5]bool{true, true, true, true, true} {
		s.fail()
	}
}

// scanHeaders reads the list of {name, value} headers.
func (p *awswafParser) scanHeaders(hdr *requestHeaders) {
	s := &p.scan
	if !s.open('[') {
		return
	}
	p.headerOrder.n = 0
	for s.more(']') {
		if n, v, escaped, ok := s.nameValue(&p.headerOrder); ok {
			// The layout WAF writes: only the value may need unescaping, and only when
			// the header is one the Event uses.
			if k := hdr.match(&p.opts, n); k != nil {
				if escaped {
					v = s.unescape(v)
				}
				hdr.set(k, v)
			}
			continue
		}
		if !s.open('{') {
			continue
		}
		var name, value jsonValue
		for s.more('}') {
			switch string(s.key()) {
			case "name":
				s.firstValue(&name)
			case "value":
				s.firstValue(&value)
			default:
				s.skip()
			}
		}
		n, ok := name.text()
		v, ok2 := value.text()
		if !ok || !ok2 {
			s.fail()
			return
		}
		if k := hdr.match(&p.opts, n); k != nil {
			hdr.set(k, v)
		}
	}
}

// parseTree is Parse with fastjson: the reference for what parseScan reads, and the
// reader of every record it does not take.
func (p *awswafParser) parseTree(ev *Event, line []byte) error {
	root, err := parseJSONRecord(&p.json, line)
	if err != nil {
		return err
	}
	var ts, action, rule, status, ja3, ja4, req *fastjson.Value
	root.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "timestamp":
			pickValue(&ts, v)
		case "action":
			pickValue(&action, v)
		case "terminatingRuleId":
			pickValue(&rule, v)
		case "responseCodeSent":
			pickValue(&status, v)
		case "ja3Fingerprint":
			pickValue(&ja3, v)
		case "ja4Fingerprint":
			pickValue(&ja4, v)
		case "httpRequest":
			pickValue(&req, v)
		}
	})
	t, err := jsonTime(ts)
	if err := p.setTime(ev, t, err); err != nil {
		return err
	}

	var f jsonFields
	var r wafRecord
	r.action = f.text(action, "action")
	r.rule = f.text(rule, "terminatingRuleId")
	f.status(p.base, ev, status, "responseCodeSent")
	if r.tlsFP = f.text(ja4, "ja4Fingerprint"); isUnset(r.tlsFP) {
		r.tlsFP = f.text(ja3, "ja3Fingerprint")
	}
	var ip, country, method, uri, requestID, headers *fastjson.Value
	f.object(req, "httpRequest").Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "clientIp":
			pickValue(&ip, v)
		case "country":
			pickValue(&country, v)
		case "httpMethod":
			pickValue(&method, v)
		case "uri":
			pickValue(&uri, v)
		case "requestId":
			pickValue(&requestID, v)
		case "headers":
			pickValue(&headers, v)
		}
	})
	r.ip = f.text(ip, "httpRequest.clientIp")
	r.country = f.text(country, "httpRequest.country")
	r.method = f.text(method, "httpRequest.httpMethod")
	r.uri = f.text(uri, "httpRequest.uri")
	r.requestID = f.text(requestID, "httpRequest.requestId")
	for _, h := range f.array(headers, "httpRequest.headers") {
		o := f.object(h, "httpRequest.headers[]")
		if o == nil {
			continue
		}
		if k := r.hdr.match(&p.opts, f.text(o.Get("name"), "httpRequest.headers[].name")); k != nil {
			r.hdr.set(k, f.text(o.Get("value"), "httpRequest.headers[].value"))
		}
	}
	if f.err != nil {
		return f.err
	}
	p.fill(ev, &r)
	return nil
}

// fill stores what both readers take from a record besides its time and status.
func (p *awswafParser) fill(ev *Event, r *wafRecord) {
	ev.Source = FormatAWSWAF
	ev.Action = p.intern(r.action)
	ev.RuleID = p.intern(r.rule)
	p.setClientIP(ev, r.ip)
	p.setCountry(ev, r.country)
	p.setMethod(ev, r.method)
	ev.Path = p.str(splitPath(r.uri))
	ev.RequestID = p.str(r.requestID)
	cred := credentials{tlsFP: r.tlsFP}
	r.hdr.apply(p.base, ev, &cred)
	p.setIdentity(ev, &cred)
	p.finish(ev)
}

// The helpers below are shared by the fastjson-based parsers of this package (awswaf,
// apigw, kong, cloudflare).

// parseJSONRecord parses line with jp and returns its top-level object, which is valid
// until jp parses again. Errors never quote the record: fastjson's do, so they are
// replaced (and not wrapped).
func parseJSONRecord(jp *fastjson.Parser, line []byte) (*fastjson.Object, error) {
	v, err := parseJSON(jp, line)
	if err != nil {
		return nil, err
	}
	return recordObject(v)
}

// parseJSON parses line with jp into a value valid until jp parses again.
func parseJSON(jp *fastjson.Parser, line []byte) (*fastjson.Value, error) {
	v, err := jp.ParseBytes(line)
	if err != nil {
		return nil, parseErrorf(ReasonInvalidJSON, "record of %d bytes is not valid JSON", len(line))
	}
	return v, nil
}

// recordObject returns the object a record must be.
func recordObject(v *fastjson.Value) (*fastjson.Object, error) {
	o, err := v.Object()
	if err != nil {
		return nil, parseErrorf(ReasonInvalidJSON, "record is a JSON %s, want an object", v.Type())
	}
	return o, nil
}

// pickValue keeps the first occurrence of a key; JSON objects may repeat keys.
func pickValue(dst **fastjson.Value, v *fastjson.Value) {
	if *dst == nil {
		*dst = v
	}
}

// jsonFields reads typed values out of a record and keeps the first type error, so a
// parser can read every field it needs and check once. Absent and null values read as
// unset. The names it puts in errors are the parser's own field names, never text from
// the record.
type jsonFields struct {
	err error
}

func (f *jsonFields) typeError(name string, v *fastjson.Value, want string) {
	if f.err == nil {
		f.err = parseErrorf(ReasonBadValue, "%s is a JSON %s, want %s", name, v.Type(), want)
	}
}

// text returns the bytes of a string value, valid until the parser parses again.
func (f *jsonFields) text(v *fastjson.Value, name string) []byte {
	if v == nil {
		return nil
	}
	switch v.Type() {
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return b
	case fastjson.TypeNull:
		return nil
	}
	f.typeError(name, v, "a string")
	return nil
}

// headerValue is text that also takes a list of strings, as gateways log a header that
// was sent more than once; the first value wins.
func (f *jsonFields) headerValue(v *fastjson.Value, name string) []byte {
	if v != nil && v.Type() == fastjson.TypeArray {
		a, _ := v.Array()
		if len(a) == 0 {
			return nil
		}
		v = a[0]
	}
	return f.text(v, name)
}

func (f *jsonFields) object(v *fastjson.Value, name string) *fastjson.Object {
	if v == nil || v.Type() == fastjson.TypeNull {
		return nil
	}
	o, err := v.Object()
	if err != nil {
		f.typeError(name, v, "an object")
		return nil
	}
	return o
}

func (f *jsonFields) array(v *fastjson.Value, name string) []*fastjson.Value {
	if v == nil || v.Type() == fastjson.TypeNull {
		return nil
	}
	a, err := v.Array()
	if err != nil {
		f.typeError(name, v, "an array")
		return nil
	}
	return a
}

// status stores an HTTP status logged as a number (200) or as text ("200", "-").
func (f *jsonFields) status(b *base, ev *Event, v *fastjson.Value, name string) {
	if v == nil || f.err != nil {
		return
	}
	switch v.Type() {
	case fastjson.TypeNull:
	case fastjson.TypeNumber:
		n, err := v.Int64()
		if err != nil {
			f.err = parseErrorf(ReasonBadValue, "%s is not an integer", name)
			return
		}
		f.err = setStatus(ev, n)
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		f.err = b.setStatusText(ev, s)
	default:
		f.typeError(name, v, "a number or a string")
	}
}

var (
	errEpochNotDecimal = errors.New("epoch timestamp is not a positive decimal number")
	errEpochRange      = errors.New("epoch timestamp is out of range")
)

// jsonTime reads an event time logged as an epoch number (unit by magnitude: s, ms, µs,
// ns), or as text: RFC 3339, Common Log Format, or decimal epoch digits. Absent, null,
// "" and "-" are errNoTime, for setTime to report as a missing field.
func jsonTime(v *fastjson.Value) (time.Time, error) {
	if v == nil {
		return time.Time{}, errNoTime
	}
	switch v.Type() {
	case fastjson.TypeNull:
		return time.Time{}, errNoTime
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return parseTimeBytes(b)
	case fastjson.TypeNumber:
		if n := v.GetInt64(); n != 0 { // 0 also when the number is no integer, without allocating
			return epochTime(n)
		}
		// A fraction (seconds with milliseconds) or an exponent (1.7e12): a float is
		// precise enough for the units that use them.
		x, err := v.Float64()
		switch {
		case err != nil || !(x > 0):
			return time.Time{}, errEpochNotDecimal
		case x >= 9e18:
			return time.Time{}, errEpochRange
		case x < 1e11:
			sec := math.Floor(x)
			us := math.Round((x - sec) * 1e6) // to the microsecond: finer digits are float noise
			return time.Unix(int64(sec), int64(us)*1e3).UTC(), nil
		}
		return epochTime(int64(x))
	}
	return time.Time{}, fmt.Errorf("timestamp is a JSON %s", v.Type())
}

// requestHeaders collects the request headers an Event needs from a record's header
// list or map. The first non-empty value of each wins.
type requestHeaders struct {
	host, authority, userAgent, authorization, apiKey, deviceID []byte
}

// match returns the slot for a header name (compared without regard to ASCII case), or
// nil when the header is not one the Event uses.
func (h *requestHeaders) match(o *ParserOptions, name []byte) *[]byte {
	switch {
	case len(name) == 0:
		return nil
	case equalFoldLower(name, "host"):
		return &h.host
	case equalFoldLower(name, ":authority"):
		return &h.authority
	case equalFoldLower(name, "user-agent"):
		return &h.userAgent
	case equalFoldLower(name, "authorization"):
		return &h.authorization
	case equalFoldLower(name, o.APIKeyHeader):
		return &h.apiKey
	case equalFoldLower(name, o.DeviceHeader):
		return &h.deviceID
	}
	return nil
}

func (h *requestHeaders) set(slot *[]byte, v []byte) {
	if isUnset(*slot) {
		*slot = v
	}
}

// apply stores Host and User-Agent in ev (unless the record had a better field for them)
// and hands the credential headers to cred.
func (h *requestHeaders) apply(b *base, ev *Event, cred *credentials) {
	if ev.Host == "" {
		if isUnset(h.host) {
			h.host = h.authority
		}
		ev.Host = b.intern(h.host)
	}
	if ev.UserAgent == "" {
		ev.UserAgent = b.str(h.userAgent)
	}
	if isUnset(cred.authorization) {
		cred.authorization = h.authorization
	}
	if isUnset(cred.apiKey) {
		cred.apiKey = h.apiKey
	}
	if isUnset(cred.deviceID) {
		cred.deviceID = h.deviceID
	}
}

// equalFoldLower reports whether b equals lower, which is lower case, ignoring ASCII case.
func equalFoldLower(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

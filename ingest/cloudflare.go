package ingest

import (
	"github.com/valyala/fastjson"
)

// cloudflareParser reads Cloudflare Logpush http_requests records (NDJSON, one object per
// request; Cloudflare docs, "Log fields: HTTP requests" and "Log Output Options"). Only the
// fields the job's field_names selected are present; the Logpull API writes the same.
//
//   - EdgeStartTimestamp is the event time, the one required field, in whichever
//     timestamp_format the job uses: unixnano (the default) or unix as a number, rfc3339
//     as a string, or either epoch as a numeric string;
//   - ClientIP; ClientCountry (lower case as logged, "xx" and "t1" unknown);
//     ClientRequestHost; ClientRequestMethod; ClientRequestPath, else the path of
//     ClientRequestURI; ClientRequestUserAgent; RayID is the request id;
//   - EdgeResponseStatus is the status sent to the client;
//   - SecurityAction and SecurityRuleID as logged ("unknown" is Cloudflare's "no
//     action"); records with neither (older jobs, Logpull) fall back to the legacy
//     WAFAction and WAFRuleID when those are non-empty;
//   - JA4, else JA3Hash (Bot Management), joins the user agent in the device fingerprint;
//   - RequestHeaders, a custom field (an object of lower-case header names), is where
//     Authorization, the API key header and the device header can come from.
type cloudflareParser struct {
	*base
	json fastjson.Parser
}

func newCloudflareParser(b *base) *cloudflareParser { return &cloudflareParser{base: b} }

// Parse fills ev from one Cloudflare http_requests record and keeps no reference to line.
func (p *cloudflareParser) Parse(ev *Event, line []byte) error {
	ev.Reset()
	root, err := parseJSONRecord(&p.json, line)
	if err != nil {
		return err
	}
	var ts, ip, country, host, method, path, uri, status, ua *fastjson.Value
	var action, rule, wafAction, wafRule, ray, ja3, ja4, headers *fastjson.Value
	root.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "EdgeStartTimestamp":
			pickValue(&ts, v)
		case "ClientIP":
			pickValue(&ip, v)
		case "ClientCountry":
			pickValue(&country, v)
		case "ClientRequestHost":
			pickValue(&host, v)
		case "ClientRequestMethod":
			pickValue(&method, v)
		case "ClientRequestPath":
			pickValue(&path, v)
		case "ClientRequestURI":
			pickValue(&uri, v)
		case "EdgeResponseStatus":
			pickValue(&status, v)
		case "ClientRequestUserAgent":
			pickValue(&ua, v)
		case "SecurityAction":
			pickValue(&action, v)
		case "SecurityRuleID":
			pickValue(&rule, v)
		case "WAFAction":
			pickValue(&wafAction, v)
		case "WAFRuleID":
			pickValue(&wafRule, v)
		case "RayID":
			pickValue(&ray, v)
		case "JA3Hash":
			pickValue(&ja3, v)
		case "JA4":
			pickValue(&ja4, v)
		case "RequestHeaders":
			pickValue(&headers, v)
		}
	})
	t, err := jsonTime(ts)
	if err := p.setTime(ev, t, err); err != nil {
		return err
	}
	ev.Source = FormatCloudflare

	var f jsonFields
	var cred credentials
	var hdr requestHeaders
	p.setClientIP(ev, f.text(ip, "ClientIP"))
	p.setCountry(ev, f.text(country, "ClientCountry"))
	ev.Host = p.intern(f.text(host, "ClientRequestHost"))
	p.setMethod(ev, f.text(method, "ClientRequestMethod"))
	rp := f.text(path, "ClientRequestPath")
	if isUnset(rp) {
		rp = f.text(uri, "ClientRequestURI")
	}
	ev.Path = p.str(splitPath(rp))
	f.status(p.base, ev, status, "EdgeResponseStatus")
	ev.UserAgent = p.str(f.text(ua, "ClientRequestUserAgent"))
	ev.RequestID = p.str(f.text(ray, "RayID"))
	if action != nil {
		ev.Action = p.intern(f.text(action, "SecurityAction"))
	} else {
		ev.Action = p.intern(f.text(wafAction, "WAFAction"))
	}
	if rule != nil {
		ev.RuleID = p.intern(f.text(rule, "SecurityRuleID"))
	} else {
		ev.RuleID = p.intern(f.text(wafRule, "WAFRuleID"))
	}
	if cred.tlsFP = f.text(ja4, "JA4"); isUnset(cred.tlsFP) {
		cred.tlsFP = f.text(ja3, "JA3Hash")
	}
	f.object(headers, "RequestHeaders").Visit(func(k []byte, v *fastjson.Value) {
		if slot := hdr.match(&p.opts, k); slot != nil {
			hdr.set(slot, f.headerValue(v, "RequestHeaders value"))
		}
	})
	if f.err != nil {
		return f.err
	}
	hdr.apply(p.base, ev, &cred)
	p.setIdentity(ev, &cred)
	p.finish(ev)
	return nil
}

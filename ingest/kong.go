package ingest

import (
	"bytes"

	"github.com/valyala/fastjson"
)

// kongParser reads the JSON record Kong Gateway's logging plugins (file-log, http-log,
// tcp-log, udp-log, syslog) write for each request (Kong plugin docs, "Log format").
//
//   - started_at (epoch milliseconds) is the event time, the one required field;
//   - client_ip; request.method; request.uri (raw, with the query) is the path, else the
//     path of request.url; request.id (Kong 3.5+) is the request id;
//   - request.headers{} (lower-case names; a repeated header is a list): host is the
//     Host (else the host of request.url; service.host is the upstream, not what the
//     client asked for), user-agent, the API key header (with the default x-api-key,
//     also apikey, the name Kong's key-auth plugin reads by default) and the device
//     header.
//     Kong replaces authorization with "REDACTED", which counts as no token;
//   - response.status is the status sent to the client;
//   - route: route.name when the route has one, else its only path when it has exactly
//     one and that is no regex (Kong 3 marks regex paths with "~"; older Kong took any
//     path with regex metacharacters as one), else the folded request path;
//   - consumer.id is the client key, else authenticated_entity.consumer_id (the
//     credential's consumer: Kong before 0.10.2 logged no consumer object, and a
//     custom_fields_by_lua that drops consumer leaves it); authenticated_entity.id (the
//     credential) is fingerprinted as the token when no API key or bearer token was
//     logged. Other credential fields Kong 0.x logged there (key) are never read.
//
// kongKeyHeader is the header Kong's key-auth plugin takes the API key from unless
// configured otherwise (its key_names).
const kongKeyHeader = "apikey"

// http-log with max_batch_size > 1 posts a JSON array of such records. A Parser takes one
// record, so the source that receives such a batch must split it; an array is rejected
// as bad_value saying so.
type kongParser struct {
	*base
	json fastjson.Parser
}

func newKongParser(b *base) *kongParser { return &kongParser{base: b} }

// Parse fills ev from one Kong log record and keeps no reference to line.
func (p *kongParser) Parse(ev *Event, line []byte) error {
	ev.Reset()
	v, err := parseJSON(&p.json, line)
	if err != nil {
		return err
	}
	if v.Type() == fastjson.TypeArray {
		return parseErrorf(ReasonBadValue, "JSON array: split batched http-log payloads into records")
	}
	root, err := recordObject(v)
	if err != nil {
		return err
	}
	var ts, cip, req, resp, route, consumer, entity *fastjson.Value
	root.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "started_at":
			pickValue(&ts, v)
		case "client_ip":
			pickValue(&cip, v)
		case "request":
			pickValue(&req, v)
		case "response":
			pickValue(&resp, v)
		case "route":
			pickValue(&route, v)
		case "consumer":
			pickValue(&consumer, v)
		case "authenticated_entity":
			pickValue(&entity, v)
		}
	})
	t, err := jsonTime(ts)
	if err := p.setTime(ev, t, err); err != nil {
		return err
	}
	ev.Source = FormatKong

	var f jsonFields
	var cred credentials
	var hdr requestHeaders
	p.setClientIP(ev, f.text(cip, "client_ip"))
	if r := f.object(req, "request"); r != nil {
		p.setMethod(ev, f.text(r.Get("method"), "request.method"))
		ev.RequestID = p.str(f.text(r.Get("id"), "request.id"))
		url := f.text(r.Get("url"), "request.url")
		uri := f.text(r.Get("uri"), "request.uri")
		if isUnset(uri) {
			_, uri = splitURL(url)
		}
		ev.Path = p.str(splitPath(uri))
		f.object(r.Get("headers"), "request.headers").Visit(func(k []byte, v *fastjson.Value) {
			slot := hdr.match(&p.opts, k)
			if slot == nil && p.opts.APIKeyHeader == DefaultAPIKeyHeader && string(k) == kongKeyHeader {
				slot = &hdr.apiKey
			}
			if slot != nil {
				hdr.set(slot, f.headerValue(v, "request.headers value"))
			}
		})
		if isUnset(hdr.host) && isUnset(hdr.authority) {
			hdr.host, _ = splitURL(url)
		}
	}
	if r := f.object(resp, "response"); r != nil {
		f.status(p.base, ev, r.Get("status"), "response.status")
	}
	if r := f.object(route, "route"); r != nil {
		if name := f.text(r.Get("name"), "route.name"); !isUnset(name) {
			ev.Route = p.intern(name)
		} else if paths := f.array(r.Get("paths"), "route.paths"); len(paths) == 1 {
			if rp := f.text(paths[0], "route.paths[]"); len(rp) > 0 && rp[0] == '/' && !kongRegexPath(rp) {
				ev.Route = p.intern(rp)
			}
		}
	}
	if c := f.object(consumer, "consumer"); c != nil {
		cred.consumer = f.text(c.Get("id"), "consumer.id")
	}
	if e := f.object(entity, "authenticated_entity"); e != nil {
		cred.credentialID = f.text(e.Get("id"), "authenticated_entity.id")
		if isUnset(cred.consumer) {
			cred.consumer = f.text(e.Get("consumer_id"), "authenticated_entity.consumer_id")
		}
	}
	if f.err != nil {
		return f.err
	}
	hdr.apply(p.base, ev, &cred)
	p.setIdentity(ev, &cred)
	p.finish(ev)
	return nil
}

// kongRegexPath reports whether a route path is a regex rather than a plain prefix:
// Kong 3 requires regex paths to start with "~"; Kong 2 treated a path with regex
// metacharacters as a regex.
func kongRegexPath(p []byte) bool {
	return p[0] == '~' || bytes.ContainsAny(p, `()[]\^$*+?|`)
}

// splitURL splits an absolute URL ("http://host:8000/p?q") into its host and its
// request target ("/p?q"). A value without "://" is taken as a request target.
func splitURL(u []byte) (host, target []byte) {
	i := bytes.Index(u, []byte("://"))
	if i < 0 {
		return nil, u
	}
	rest := u[i+3:]
	j := bytes.IndexAny(rest, "/?#")
	if j < 0 {
		return rest, nil
	}
	return rest[:j], rest[j:]
}

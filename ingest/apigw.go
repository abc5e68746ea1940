package ingest

import (
	"bytes"

	"github.com/valyala/fastjson"
)

// apigwParser reads Amazon API Gateway access logs written in JSON (REST, HTTP and
// WebSocket APIs). The operator writes that format from $context variables (API Gateway
// Developer Guide, "Setting up CloudWatch logging for a REST API" and "Customizing HTTP
// API access logs"), so there is no fixed shape: every value is text ("200", "-" for
// unset), key names are the operator's, and templates nest them ("identity":
// {"sourceIp": ...}, "client": {...}, "response": {"status": ...}) or flatten them with
// dots ("authorizer.claims.sub", "$context.identity.sourceIp").
//
// The parser therefore walks the object (four levels deep at most) and recognises each
// leaf by its last name segment, compared without regard to case, '_' or '-' (so
// "sourceIp", "source_ip" and "SourceIP" are one key, and the snake_case templates of
// AWS's Centralized Logging with OpenSearch, "request_id", "http_method", "client_ip",
// read like the camelCase ones):
//
//   - time: requestTimeEpoch (epoch, unit by magnitude), else requestTime (CLF), else a
//     key named timestamp or time; the one required field;
//   - client IP: ip or sourceIp, else client_ip at the root or under identity (an IP
//     address, else left out); method: httpMethod or method, else the method of a
//     routeKey such as "GET /pets" (not "ANY"); host: domainName or host; user agent:
//     userAgent; request id: requestId, else extendedRequestId;
//   - status: status, statusCode or responseStatus (as some published templates name
//     $context.status), except under authorizer, authorize, authenticate, integration
//     or waf, whose status is not the one sent to the client;
//   - route: resourcePath (the REST template, "/pets/{petId}"), else routeKey with its
//     method dropped ("GET /pets/{id}" is "/pets/{id}"; "$connect", "$default" as is),
//     else the folded path; path: path (raw; on REST it starts with the stage).
//
// Identity, in order of precedence for client_key: apiKeyId (the gateway's key id),
// then the authorizer's principalId, then the JWT/Cognito claim sub, then the IAM
// identity (userArn, user, caller); with none of them, the fingerprint of the raw API
// key (apiKey or api_key, which holds $context.identity.apiKey). token_fp is the
// fingerprint of that raw API key; without one, of the token id claim jti, else of the
// principal (principalId, else sub), since API Gateway cannot log the bearer token
// itself. The raw API key is fingerprinted and never stored.
type apigwParser struct {
	*base
	json fastjson.Parser
}

func newAPIGatewayParser(b *base) *apigwParser { return &apigwParser{base: b} }

// apigwMaxDepth bounds how deep a template's nesting is followed.
const apigwMaxDepth = 4

// Kinds of parent object, for the few names whose meaning depends on it.
const (
	apigwParentOther = iota
	apigwParentRoot
	apigwParentClaims   // authorizer.claims
	apigwParentNotSent  // authorizer, authorize, authenticate, integration, waf: their status is not the client's
	apigwParentIdentity // identity
)

// apigwRecord is what a walk over one record found; byte slices point into the parser.
type apigwRecord struct {
	f                               jsonFields
	epoch, text, other, status      *fastjson.Value
	ip, method, host, userAgent     []byte
	requestID, extRequestID         []byte
	resourcePath, routeKey, path    []byte
	apiKeyID, apiKey, principal     []byte
	sub, jti, userArn, user, caller []byte
}

// Parse fills ev from one API Gateway JSON access-log record and keeps no reference to line.
func (p *apigwParser) Parse(ev *Event, line []byte) error {
	ev.Reset()
	root, err := parseJSONRecord(&p.json, line)
	if err != nil {
		return err
	}
	var r apigwRecord
	r.walk(root, apigwParentRoot, 1)
	if r.f.err != nil {
		return r.f.err
	}

	tv := r.epoch
	if tv == nil || isUnsetValue(tv) {
		tv = r.text
	}
	if tv == nil || isUnsetValue(tv) {
		tv = r.other
	}
	t, err := jsonTime(tv)
	if err != nil && tv == r.epoch && r.text != nil {
		if t2, err2 := jsonTime(r.text); err2 == nil { // a bad epoch, but a good CLF time
			t, err = t2, nil
		}
	}
	if err := p.setTime(ev, t, err); err != nil {
		return err
	}
	ev.Source = FormatAPIGateway

	r.f.status(p.base, ev, r.status, "status")
	if r.f.err != nil {
		return r.f.err
	}
	p.setClientIP(ev, r.ip)
	ev.Host = p.intern(r.host)
	ev.UserAgent = p.str(r.userAgent)
	ev.Path = p.str(splitPath(r.path))
	if isUnset(r.requestID) {
		r.requestID = r.extRequestID
	}
	ev.RequestID = p.str(r.requestID)

	routeMethod, route := splitRouteKey(r.routeKey)
	if !isUnset(r.resourcePath) {
		route = r.resourcePath
	}
	ev.Route = p.intern(route)
	if isUnset(r.method) && !isUnset(routeMethod) && string(routeMethod) != "ANY" {
		r.method = routeMethod
	}
	p.setMethod(ev, r.method)

	var cred credentials
	cred.consumer = firstSet(r.apiKeyID, r.principal, r.sub, r.userArn, r.user, r.caller)
	cred.apiKey = r.apiKey
	cred.credentialID = firstSet(r.jti, r.principal, r.sub)
	p.setIdentity(ev, &cred)
	p.finish(ev)
	return nil
}

// walk records the leaves of o that an Event uses.
func (r *apigwRecord) walk(o *fastjson.Object, parent, depth int) {
	o.Visit(func(k []byte, v *fastjson.Value) {
		var nb, pb [32]byte
		name, pname := k, []byte(nil)
		if i := bytes.LastIndexByte(k, '.'); i >= 0 {
			name, pname = k[i+1:], k[:i]
			if j := bytes.LastIndexByte(pname, '.'); j >= 0 {
				pname = pname[j+1:]
			}
		}
		key := apigwKeyName(nb[:0], name)
		par := parent
		if pname != nil {
			par = apigwParentKind(apigwKeyName(pb[:0], pname))
		}
		if v.Type() == fastjson.TypeObject {
			if depth < apigwMaxDepth {
				sub, _ := v.Object()
				r.walk(sub, apigwParentKind(key), depth+1)
			}
			return
		}
		r.leaf(string(key), par, v)
	})
}

// leaf records one value by its normalised name.
func (r *apigwRecord) leaf(key string, parent int, v *fastjson.Value) {
	f := &r.f
	switch key {
	case "requesttimeepoch":
		pickValue(&r.epoch, v)
	case "requesttime":
		pickValue(&r.text, v)
	case "timestamp", "time":
		pickValue(&r.other, v)
	case "status", "statuscode", "responsestatus":
		if parent != apigwParentNotSent {
			pickValue(&r.status, v)
		}
	case "ip", "sourceip":
		setFirst(&r.ip, f.text(v, "sourceIp"))
	case "clientip":
		// client_ip, as AWS's Centralized Logging with OpenSearch names sourceIp. Only at
		// the template's root or under identity: AWS WAF's httpRequest.clientIp must not
		// make a WAF record read with --format apigw look like an API Gateway one.
		if parent == apigwParentRoot || parent == apigwParentIdentity {
			setFirst(&r.ip, f.text(v, "client_ip"))
		}
	case "httpmethod", "method":
		setFirst(&r.method, f.text(v, "httpMethod"))
	case "domainname", "host":
		setFirst(&r.host, f.text(v, "domainName"))
	case "useragent":
		setFirst(&r.userAgent, f.text(v, "userAgent"))
	case "requestid":
		setFirst(&r.requestID, f.text(v, "requestId"))
	case "extendedrequestid":
		setFirst(&r.extRequestID, f.text(v, "extendedRequestId"))
	case "resourcepath":
		setFirst(&r.resourcePath, f.text(v, "resourcePath"))
	case "routekey":
		setFirst(&r.routeKey, f.text(v, "routeKey"))
	case "path":
		setFirst(&r.path, f.text(v, "path"))
	case "apikeyid":
		setFirst(&r.apiKeyID, f.text(v, "apiKeyId"))
	case "apikey":
		setFirst(&r.apiKey, f.text(v, "apiKey"))
	case "principalid":
		setFirst(&r.principal, f.text(v, "principalId"))
	case "sub":
		if parent == apigwParentClaims || parent == apigwParentRoot {
			setFirst(&r.sub, f.text(v, "claims.sub"))
		}
	case "jti":
		if parent == apigwParentClaims || parent == apigwParentRoot {
			setFirst(&r.jti, f.text(v, "claims.jti"))
		}
	case "userarn":
		setFirst(&r.userArn, f.text(v, "identity.userArn"))
	case "user":
		if parent == apigwParentIdentity || parent == apigwParentRoot {
			setFirst(&r.user, f.text(v, "identity.user"))
		}
	case "caller":
		if parent == apigwParentIdentity || parent == apigwParentRoot {
			setFirst(&r.caller, f.text(v, "identity.caller"))
		}
	}
}

// apigwKeyName appends name lower-cased without '_', '-' and a leading '$', or returns
// nil for names too long to be one the parser knows.
func apigwKeyName(dst, name []byte) []byte {
	if len(name) > cap(dst) {
		return nil
	}
	for _, c := range name {
		switch {
		case c == '_' || c == '-' || c == '$':
		case 'A' <= c && c <= 'Z':
			dst = append(dst, c+'a'-'A')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

func apigwParentKind(name []byte) int {
	switch string(name) {
	case "claims":
		return apigwParentClaims
	case "authorizer", "authorize", "authenticate", "integration", "waf":
		return apigwParentNotSent
	case "identity":
		return apigwParentIdentity
	case "context", "requestcontext":
		return apigwParentRoot // "$context.status", {"context": {...}}: the template's own root
	}
	return apigwParentOther
}

// splitRouteKey splits an HTTP API route key ("GET /pets/{id}") into its method and
// route template; keys without a method ("$default", "$connect") are all route.
func splitRouteKey(k []byte) (method, route []byte) {
	if isUnset(k) {
		return nil, nil
	}
	if i := bytes.IndexByte(k, ' '); i > 0 {
		return k[:i], bytes.TrimSpace(k[i+1:])
	}
	return nil, k
}

func isUnsetValue(v *fastjson.Value) bool {
	switch v.Type() {
	case fastjson.TypeNull:
		return true
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return isUnset(bytes.TrimSpace(b))
	}
	return false
}

func setFirst(dst *[]byte, v []byte) {
	if isUnset(*dst) {
		*dst = v
	}
}

func firstSet(vs ...[]byte) []byte {
	for _, v := range vs {
		if !isUnset(v) {
			return v
		}
	}
	return nil
}

package ingest

import "bytes"

// autoParser recognises the format of each record (--format auto) and hands it to that
// format's parser. All of them share one base, so strings, interned values and the
// token fingerprinter are the same whichever format a record is in.
//
// Text records: one starting with '[' (or Emissary's "ACCESS [") is Envoy's default text
// format; one starting with an address or host name (or a list of them) followed by
// " - " is nginx combined. JSON records are
// recognised by their keys, found in one pass over the raw bytes without parsing, by
// these rules in order of precedence. AWS WAF, Cloudflare and Kong, whose schemas are
// fixed, are decided as soon as their keys are seen; API Gateway, Envoy and nginx, whose
// keys are the operator's choice, once every key is read.
//
//	awswaf      "webaclId", or "httpRequest" with "terminatingRuleId"
//	cloudflare  "EdgeStartTimestamp", "ClientRequestHost" or "RayID"
//	kong        "started_at" with a "request" object
//	apigw       "requestId" with "requestTime", "requestTimeEpoch", "routeKey",
//	            "resourcePath", or "httpMethod" and "ip"; or the snake_case spelling of
//	            AWS's Centralized Logging with OpenSearch: "request_id" with
//	            "request_time_epoch", "route_key", "resource_path" or "http_method"
//	            (not "request_time", which nginx JSON logs carry as a duration)
//	envoy       "start_time", "response_code", "response_flags", "downstream_remote_address",
//	            "downstream_direct_remote_address", "x_envoy_original_path", "route_name",
//	            "upstream_cluster" or "upstream_host"
//	nginx       "remote_addr", "time_local", "time_iso8601", "msec", "request_uri",
//	            "http_user_agent", "http_x_forwarded_for", "http_host" or "body_bytes_sent"
//
// Envoy and nginx keys match after the normalisation their parsers apply ("startTime"
// is "start_time"). A key only counts in key position (followed by a colon), so a
// client cannot steer recognition by sending, say, a user agent of "webaclId". A JSON
// array is not one record: one of Kong records (an http-log batch) goes to the Kong
// parser, which rejects it saying so; anything else unrecognised is rejected with
// ReasonUnknownFormat.
type autoParser struct {
	*base
	awswaf, apigw, kong, cloudflare, envoy, nginx Parser
}

func newAutoParser(b *base) *autoParser {
	return &autoParser{
		base:       b,
		awswaf:     newAWSWAFParser(b),
		apigw:      newAPIGatewayParser(b),
		kong:       newKongParser(b),
		cloudflare: newCloudflareParser(b),
		envoy:      newEnvoyParser(b),
		nginx:      newNginxParser(b),
	}
}

// Parse recognises the format of line and parses it with that format's parser.
func (p *autoParser) Parse(ev *Event, line []byte) error {
	var sub Parser
	switch recogniseFormat(line) {
	case FormatAWSWAF:
		sub = p.awswaf
	case FormatCloudflare:
		sub = p.cloudflare
	case FormatKong:
		sub = p.kong
	case FormatAPIGateway:
		sub = p.apigw
	case FormatEnvoy:
		sub = p.envoy
	case FormatNginx:
		sub = p.nginx
	default:
		return errUnknownFormat
	}
	return sub.Parse(ev, line)
}

var errUnknownFormat = parseErrorf(ReasonUnknownFormat, "record matches no known format")

// recogniseFormat returns the format line is in, or "" when it matches none.
func recogniseFormat(line []byte) string {
	line = trimRecord(line)
	if len(line) == 0 {
		return ""
	}
	switch line[0] {
	case '{':
		return sniffJSON(line)
	case '[':
		if rest := bytes.TrimLeft(line[1:], " \t"); len(rest) > 0 && (rest[0] == '{' || rest[0] == '[') {
			// A JSON array, not Envoy's "[START_TIME]". Only Kong documents arrays (http-log
			// batches); its parser rejects them with a message that says to split them.
			if sniffJSON(line) == FormatKong {
				return FormatKong
			}
			return ""
		}
		return FormatEnvoy
	case 'A':
		if bytes.HasPrefix(line, emissaryPrefix) && bytes.HasPrefix(line[len(emissaryPrefix):], []byte{'['}) {
			return FormatEnvoy
		}
	}
	if i := bytes.Index(line, []byte(" [")); i > 0 {
		if remote, _, ok := splitUser(line[:i]); ok {
			if _, _, ok := splitRemote(remote); ok {
				return FormatNginx
			}
		}
	}
	return ""
}

// Keys that tell the JSON formats apart (see autoParser).
const (
	keyWebACLID = 1 << iota
	keyHTTPRequest
	keyTerminatingRuleID
	keyStartedAt
	keyRequestObject // "request" whose value is an object
	keyRequestID     // "requestId"
	keyAPIGWRoute    // requestTime, requestTimeEpoch, routeKey, resourcePath
	keyHTTPMethod
	keyIP
	keyEnvoy // Istio's and Envoy's command-operator names
	keyNginx // nginx variable names
)

// sniffJSON recognises a JSON record by its keys: every `"name"` followed (after
// optional blanks) by a colon. A quote inside a JSON string is always escaped, so only
// keys qualify.
func sniffJSON(line []byte) string {
	var seen uint32
	var norm [64]byte
	for off := 0; ; {
		i := bytes.IndexByte(line[off:], ':')
		if i < 0 {
			break
		}
		colon := off + i
		off = colon + 1
		q := colon - 1
		for q >= 0 && (line[q] == ' ' || line[q] == '\t') {
			q--
		}
		if q < 1 || line[q] != '"' || escapedAt(line, q) {
			continue
		}
		open := bytes.LastIndexByte(line[:q], '"')
		if open < 0 {
			continue
		}
		key := line[open+1 : q]
		switch string(key) {
		case "webaclId":
			return FormatAWSWAF
		case "EdgeStartTimestamp", "ClientRequestHost", "RayID":
			return FormatCloudflare
		case "httpRequest":
			seen |= keyHTTPRequest
		case "terminatingRuleId":
			seen |= keyTerminatingRuleID
		case "started_at":
			seen |= keyStartedAt
		case "request":
			if v := bytes.TrimLeft(line[off:], " \t\r\n"); len(v) > 0 && v[0] == '{' {
				seen |= keyRequestObject
			}
		case "requestId", "request_id":
			seen |= keyRequestID
		case "requestTime", "requestTimeEpoch", "routeKey", "resourcePath",
			"request_time_epoch", "route_key", "resource_path", "http_method":
			seen |= keyAPIGWRoute
		case "httpMethod":
			seen |= keyHTTPMethod
		case "ip":
			seen |= keyIP
		default:
			if needsNorm(key) {
				key = normJSONKey(norm[:0], key)
			}
			seen |= accessLogKey(key)
		}
		const waf, kong = keyHTTPRequest | keyTerminatingRuleID, keyStartedAt | keyRequestObject
		if seen&waf == waf {
			return FormatAWSWAF
		}
		if seen&kong == kong {
			return FormatKong
		}
	}
	switch {
	case seen&keyRequestID != 0 && (seen&keyAPIGWRoute != 0 || seen&(keyHTTPMethod|keyIP) == keyHTTPMethod|keyIP):
		return FormatAPIGateway
	case seen&keyEnvoy != 0:
		return FormatEnvoy
	case seen&keyNginx != 0:
		return FormatNginx
	}
	return ""
}

// accessLogKey returns keyEnvoy or keyNginx for a normalised key that only that
// format's records carry, else 0.
func accessLogKey(k []byte) uint32 {
	switch string(k) {
	case "start_time", "response_code", "response_flags", "downstream_remote_address",
		"downstream_direct_remote_address", "x_envoy_original_path", "route_name",
		"upstream_cluster", "upstream_host":
		return keyEnvoy
	case "remote_addr", "time_local", "time_iso8601", "msec", "request_uri",
		"http_user_agent", "http_x_forwarded_for", "http_host", "body_bytes_sent":
		return keyNginx
	}
	return 0
}

// escapedAt reports whether the byte at i is preceded by an odd run of backslashes.
func escapedAt(b []byte, i int) bool {
	n := 0
	for j := i - 1; j >= 0 && b[j] == '\\'; j-- {
		n++
	}
	return n%2 == 1
}

// needsNorm reports whether normalising k (see normJSONKey) could change it.
func needsNorm(k []byte) bool {
	for _, c := range k {
		if c >= 'A' && c <= 'Z' || c == '-' || c == '.' || c == ' ' || c == ':' {
			return true
		}
	}
	return false
}

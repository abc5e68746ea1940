package synth

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/gatewatch/gatewatch/ingest"
)

// Formats lists the formats AppendRecord writes. API Gateway is missing: its access
// logs cannot carry the bearer token, so most attacks would be invisible in it.
var Formats = []string{ingest.FormatAWSWAF, ingest.FormatCloudflare, ingest.FormatKong, ingest.FormatEnvoy, ingest.FormatNginx}

// AppendRecord appends r as one record of format (no trailing newline), the way that
// vendor documents it, with the credentials where the format carries them.
func AppendRecord(dst []byte, format string, r *Request) ([]byte, error) {
	switch format {
	case ingest.FormatAWSWAF:
		return appendAWSWAF(dst, r), nil
	case ingest.FormatCloudflare:
		return appendCloudflare(dst, r), nil
	case ingest.FormatKong:
		return appendKong(dst, r), nil
	case ingest.FormatEnvoy:
		return appendEnvoy(dst, r), nil
	case ingest.FormatNginx:
		return appendNginx(dst, r), nil
	}
	return dst, fmt.Errorf("synth: cannot write format %q (want one of %s)", format, strings.Join(Formats, ", "))
}

// CanWrite reports whether AppendRecord supports format.
func CanWrite(format string) bool { return slices.Contains(Formats, format) }

func str(dst []byte, key, v string) []byte {
	dst = append(dst, '"')
	dst = append(dst, key...)
	dst = append(dst, `":`...)
	return ingest.AppendJSONString(dst, v)
}

func num(dst []byte, key string, v int64) []byte {
	dst = append(dst, '"')
	dst = append(dst, key...)
	dst = append(dst, `":`...)
	return strconv.AppendInt(dst, v, 10)
}

// bearer is the Authorization header of r: empty for a request without a token.
func bearer(r *Request) string {
	if r.Token == "" {
		return ""
	}
	return "Bearer " + r.Token
}

func uri(r *Request) string {
	if r.Query == "" {
		return r.Path
	}
	return r.Path + "?" + r.Query
}

// appendAWSWAF writes an AWS WAF v2 web ACL log record (formatVersion 1), behind an
// Application Load Balancer, so it carries JA3/JA4 fingerprints.
func appendAWSWAF(dst []byte, r *Request) []byte {
	dst = append(dst, '{')
	dst = num(dst, "timestamp", r.Time.UnixMilli())
	dst = append(dst, `,"formatVersion":1,"webaclId":"arn:aws:wafv2:eu-west-1:111122223333:regional/webacl/api-prod/0c1f6a3e-8f2b-4c8e-9c1d-2f5b7e6a9d10",`...)
	dst = str(dst, "terminatingRuleId", r.RuleID)
	ruleType := "REGULAR"
	if r.Action == "BLOCK" {
		ruleType = "MANAGED_RULE_GROUP"
	}
	dst = append(dst, ',')
	dst = str(dst, "terminatingRuleType", ruleType)
	dst = append(dst, ',')
	dst = str(dst, "action", r.Action)
	dst = append(dst, `,"terminatingRuleMatchDetails":[],"httpSourceName":"ALB","httpSourceId":"111122223333-app/api-prod-alb/5d3c8b9a7e6f4d21","ruleGroupList":[],"rateBasedRuleList":[],"nonTerminatingMatchingRules":[],"requestHeadersInserted":null,`...)
	if r.Action == "BLOCK" || r.Status == 0 {
		dst = append(dst, `"responseCodeSent":null,`...)
	} else {
		dst = num(dst, "responseCodeSent", int64(r.Status))
		dst = append(dst, ',')
	}
	dst = append(dst, `"httpRequest":{`...)
	dst = str(dst, "clientIp", r.ClientIP)
	dst = append(dst, ',')
	dst = str(dst, "country", r.Country)
	dst = append(dst, `,"headers":[`...)
	headers := [][2]string{
		{"Host", r.Host}, {"User-Agent", r.UserAgent}, {"Accept", "application/json"},
		{"Accept-Encoding", "gzip, deflate, br"}, {"Authorization", bearer(r)},
		{"x-api-key", r.APIKey}, {"X-Device-Id", r.DeviceID}, {"X-Amzn-Trace-Id", "Root=1-" + r.RequestID[4:12] + "-" + r.RequestID[4:]},
	}
	for i, h := range headers {
		if h[1] == "" {
			continue
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '{')
		dst = str(dst, "name", h[0])
		dst = append(dst, ',')
		dst = str(dst, "value", h[1])
		dst = append(dst, '}')
	}
	dst = append(dst, "],"...)
	dst = str(dst, "uri", r.Path)
	dst = append(dst, ',')
	dst = str(dst, "args", r.Query)
	dst = append(dst, `,"httpVersion":"HTTP/1.1",`...)
	dst = str(dst, "httpMethod", r.Method)
	dst = append(dst, ',')
	dst = str(dst, "requestId", r.RequestID)
	dst = append(dst, `},"labels":[{"name":"awswaf:managed:aws:core-rule-set:NoUserAgent_Header"}],`...)
	dst = str(dst, "ja3Fingerprint", "e7d705a3286e19ea42f587b344ee6865")
	return append(dst, '}')
}

// appendCloudflare writes a Logpush http_requests record with the default unixnano
// timestamps and the credential headers captured as custom RequestHeaders.
func appendCloudflare(dst []byte, r *Request) []byte {
	dst = append(dst, `{"CacheCacheStatus":"dynamic","ClientASN":64500,`...)
	dst = str(dst, "ClientCountry", strings.ToLower(r.Country))
	dst = append(dst, `,"ClientDeviceType":"desktop",`...)
	dst = str(dst, "ClientIP", r.ClientIP)
	dst = append(dst, ',')
	dst = str(dst, "ClientRequestHost", r.Host)
	dst = append(dst, ',')
	dst = str(dst, "ClientRequestMethod", r.Method)
	dst = append(dst, ',')
	dst = str(dst, "ClientRequestPath", r.Path)
	dst = append(dst, `,"ClientRequestProtocol":"HTTP/2",`...)
	dst = str(dst, "ClientRequestURI", uri(r))
	dst = append(dst, ',')
	dst = str(dst, "ClientRequestUserAgent", r.UserAgent)
	dst = append(dst, ',')
	dst = num(dst, "EdgeEndTimestamp", r.Time.UnixNano()+12_000_000)
	dst = append(dst, ',')
	dst = num(dst, "EdgeResponseStatus", int64(r.Status))
	dst = append(dst, ',')
	dst = num(dst, "EdgeStartTimestamp", r.Time.UnixNano())
	dst = append(dst, ',')
	origin := int64(r.Status)
	action := "unknown"
	if r.Action == "BLOCK" {
		origin, action = 0, "block"
	}
	dst = num(dst, "OriginResponseStatus", origin)
	dst = append(dst, ',')
	dst = str(dst, "RayID", r.RequestID[4:20])
	dst = append(dst, `,"RequestHeaders":{`...)
	dst = str(dst, "authorization", bearer(r))
	dst = append(dst, ',')
	dst = str(dst, "x-api-key", r.APIKey)
	dst = append(dst, ',')
	dst = str(dst, "x-device-id", r.DeviceID)
	dst = append(dst, "},"...)
	dst = str(dst, "SecurityAction", action)
	dst = append(dst, ',')
	rule := ""
	if r.Action == "BLOCK" {
		rule = "efb7b8c949ac4650a09736fc376e9aee"
	}
	dst = str(dst, "SecurityRuleID", rule)
	return append(dst, `,"WAFAttackScore":80,"ZoneName":"example.com"}`...)
}

// appendKong writes a Kong file-log record: the gateway redacts the Authorization
// header and identifies the client by consumer and credential.
func appendKong(dst []byte, r *Request) []byte {
	dst = append(dst, `{"request":{`...)
	dst = str(dst, "id", r.RequestID)
	dst = append(dst, ',')
	dst = str(dst, "method", r.Method)
	dst = append(dst, ',')
	dst = str(dst, "uri", uri(r))
	dst = append(dst, ',')
	dst = str(dst, "url", "https://"+r.Host+uri(r))
	dst = append(dst, `,"size":412,"querystring":{},"headers":{`...)
	dst = str(dst, "host", r.Host)
	dst = append(dst, ',')
	dst = str(dst, "user-agent", r.UserAgent)
	dst = append(dst, `,"authorization":"REDACTED",`...)
	dst = str(dst, "x-device-id", r.DeviceID)
	dst = append(dst, `,"accept":"application/json"}},"response":{`...)
	dst = num(dst, "status", int64(r.Status))
	dst = append(dst, `,"size":934,"headers":{"content-type":"application/json"}},"route":{"id":"8b0e3c1a-2f4d-4e6b-9a7c-1d2e3f4a5b6c",`...)
	dst = str(dst, "name", strings.ToLower(r.Method)+"-"+strings.NewReplacer("/", "-", "{", "", "}", "").Replace(strings.TrimPrefix(r.Route, "/")))
	dst = append(dst, `,"paths":["/v1"],"protocols":["https"]},"service":{"host":"api.internal","name":"api","port":8080,"protocol":"http"},`...)
	if r.Consumer != "" { // a request that did not authenticate has no consumer
		dst = append(dst, `"consumer":{`...)
		dst = str(dst, "id", r.Consumer)
		dst = append(dst, ',')
		dst = str(dst, "username", r.Consumer)
		dst = append(dst, "},"...)
	}
	if len(r.Token) >= 27 {
		dst = append(dst, `"authenticated_entity":{`...)
		dst = str(dst, "id", "cred-"+r.Token[3:27])
		dst = append(dst, "},"...)
	}
	dst = str(dst, "client_ip", r.ClientIP)
	dst = append(dst, ',')
	dst = num(dst, "started_at", r.Time.UnixMilli())
	return append(dst, `,"latencies":{"request":31,"kong":2,"proxy":28},"upstream_uri":"/v1","workspace":"default"}`...)
}

// appendEnvoy writes an Envoy JSON access log record with Istio's keys plus the
// credential headers an operator adds with %REQ(...)%.
func appendEnvoy(dst []byte, r *Request) []byte {
	dst = append(dst, '{')
	dst = str(dst, "authority", r.Host)
	dst = append(dst, `,"bytes_received":0,"bytes_sent":934,`...)
	dst = str(dst, "downstream_remote_address", r.ClientIP+":51234")
	dst = append(dst, `,"duration":12,`...)
	dst = str(dst, "method", r.Method)
	dst = append(dst, ',')
	dst = str(dst, "path", uri(r))
	dst = append(dst, `,"protocol":"HTTP/2",`...)
	dst = str(dst, "request_id", r.RequestID)
	dst = append(dst, ',')
	dst = num(dst, "response_code", int64(r.Status))
	dst = append(dst, `,"response_flags":"-","route_name":"-",`...)
	dst = str(dst, "start_time", r.Time.UTC().Format(ingest.TimeLayout))
	dst = append(dst, `,"upstream_cluster":"outbound|8080||api.default.svc.cluster.local",`...)
	dst = str(dst, "user_agent", r.UserAgent)
	dst = append(dst, ',')
	dst = str(dst, "authorization", bearer(r))
	dst = append(dst, ',')
	dst = str(dst, "x_api_key", r.APIKey)
	dst = append(dst, ',')
	dst = str(dst, "x_device_id", r.DeviceID)
	return append(dst, `,"x_forwarded_for":null}`...)
}

// appendNginx writes a JSON log_format record (escape=json) with the usual variables
// and the credential headers.
func appendNginx(dst []byte, r *Request) []byte {
	dst = append(dst, '{')
	dst = str(dst, "time_iso8601", r.Time.UTC().Format("2006-01-02T15:04:05+00:00"))
	dst = append(dst, ',')
	dst = str(dst, "msec", fmt.Sprintf("%d.%03d", r.Time.Unix(), r.Time.Nanosecond()/1e6))
	dst = append(dst, ',')
	dst = str(dst, "remote_addr", r.ClientIP)
	dst = append(dst, ',')
	dst = str(dst, "request", r.Method+" "+uri(r)+" HTTP/1.1")
	dst = append(dst, ',')
	dst = str(dst, "status", strconv.Itoa(r.Status))
	dst = append(dst, `,"body_bytes_sent":"934",`...)
	dst = str(dst, "host", r.Host)
	dst = append(dst, ',')
	dst = str(dst, "http_user_agent", r.UserAgent)
	dst = append(dst, ',')
	dst = str(dst, "http_authorization", bearer(r))
	dst = append(dst, ',')
	dst = str(dst, "http_x_api_key", r.APIKey)
	dst = append(dst, ',')
	dst = str(dst, "http_x_device_id", r.DeviceID)
	dst = append(dst, ',')
	dst = str(dst, "request_id", r.RequestID[4:])
	return append(dst, `,"request_time":"0.012"}`...)
}

package ingest

import (
	"strings"
	"testing"
)

func TestAPIGatewayParse(t *testing.T) {
	const clf = `"requestTime":"14/Mar/2025:09:26:53 +0000"`
	// ip and req complete a record that a case does not otherwise give a client or a
	// request: every accepted record has both.
	const ip, req = `"ip":"203.0.113.50"`, `"status":"200"`
	cases := []vendorCase{
		{name: "documented REST format", line: `{"requestId":"r-1","ip":"198.51.100.7","caller":"-","user":"-",` + clf +
			`,"httpMethod":"GET","resourcePath":"/pets/{petId}","status":"200","protocol":"HTTP/1.1","responseLength":"49"}`,
			want: map[string]string{"time": "2025-03-14T09:26:53.000Z", "source": "apigw", "client_ip": "198.51.100.7", "method": "GET",
				"route": "/pets/{petId}", "path": "", "status": "200", "request_id": "r-1", "client_key": "", "token_fp": "", "device": "", "host": ""}},
		{name: "epoch milliseconds win over CLF", line: `{` + clf + `,"requestTimeEpoch":"1741944413589",` + ip + `,` + req + `}`,
			want: map[string]string{"time": "2025-03-14T09:26:53.589Z"}},
		{name: "epoch seconds", line: `{"requestTimeEpoch":"1741944413",` + ip + `,` + req + `}`, want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "epoch unset falls back to CLF", line: `{"requestTimeEpoch":"-",` + clf + `,` + ip + `,` + req + `}`, want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "bad epoch falls back to CLF", line: `{"requestTimeEpoch":"soon",` + clf + `,` + ip + `,` + req + `}`, want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "timestamp key", line: `{"timestamp":"2025-03-14T09:26:53.250Z",` + ip + `,` + req + `}`, want: map[string]string{"time": "2025-03-14T09:26:53.250Z"}},
		{name: "unquoted epoch", line: `{"requestTimeEpoch":1741944413589,"status":404,` + ip + `}`, want: map[string]string{"time": "2025-03-14T09:26:53.589Z", "status": "404"}},
		{name: "CLF offset", line: `{"requestTime":"14/Mar/2025:04:26:53 -0500",` + ip + `,` + req + `}`, want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "routeKey drops its method", line: `{` + clf + `,` + ip + `,"routeKey":"GET /pets/{id}","path":"/pets/7"}`,
			want: map[string]string{"route": "/pets/{id}", "method": "GET", "path": "/pets/7"}},
		{name: "routeKey ANY gives no method", line: `{` + clf + `,` + ip + `,` + req + `,"routeKey":"ANY /{proxy+}"}`, want: map[string]string{"route": "/{proxy+}", "method": ""}},
		{name: "httpMethod wins over routeKey", line: `{` + clf + `,` + ip + `,"httpMethod":"HEAD","routeKey":"GET /x"}`, want: map[string]string{"method": "HEAD"}},
		{name: "$default kept", line: `{` + clf + `,` + ip + `,"routeKey":"$default","path":"/a/1"}`, want: map[string]string{"route": "$default", "path": "/a/1"}},
		{name: "$connect kept", line: `{` + clf + `,` + ip + `,` + req + `,"routeKey":"$connect","eventType":"CONNECT"}`, want: map[string]string{"route": "$connect", "method": ""}},
		{name: "resourcePath wins over routeKey", line: `{` + clf + `,` + ip + `,"resourcePath":"/a/{b}","routeKey":"GET /x"}`, want: map[string]string{"route": "/a/{b}"}},
		{name: "no template: folded path", line: `{` + clf + `,` + ip + `,"resourcePath":"-","path":"/prod/orders/42?x=1"}`,
			want: map[string]string{"route": "/prod/orders/{id}", "path": "/prod/orders/42"}},
		{name: "apiKeyId is the client key, the raw key the token", line: `{` + clf + `,` + req + `,"apiKeyId":"k1","apiKey":"` + vendorTestAPIKey + `","principalId":"p1"}`,
			want: map[string]string{"client_key": "k1", "token_fp": vendorFP(t, vendorTestAPIKey)}},
		{name: "principal before claims.sub", line: `{` + clf + `,` + req + `,"authorizer":{"principalId":"p1","claims":{"sub":"s1"}}}`,
			want: map[string]string{"client_key": "p1", "token_fp": vendorFP(t, "p1")}},
		{name: "claims.sub flat", line: `{` + clf + `,` + req + `,"authorizer.claims.sub":"s1"}`, want: map[string]string{"client_key": "s1", "token_fp": vendorFP(t, "s1")}},
		{name: "jti is the token", line: `{` + clf + `,` + req + `,"authorizer.claims.sub":"s1","authorizer.claims.jti":"j1"}`,
			want: map[string]string{"client_key": "s1", "token_fp": vendorFP(t, "j1")}},
		{name: "sub outside claims is not an identity", line: `{` + clf + `,` + ip + `,` + req + `,"error":{"sub":"s1"}}`, want: map[string]string{"client_key": ""}},
		{name: "IAM identity", line: `{` + clf + `,` + req + `,"identity":{"user":"AIDAEXAMPLE","caller":"AROAEXAMPLE:s"}}`, want: map[string]string{"client_key": "AIDAEXAMPLE", "token_fp": ""}},
		{name: "raw API key alone", line: `{` + clf + `,` + req + `,"identity":{"apiKey":"` + vendorTestAPIKey + `"}}`,
			want: map[string]string{"client_key": vendorFP(t, vendorTestAPIKey), "token_fp": vendorFP(t, vendorTestAPIKey)}},
		{name: "nested template", line: `{"request":{"requestId":"r-2",` + clf + `},"client":{"sourceIp":"192.0.2.1","userAgent":"ua/1"},` +
			`"http":{"httpMethod":"POST","path":"/prod/x"},"api":{"domainName":"api.example.com"},"response":{"status":"201"}}`,
			want: map[string]string{"request_id": "r-2", "client_ip": "192.0.2.1", "user_agent": "ua/1", "method": "POST", "path": "/prod/x",
				"host": "api.example.com", "status": "201", "device": string(appendDeviceHash(nil, "ua/1", nil))}},
		{name: "responseStatus names $context.status", line: `{"requestTimeEpoch":1741944413589,"responseStatus":"403",` + ip + `}`,
			want: map[string]string{"status": "403"}},
		{name: "an integration's responseStatus is not the client's", line: `{"requestTimeEpoch":1741944413589,"integration":{"responseStatus":"500"},"status":"200",` + ip + `}`,
			want: map[string]string{"status": "200"}},
		{name: "snake case keys", line: `{"request_id":"r-3","source_ip":"192.0.2.2","request_time":"14/Mar/2025:09:26:53 +0000","http_method":"GET","status_code":"204"}`,
			want: map[string]string{"request_id": "r-3", "client_ip": "192.0.2.2", "method": "GET", "status": "204"}},
		{name: "$context keys", line: `{"$context.requestTime":"14/Mar/2025:09:26:53 +0000","$context.status":"500","$context.identity.sourceIp":"192.0.2.3"}`,
			want: map[string]string{"status": "500", "client_ip": "192.0.2.3"}},
		{name: "authorizer and integration status are not the client's", line: `{` + clf +
			`,` + ip + `,"authorizer":{"status":"403"},"integration.status":"502","integrationStatus":"502","status":"200"}`, want: map[string]string{"status": "200"}},
		{name: "extendedRequestId when no requestId", line: `{` + clf + `,` + ip + `,` + req + `,"requestId":"-","extendedRequestId":"e-1"}`, want: map[string]string{"request_id": "e-1"}},
		{name: "deeper than four levels is ignored", line: `{` + clf + `,` + ip + `,"httpMethod":"GET","a":{"b":{"c":{"d":{"status":"500"}}}}}`, want: map[string]string{"status": "0"}},
		{name: "status unset", line: `{` + clf + `,` + ip + `,"httpMethod":"GET","status":"-"}`, want: map[string]string{"status": "0"}},
		{name: "Centralized Logging with OpenSearch (snake_case)", line: `{"request_id":"8b4c2f70-1d2e-4f3a-9b8c-7d6e5f4a3b2c","client_ip":"198.51.100.23",` +
			`"request_time":"14/Mar/2025:09:26:53 +0000","request_time_epoch":"1741944413589","http_method":"POST","resource_path":"/orders/{id}",` +
			`"status":"201","protocol":"HTTP/1.1","response_length":"312","api_key_id":"k7","user_agent":"okhttp/4.12.0","domain_name":"api.shop.example"}`,
			want: map[string]string{"time": "2025-03-14T09:26:53.589Z", "request_id": "8b4c2f70-1d2e-4f3a-9b8c-7d6e5f4a3b2c", "client_ip": "198.51.100.23",
				"method": "POST", "route": "/orders/{id}", "status": "201", "client_key": "k7", "user_agent": "okhttp/4.12.0", "host": "api.shop.example"}},
		{name: "client_ip under identity", line: `{` + clf + `,` + req + `,"identity":{"client_ip":"198.51.100.24"}}`, want: map[string]string{"client_ip": "198.51.100.24"}},
		{name: "a token in the IP field is left out", line: `{` + clf + `,` + req + `,"apiKeyId":"k1","ip":"Bearer ` + vendorTestToken + `"}`,
			want: map[string]string{"client_ip": "", "client_key": "k1"}},
		{name: "test invocation source", line: `{` + clf + `,` + req + `,"apiKeyId":"k1","ip":"test-invoke-source-ip"}`, want: map[string]string{"client_ip": ""}},
		{name: "a 48-character method is left out", line: `{` + clf + `,` + ip + `,` + req + `,"httpMethod":"` + strings.Repeat("GET", 16) + `"}`,
			want: map[string]string{"method": ""}},
		// AWS WAF read as API Gateway (a wrong --format): its httpRequest.clientIp is no
		// API Gateway field, so the record has no client and is rejected, not an empty event.
		{name: "AWS WAF is not API Gateway", line: `{"timestamp":1741944413589,"formatVersion":1,"webaclId":"arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/shop/1",` +
			`"terminatingRuleId":"Default_Action","action":"ALLOW","httpRequest":{"clientIp":"198.51.100.7","country":"DE","uri":"/v1/items/42","httpMethod":"GET","requestId":"rid-1"}}`,
			reason: ReasonMissingField},
		{name: "no client", line: `{` + clf + `,` + req + `,"httpMethod":"GET"}`, reason: ReasonMissingField},
		{name: "no request", line: `{` + clf + `,` + ip + `,"requestId":"r"}`, reason: ReasonMissingField},
		{name: "no time", line: `{"requestId":"r","status":"200"}`, reason: ReasonMissingField},
		{name: "time unset", line: `{"requestTime":"-","requestTimeEpoch":"-"}`, reason: ReasonMissingField},
		{name: "bad CLF", line: `{"requestTime":"14/Mar/2025 09:26:53"}`, reason: ReasonBadTimestamp},
		{name: "status not a number", line: `{` + clf + `,"status":"OK"}`, reason: ReasonBadValue},
		{name: "status too large", line: `{` + clf + `,"status":"2000"}`, reason: ReasonBadValue},
		{name: "ip not text", line: `{` + clf + `,"ip":true}`, reason: ReasonBadValue},
		{name: "API key not text", line: `{` + clf + `,"apiKey":["` + vendorTestAPIKey + `"]}`, reason: ReasonBadValue},
		{name: "CLF record", line: `192.0.2.20 - - [14/Mar/2025:09:27:23 +0000] "GET /prod HTTP/1.1" 200 412 r`, reason: ReasonInvalidJSON},
		{name: "array", line: `[{"requestTime":"14/Mar/2025:09:26:53 +0000"}]`, reason: ReasonInvalidJSON},
	}
	runVendorCases(t, FormatAPIGateway, testParserOptions(t), cases)
}

func TestAPIGatewayAllocs(t *testing.T) { checkVendorAllocs(t, FormatAPIGateway) }

func FuzzParseAPIGateway(f *testing.F) { fuzzVendorParser(f, FormatAPIGateway) }

func BenchmarkParseAPIGateway(b *testing.B) { benchVendorParser(b, FormatAPIGateway) }

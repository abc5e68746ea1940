package ingest

import "testing"

func TestAPIGatewayParse(t *testing.T) {
	const clf = `"requestTime":"14/Mar/2025:09:26:53 +0000"`
	cases := []vendorCase{
		{name: "documented REST format", line: `{"requestId":"r-1","ip":"198.51.100.7","caller":"-","user":"-",` + clf +
			`,"httpMethod":"GET","resourcePath":"/pets/{petId}","status":"200","protocol":"HTTP/1.1","responseLength":"49"}`,
			want: map[string]string{"time": "2025-03-14T09:26:53.000Z", "source": "apigw", "client_ip": "198.51.100.7", "method": "GET",
				"route": "/pets/{petId}", "path": "", "status": "200", "request_id": "r-1", "client_key": "", "token_fp": "", "device": "", "host": ""}},
		{name: "epoch milliseconds win over CLF", line: `{` + clf + `,"requestTimeEpoch":"1741944413589"}`,
			want: map[string]string{"time": "2025-03-14T09:26:53.589Z"}},
		{name: "epoch seconds", line: `{"requestTimeEpoch":"1741944413"}`, want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "epoch unset falls back to CLF", line: `{"requestTimeEpoch":"-",` + clf + `}`, want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "bad epoch falls back to CLF", line: `{"requestTimeEpoch":"soon",` + clf + `}`, want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "timestamp key", line: `{"timestamp":"2025-03-14T09:26:53.250Z"}`, want: map[string]string{"time": "2025-03-14T09:26:53.250Z"}},
		{name: "unquoted epoch", line: `{"requestTimeEpoch":1741944413589,"status":404}`, want: map[string]string{"time": "2025-03-14T09:26:53.589Z", "status": "404"}},
		{name: "CLF offset", line: `{"requestTime":"14/Mar/2025:04:26:53 -0500"}`, want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "routeKey drops its method", line: `{` + clf + `,"routeKey":"GET /pets/{id}","path":"/pets/7"}`,
			want: map[string]string{"route": "/pets/{id}", "method": "GET", "path": "/pets/7"}},
		{name: "routeKey ANY gives no method", line: `{` + clf + `,"routeKey":"ANY /{proxy+}"}`, want: map[string]string{"route": "/{proxy+}", "method": ""}},
		{name: "httpMethod wins over routeKey", line: `{` + clf + `,"httpMethod":"HEAD","routeKey":"GET /x"}`, want: map[string]string{"method": "HEAD"}},
		{name: "$default kept", line: `{` + clf + `,"routeKey":"$default","path":"/a/1"}`, want: map[string]string{"route": "$default", "path": "/a/1"}},
		{name: "$connect kept", line: `{` + clf + `,"routeKey":"$connect","eventType":"CONNECT"}`, want: map[string]string{"route": "$connect", "method": ""}},
		{name: "resourcePath wins over routeKey", line: `{` + clf + `,"resourcePath":"/a/{b}","routeKey":"GET /x"}`, want: map[string]string{"route": "/a/{b}"}},
		{name: "no template: folded path", line: `{` + clf + `,"resourcePath":"-","path":"/prod/orders/42?x=1"}`,
			want: map[string]string{"route": "/prod/orders/{id}", "path": "/prod/orders/42"}},
		{name: "apiKeyId is the client key, the raw key the token", line: `{` + clf + `,"apiKeyId":"k1","apiKey":"` + vendorTestAPIKey + `","principalId":"p1"}`,
			want: map[string]string{"client_key": "k1", "token_fp": vendorFP(t, vendorTestAPIKey)}},
		{name: "principal before claims.sub", line: `{` + clf + `,"authorizer":{"principalId":"p1","claims":{"sub":"s1"}}}`,
			want: map[string]string{"client_key": "p1", "token_fp": vendorFP(t, "p1")}},
		{name: "claims.sub flat", line: `{` + clf + `,"authorizer.claims.sub":"s1"}`, want: map[string]string{"client_key": "s1", "token_fp": vendorFP(t, "s1")}},
		{name: "jti is the token", line: `{` + clf + `,"authorizer.claims.sub":"s1","authorizer.claims.jti":"j1"}`,
			want: map[string]string{"client_key": "s1", "token_fp": vendorFP(t, "j1")}},
		{name: "sub outside claims is not an identity", line: `{` + clf + `,"error":{"sub":"s1"}}`, want: map[string]string{"client_key": ""}},
		{name: "IAM identity", line: `{` + clf + `,"identity":{"user":"AIDAEXAMPLE","caller":"AROAEXAMPLE:s"}}`, want: map[string]string{"client_key": "AIDAEXAMPLE", "token_fp": ""}},
		{name: "raw API key alone", line: `{` + clf + `,"identity":{"apiKey":"` + vendorTestAPIKey + `"}}`,
			want: map[string]string{"client_key": vendorFP(t, vendorTestAPIKey), "token_fp": vendorFP(t, vendorTestAPIKey)}},
		{name: "nested template", line: `{"request":{"requestId":"r-2",` + clf + `},"client":{"sourceIp":"192.0.2.1","userAgent":"ua/1"},` +
			`"http":{"httpMethod":"POST","path":"/prod/x"},"api":{"domainName":"api.example.com"},"response":{"status":"201"}}`,
			want: map[string]string{"request_id": "r-2", "client_ip": "192.0.2.1", "user_agent": "ua/1", "method": "POST", "path": "/prod/x",
				"host": "api.example.com", "status": "201", "device": string(appendDeviceHash(nil, "ua/1", nil))}},
		{name: "snake case keys", line: `{"request_id":"r-3","source_ip":"192.0.2.2","request_time":"14/Mar/2025:09:26:53 +0000","http_method":"GET","status_code":"204"}`,
			want: map[string]string{"request_id": "r-3", "client_ip": "192.0.2.2", "method": "GET", "status": "204"}},
		{name: "$context keys", line: `{"$context.requestTime":"14/Mar/2025:09:26:53 +0000","$context.status":"500","$context.identity.sourceIp":"192.0.2.3"}`,
			want: map[string]string{"status": "500", "client_ip": "192.0.2.3"}},
		{name: "authorizer and integration status are not the client's", line: `{` + clf +
			`,"authorizer":{"status":"403"},"integration.status":"502","integrationStatus":"502","status":"200"}`, want: map[string]string{"status": "200"}},
		{name: "extendedRequestId when no requestId", line: `{` + clf + `,"requestId":"-","extendedRequestId":"e-1"}`, want: map[string]string{"request_id": "e-1"}},
		{name: "deeper than four levels is ignored", line: `{` + clf + `,"a":{"b":{"c":{"d":{"status":"500"}}}}}`, want: map[string]string{"status": "0"}},
		{name: "status unset", line: `{` + clf + `,"status":"-"}`, want: map[string]string{"status": "0"}},
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

package ingest

import "testing"

func TestCloudflareParse(t *testing.T) {
	const ua = "Mozilla/5.0 test"
	rec := func(ts, extra string) string {
		return `{"EdgeStartTimestamp":` + ts + `,"ClientIP":"198.51.100.7","ClientCountry":"de","ClientRequestHost":"api.example.com",` +
			`"ClientRequestMethod":"GET","ClientRequestPath":"/v1/orders/42","ClientRequestURI":"/v1/orders/42?x=1","EdgeResponseStatus":200,` +
			`"ClientRequestUserAgent":"` + ua + `","RayID":"8a1f2e3d4c5b6a79"` + extra + `}`
	}
	const at = "2025-03-14T09:26:53.589Z"
	cases := []vendorCase{
		{name: "fields as logged", line: rec("1741944413589000000", ""), want: map[string]string{"time": at, "source": "cloudflare",
			"client_ip": "198.51.100.7", "country": "DE", "host": "api.example.com", "method": "GET", "path": "/v1/orders/42",
			"route": "/v1/orders/{id}", "status": "200", "user_agent": ua, "request_id": "8a1f2e3d4c5b6a79", "action": "", "rule_id": "",
			"device": string(appendDeviceHash(nil, ua, nil))}},
		{name: "unixnano number", line: rec("1741944413589000000", ""), want: map[string]string{"time": at}},
		{name: "unix number", line: rec("1741944413", ""), want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "rfc3339", line: rec(`"`+at+`"`, ""), want: map[string]string{"time": at}},
		{name: "rfc3339 with an offset", line: rec(`"2025-03-14T10:26:53+01:00"`, ""), want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "unixnano string", line: rec(`"1741944413589000000"`, ""), want: map[string]string{"time": at}},
		{name: "unix string", line: rec(`"1741944413"`, ""), want: map[string]string{"time": "2025-03-14T09:26:53.000Z"}},
		{name: "path from the URI", line: `{"ClientIP":"198.51.100.9","EdgeStartTimestamp":1741944413,"ClientRequestURI":"/a/1?b=2#c"}`, want: map[string]string{"path": "/a/1", "route": "/a/{id}"}},
		{name: "empty path from the URI", line: `{"ClientIP":"198.51.100.9","EdgeStartTimestamp":1741944413,"ClientRequestPath":"","ClientRequestURI":"/a?b"}`, want: map[string]string{"path": "/a"}},
		{name: "Security fields as logged", line: rec("1741944413", `,"SecurityAction":"unknown","SecurityRuleID":"","WAFAction":"block","WAFRuleID":"100015"`),
			want: map[string]string{"action": "unknown", "rule_id": ""}},
		{name: "legacy WAF fields", line: rec("1741944413", `,"WAFAction":"simulate","WAFRuleID":"100015"`), want: map[string]string{"action": "simulate", "rule_id": "100015"}},
		{name: "legacy WAF fields empty", line: rec("1741944413", `,"WAFAction":"","WAFRuleID":""`), want: map[string]string{"action": "", "rule_id": ""}},
		{name: "block", line: `{"ClientIP":"198.51.100.9","EdgeStartTimestamp":1741944413,"SecurityAction":"block","SecurityRuleID":"r1","EdgeResponseStatus":403}`,
			want: map[string]string{"action": "block", "rule_id": "r1", "status": "403"}},
		{name: "country upper case", line: `{"ClientIP":"198.51.100.9","EdgeResponseStatus":200,"EdgeStartTimestamp":1741944413,"ClientCountry":"SA"}`, want: map[string]string{"country": "SA"}},
		{name: "country unknown", line: `{"ClientIP":"198.51.100.9","EdgeResponseStatus":200,"EdgeStartTimestamp":1741944413,"ClientCountry":"xx"}`, want: map[string]string{"country": ""}},
		{name: "country Tor", line: `{"ClientIP":"198.51.100.9","EdgeResponseStatus":200,"EdgeStartTimestamp":1741944413,"ClientCountry":"t1"}`, want: map[string]string{"country": ""}},
		{name: "country not two letters", line: `{"ClientIP":"198.51.100.9","EdgeResponseStatus":200,"EdgeStartTimestamp":1741944413,"ClientCountry":"deu"}`, want: map[string]string{"country": ""}},
		{name: "JA4 preferred over JA3", line: rec("1741944413", `,"JA3Hash":"e7d705a3286e19ea42f587b344ee6865","JA4":"t13d_a_b"`),
			want: map[string]string{"device": string(appendDeviceHash(nil, ua, []byte("t13d_a_b")))}},
		{name: "JA3 alone", line: rec("1741944413", `,"JA3Hash":"e7d705a3286e19ea42f587b344ee6865"`),
			want: map[string]string{"device": string(appendDeviceHash(nil, ua, []byte("e7d705a3286e19ea42f587b344ee6865")))}},
		{name: "credentials in RequestHeaders", line: rec("1741944413", `,"RequestHeaders":{"authorization":"Bearer `+vendorTestToken+`","x-api-key":"`+vendorTestAPIKey+`","x-device-id":"dev-1"}`),
			want: map[string]string{"token_fp": vendorFP(t, vendorTestToken), "client_key": vendorFP(t, vendorTestAPIKey), "device": "dev-1"}},
		{name: "RequestHeaders in any case", line: rec("1741944413", `,"RequestHeaders":{"Authorization":"Bearer `+vendorTestToken+`"}`),
			want: map[string]string{"token_fp": vendorFP(t, vendorTestToken)}},
		{name: "ClientRequestHost wins over the host header", line: rec("1741944413", `,"RequestHeaders":{"host":"other.example"}`),
			want: map[string]string{"host": "api.example.com"}},
		{name: "host header when no ClientRequestHost", line: `{"ClientIP":"198.51.100.9","EdgeResponseStatus":200,"EdgeStartTimestamp":1741944413,"RequestHeaders":{"host":"other.example"}}`,
			want: map[string]string{"host": "other.example"}},
		{name: "a repeated key: the first wins", line: rec("1741944413", `,"EdgeResponseStatus":502`), want: map[string]string{"status": "200"}},
		{name: "status as text", line: `{"ClientIP":"198.51.100.9","EdgeStartTimestamp":1741944413,"EdgeResponseStatus":"502"}`, want: map[string]string{"status": "502"}},
		{name: "status 0", line: `{"ClientIP":"198.51.100.9","ClientRequestMethod":"GET","EdgeStartTimestamp":1741944413,"EdgeResponseStatus":0}`, want: map[string]string{"status": "0"}},
		{name: "no EdgeStartTimestamp", line: `{"Datetime":"2025-03-14T09:26:53Z","Action":"block"}`, reason: ReasonMissingField},
		{name: "EdgeStartTimestamp null", line: `{"EdgeStartTimestamp":null}`, reason: ReasonMissingField},
		{name: "EdgeStartTimestamp empty", line: `{"EdgeStartTimestamp":""}`, reason: ReasonMissingField},
		{name: "EdgeStartTimestamp words", line: `{"EdgeStartTimestamp":"Friday"}`, reason: ReasonBadTimestamp},
		{name: "EdgeStartTimestamp before 1990", line: `{"EdgeStartTimestamp":"1970-01-02T00:00:00Z"}`, reason: ReasonBadTimestamp},
		{name: "EdgeStartTimestamp huge", line: `{"EdgeStartTimestamp":1e300}`, reason: ReasonBadTimestamp},
		{name: "status words", line: `{"EdgeStartTimestamp":1741944413,"EdgeResponseStatus":"forbidden"}`, reason: ReasonBadValue},
		{name: "ClientIP not text", line: `{"EdgeStartTimestamp":1741944413,"ClientIP":[]}`, reason: ReasonBadValue},
		{name: "RequestHeaders not an object", line: `{"EdgeStartTimestamp":1741944413,"RequestHeaders":"authorization: Bearer ` + vendorTestToken + `"}`, reason: ReasonBadValue},
		{name: "header value not text", line: `{"EdgeStartTimestamp":1741944413,"RequestHeaders":{"authorization":{"v":"Bearer ` + vendorTestToken + `"}}}`, reason: ReasonBadValue},
		{name: "truncated", line: `{"EdgeStartTimestamp":1741944413,"ClientIP":"192.0.2.1"`, reason: ReasonInvalidJSON},
		{name: "number", line: `1741944413`, reason: ReasonInvalidJSON},
	}
	runVendorCases(t, FormatCloudflare, testParserOptions(t), cases)

	big := testParserOptions(t)
	big.MaxLineBytes = 64
	runVendorCases(t, FormatCloudflare, big, []vendorCase{
		{name: "oversized", line: rec("1741944413", ""), reason: ReasonOversized},
	})
}

func TestCloudflareAllocs(t *testing.T) { checkVendorAllocs(t, FormatCloudflare) }

func FuzzParseCloudflare(f *testing.F) { fuzzVendorParser(f, FormatCloudflare) }

func BenchmarkParseCloudflare(b *testing.B) { benchVendorParser(b, FormatCloudflare) }

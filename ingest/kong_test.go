package ingest

import "testing"

func TestKongParse(t *testing.T) {
	rec := func(extra string) string {
		return `{"started_at":1741944413589,"client_ip":"198.51.100.7","request":{"id":"k-1","method":"GET","uri":"/orders/42?x=1",` +
			`"url":"https://api.example.com:8443/orders/42?x=1","headers":{"host":"api.example.com","user-agent":"ua/1","authorization":"REDACTED"}},` +
			`"response":{"status":200},"service":{"host":"orders.internal","name":"orders"}` + extra + `}`
	}
	cases := []vendorCase{
		{name: "fields as logged", line: rec(""), want: map[string]string{"time": "2025-03-14T09:26:53.589Z", "source": "kong",
			"client_ip": "198.51.100.7", "method": "GET", "host": "api.example.com", "path": "/orders/42", "route": "/orders/{id}",
			"status": "200", "request_id": "k-1", "user_agent": "ua/1", "token_fp": "", "client_key": "", "country": ""}},
		{name: "route name", line: rec(`,"route":{"name":"orders-read","paths":["/orders"]}`), want: map[string]string{"route": "orders-read"}},
		{name: "one plain path", line: rec(`,"route":{"name":null,"paths":["/orders"]}`), want: map[string]string{"route": "/orders"}},
		{name: "one regex path", line: rec(`,"route":{"paths":["~/orders/\\d+$"]}`), want: map[string]string{"route": "/orders/{id}"}},
		{name: "Kong 2 regex path", line: rec(`,"route":{"paths":["/orders/(\\d+)"]}`), want: map[string]string{"route": "/orders/{id}"}},
		{name: "two paths", line: rec(`,"route":{"paths":["/orders","/o"]}`), want: map[string]string{"route": "/orders/{id}"}},
		{name: "empty name and no paths", line: rec(`,"route":{"name":"","paths":[]}`), want: map[string]string{"route": "/orders/{id}"}},
		{name: "consumer is the client key, the credential the token", line: rec(`,"consumer":{"id":"c-1","username":"shop"},"authenticated_entity":{"id":"cred-1"}`),
			want: map[string]string{"client_key": "c-1", "token_fp": vendorFP(t, "cred-1")}},
		{name: "Kong 0.x: the credential's consumer_id is the client key", line: rec(`,"authenticated_entity":{"consumer_id":"c-0","id":"cred-0","key":"k-raw-0"},"api":{"name":"orders"}`),
			want: map[string]string{"client_key": "c-0", "token_fp": vendorFP(t, "cred-0")}},
		{name: "consumer object before the credential's consumer_id", line: rec(`,"consumer":{"id":"c-1"},"authenticated_entity":{"consumer_id":"c-2","id":"cred-1"}`),
			want: map[string]string{"client_key": "c-1"}},
		{name: "credential consumer_id null", line: rec(`,"authenticated_entity":{"consumer_id":null,"id":"cred-1"}`),
			want: map[string]string{"client_key": "", "token_fp": vendorFP(t, "cred-1")}},
		{name: "REDACTED authorization is no token", line: rec(""), want: map[string]string{"token_fp": ""}},
		{name: "API key header before the credential id", line: `{"response":{"status":200},"started_at":1741944413589,"request":{"headers":{"x-api-key":"` + vendorTestAPIKey +
			`"}},"consumer":{"id":"c-1"},"authenticated_entity":{"id":"cred-1"}}`,
			want: map[string]string{"client_key": "c-1", "token_fp": vendorFP(t, vendorTestAPIKey)}},
		{name: "key-auth's default apikey header, no consumer (a refused key)", line: `{"response":{"status":401},"started_at":1741944413589,"request":{"headers":{"apikey":"` + vendorTestAPIKey + `"}}}`,
			want: map[string]string{"client_key": vendorKeyFP(t, vendorTestAPIKey), "token_fp": vendorFP(t, vendorTestAPIKey)}},
		{name: "apikey header with a consumer", line: `{"response":{"status":200},"started_at":1741944413589,"request":{"headers":{"apikey":"` + vendorTestAPIKey + `"}},"consumer":{"id":"c-1"}}`,
			want: map[string]string{"client_key": "c-1", "token_fp": vendorFP(t, vendorTestAPIKey)}},
		{name: "a bearer token that a custom serializer kept", line: `{"response":{"status":200},"started_at":1741944413589,"request":{"headers":{"authorization":"Bearer ` + vendorTestToken + `"}}}`,
			want: map[string]string{"token_fp": vendorFP(t, vendorTestToken)}},
		{name: "repeated header as a list", line: `{"client_ip":"198.51.100.9","response":{"status":200},"started_at":1741944413589,"request":{"headers":{"user-agent":["ua/a","ua/b"],"host":[]}}}`,
			want: map[string]string{"user_agent": "ua/a", "host": ""}},
		{name: "host from the url", line: `{"client_ip":"198.51.100.9","started_at":1741944413589,"request":{"url":"http://legacy.example.com:8000/a?b","headers":{}}}`,
			want: map[string]string{"host": "legacy.example.com:8000", "path": "/a"}},
		{name: "service host is not the host", line: `{"client_ip":"198.51.100.9","response":{"status":200},"started_at":1741944413589,"service":{"host":"upstream.internal"}}`, want: map[string]string{"host": ""}},
		{name: "device header", line: `{"client_ip":"198.51.100.9","response":{"status":200},"started_at":1741944413589,"request":{"headers":{"x-device-id":"dev-1","user-agent":"ua/1"}}}`,
			want: map[string]string{"device": "dev-1"}},
		{name: "status as text", line: `{"client_ip":"198.51.100.9","started_at":1741944413589,"response":{"status":"404"}}`, want: map[string]string{"status": "404"}},
		{name: "started_at as a float", line: `{"client_ip":"198.51.100.9","response":{"status":200},"started_at":1.741944413589e12}`, want: map[string]string{"time": "2025-03-14T09:26:53.589Z"}},
		{name: "started_at in seconds with a fraction", line: `{"client_ip":"198.51.100.9","response":{"status":200},"started_at":1741944413.589}`, want: map[string]string{"time": "2025-03-14T09:26:53.589Z"}},
		{name: "started_at as text", line: `{"client_ip":"198.51.100.9","response":{"status":200},"started_at":"2025-03-14T09:26:53.589Z"}`, want: map[string]string{"time": "2025-03-14T09:26:53.589Z"}},
		{name: "batch", line: `[` + rec("") + `,` + rec("") + `]`, reason: ReasonBadValue},
		{name: "empty batch", line: `[]`, reason: ReasonBadValue},
		{name: "no started_at", line: `{"client_ip":"192.0.2.1"}`, reason: ReasonMissingField},
		{name: "started_at zero", line: `{"started_at":0}`, reason: ReasonBadTimestamp},
		{name: "started_at in the far future", line: `{"started_at":4102444800000}`, reason: ReasonBadTimestamp},
		{name: "started_at true", line: `{"started_at":true}`, reason: ReasonBadTimestamp},
		{name: "status out of range", line: `{"started_at":1741944413589,"response":{"status":-1}}`, reason: ReasonBadValue},
		{name: "status an object", line: `{"started_at":1741944413589,"response":{"status":{}}}`, reason: ReasonBadValue},
		{name: "headers a list", line: `{"started_at":1741944413589,"request":{"headers":["host: x"]}}`, reason: ReasonBadValue},
		{name: "consumer id not text", line: `{"started_at":1741944413589,"consumer":{"id":7}}`, reason: ReasonBadValue},
		{name: "route paths not a list", line: `{"started_at":1741944413589,"route":{"paths":"/a"}}`, reason: ReasonBadValue},
		{name: "a string", line: `"started_at"`, reason: ReasonInvalidJSON},
		{name: "two objects", line: `{"started_at":1741944413589}{"started_at":1741944413589}`, reason: ReasonInvalidJSON},
	}
	runVendorCases(t, FormatKong, testParserOptions(t), cases)
}

func TestKongAllocs(t *testing.T) { checkVendorAllocs(t, FormatKong) }

func FuzzParseKong(f *testing.F) { fuzzVendorParser(f, FormatKong) }

func BenchmarkParseKong(b *testing.B) { benchVendorParser(b, FormatKong) }

package ingest

import (
	"strings"
	"testing"
)

func TestSplitRequestLine(t *testing.T) {
	for _, tc := range []struct{ in, method, target string }{
		{"GET /a?b=1 HTTP/1.1", "GET", "/a?b=1"},
		{"M-SEARCH * HTTP/1.1", "M-SEARCH", "*"},
		{"GET /index.html", "GET", "/index.html"}, // HTTP/0.9
		{"GET /a b HTTP/1.1", "GET", "/a b"},      // a space in the target
		{"GET  /double  HTTP/1.1", "GET", "/double"},
		{"CONNECT host:443 HTTP/1.1", "CONNECT", "host:443"},
		{"-", "", ""},
		{"", "", ""},
		{"GET", "", ""},
		{"\x16\x03\x01\x00\xca", "", ""},
		{`\x16\x03\x01 x`, "", ""},
		{"1GET / HTTP/1.1", "", ""},
		{"GET\t/ HTTP/1.1", "", ""},
		{strings.Repeat("A", 25) + " / HTTP/1.1", "", ""},
	} {
		m, tg := splitRequestLine([]byte(tc.in))
		if string(m) != tc.method || string(tg) != tc.target {
			t.Errorf("splitRequestLine(%q) = %q, %q, want %q, %q", tc.in, m, tg, tc.method, tc.target)
		}
	}
}

func TestAppendUnescaped(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`plain`, "plain"},
		{`\x22q\x22`, `"q"`},
		{`\xE2\x9C\x93`, "✓"},
		{`\x5C`, `\`},
		{`\"a\\b`, `"a\b`},
		{`\x4`, `\x4`},    // too short: kept
		{`\xZZ`, `\xZZ`},  // not hex: kept
		{`\n`, `\n`},      // nginx never writes it: kept
		{`end\`, `end\`},  // a trailing backslash: kept
		{`\x00`, "\x00"},  // control bytes come through; the JSON writer escapes them
		{`\xff`, "\xff"},  // not UTF-8 yet: unescape replaces it (below)
		{`\\x41`, `\x41`}, // an escaped backslash before x41 is not an escape
	} {
		if got := string(appendUnescaped(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("appendUnescaped(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	p := newNginxParser(newBase(testParserOptionsWithDefaults(t)))
	if got := string(p.unescape([]byte(`a\xFFb\xC3\xA9`))); got != "a\uFFFDbé" {
		t.Errorf("unescape kept invalid UTF-8: %q", got)
	}
}

func testParserOptionsWithDefaults(t *testing.T) ParserOptions {
	t.Helper()
	o, err := testParserOptions(t).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestNginxCombinedFields(t *testing.T) {
	const pre = `203.0.113.7 - - [14/Jun/2025:11:21:44 +0200] `
	runFieldCases(t, mustParser(t, FormatNginx), []fieldCase{
		{name: "combined", line: pre + `"GET /a/42?x=1 HTTP/1.1" 200 612 "https://ref.example/" "curl/8.7.1"`,
			want: map[string]string{"time": "2025-06-14T09:21:44.000Z", "source": "nginx", "client_ip": "203.0.113.7", "method": "GET", "path": "/a/42", "route": "/a/{id}", "status": "200", "user_agent": "curl/8.7.1", "host": ""}},
		{name: "extra quoted fields appended", line: pre + `"GET / HTTP/1.1" 200 612 "-" "ua" "198.51.100.1" "rt=0.003" "-"`,
			want: map[string]string{"user_agent": "ua", "client_ip": "203.0.113.7"}},
		{name: "common log format", line: pre + `"GET / HTTP/1.0" 304 0`,
			want: map[string]string{"status": "304", "user_agent": ""}},
		{name: "dash request", line: pre + `"-" 400 0 "-" "-"`,
			want: map[string]string{"method": "", "path": "", "route": "", "status": "400"}},
		{name: "empty request", line: pre + `"" 400 0 "-" "-"`,
			want: map[string]string{"method": "", "path": "", "status": "400"}},
		{name: "TLS handshake", line: pre + `"\x16\x03\x01\x02\x00\x01\x00\x01\xFC\x03\x03" 400 157 "-" "-"`,
			want: map[string]string{"method": "", "path": "", "status": "400"}},
		{name: "binary after a method", line: pre + `"GET /\x00\x01 HTTP/1.1" 400 157 "-" "-"`,
			want: map[string]string{"method": "GET", "path": "/\x00\x01"}},
		{name: "escaped quote in the request", line: pre + `"GET /q=\x22a b\x22 HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"path": `/q="a b"`}},
		{name: "basic auth user", line: `203.0.113.7 - carol [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"client_key": "carol", "token_fp": ""}},
		{name: "IPv6 client", line: `2001:db8::9 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"client_ip": "2001:db8::9"}},
		{name: "Unix socket peer with a user", line: `unix: - carol [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"client_ip": "", "client_key": "carol"}},
		{name: "Unix socket peer", line: `unix: - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-"`, reason: ReasonMissingField},
		{name: "host name (Apache HostnameLookups)", line: `crawl-66-249-66-1.googlebot.com - - [14/Jun/2025:11:21:44 +0200] "GET /robots.txt HTTP/1.1" 200 68 "-" "Googlebot/2.1"`,
			want: map[string]string{"client_ip": "crawl-66-249-66-1.googlebot.com", "country": ""}},
		{name: "unescaped quote in the request (old Apache)", line: pre + `"GET /search?q="><script>alert(1)</script> HTTP/1.1" 404 209 "-" "sqlmap/1.8"`,
			want: map[string]string{"method": "GET", "path": "/search", "status": "404", "user_agent": "sqlmap/1.8"}},
		{name: "unescaped quote, Apache's dash byte count", line: pre + `"GET /a"b HTTP/1.0" 400 - "-" "-"`,
			want: map[string]string{"path": `/a"b`, "status": "400"}},
		{name: "escaped quote, Apache style", line: pre + `"GET /a"b HTTP/1.1" 404 12 "-" "-"`,
			want: map[string]string{"path": `/a"b`, "status": "404"}},
		{name: "open proxy probe", line: pre + `"GET http://check.proxy-judge.example:8080/azenv.php HTTP/1.1" 404 153 "-" "Mozilla/5.0"`,
			want: map[string]string{"method": "GET", "host": "check.proxy-judge.example:8080", "path": "/azenv.php", "route": "/azenv.php"}},
		{name: "CONNECT probe", line: pre + `"CONNECT mail.example.net:25 HTTP/1.1" 405 157 "-" "-"`,
			want: map[string]string{"method": "CONNECT", "host": "mail.example.net:25", "path": "", "route": ""}},
		{name: "a 48-character method is left out", line: pre + `"GETGETGETGETGETGETGETGETGETGETGETGETGETGETGETGET / HTTP/1.1" 400 157 "-" "-"`,
			want: map[string]string{"method": "", "path": "", "status": "400"}},
		{name: "ISO time in brackets", line: `203.0.113.7 - - [2025-06-14T11:21:44+02:00] "GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"time": "2025-06-14T09:21:44.000Z"}},
		{name: "leading blanks and CRLF", line: "  " + pre + `"GET / HTTP/1.1" 200 1 "-" "ua"` + "\r\n",
			want: map[string]string{"user_agent": "ua"}},
		{name: "unterminated user agent", line: pre + `"GET / HTTP/1.1" 200 1 "-" "cut`,
			want: map[string]string{"status": "200", "user_agent": ""}},
		{name: "missing time", line: `203.0.113.7 - - "GET / HTTP/1.1" 200 1 "-" "-"`, reason: ReasonBadSyntax},
		{name: "empty time", line: `203.0.113.7 - - [] "GET / HTTP/1.1" 200 1 "-" "-"`, reason: ReasonMissingField},
		{name: "time without offset", line: `203.0.113.7 - - [14/Jun/2025:11:21:44] "GET / HTTP/1.1" 200 1 "-" "-"`, reason: ReasonBadTimestamp},
		{name: "bad status", line: pre + `"GET / HTTP/1.1" 2xx 1 "-" "-"`, reason: ReasonBadSyntax},
		{name: "no status", line: pre + `"GET / HTTP/1.1"`, reason: ReasonBadSyntax},
		{name: "vhost prefix", line: `www.shop.example ` + pre + `"GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"host": "www.shop.example", "client_ip": "203.0.113.7", "path": "/"}},
		{name: "vhost_combined with port", line: `www.shop.example:443 ` + pre + `"GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"host": "www.shop.example", "client_ip": "203.0.113.7"}},
		{name: "vhost and a list of addresses", line: `www.shop.example 10.0.0.2, 10.0.0.1, 67.43.156.14 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"host": "www.shop.example", "client_ip": "67.43.156.14"}},
		{name: "vhost and a quoted list", line: `www.shop.example:80 "10.5.102.222, 198.51.100.1, 203.0.113.40" 10.2.1.185 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"host": "www.shop.example", "client_ip": "203.0.113.40"}},
		{name: "absolute-form request beats the vhost", line: `www.shop.example ` + pre + `"GET http://other.example/a HTTP/1.1" 404 1 "-" "-"`,
			want: map[string]string{"host": "other.example", "path": "/a"}},
		{name: "main format: the client behind a private peer", line: `10.20.0.5 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "curl/8.7.1" "198.51.100.1, 203.0.113.9, 10.20.0.7"`,
			want: map[string]string{"client_ip": "203.0.113.9", "user_agent": "curl/8.7.1"}},
		{name: "main format: a public peer is the client", line: pre + `"GET / HTTP/1.1" 200 1 "-" "-" "198.51.100.1"`,
			want: map[string]string{"client_ip": "203.0.113.7"}},
		{name: "main format: no header", line: `10.20.0.5 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-" "-"`,
			want: map[string]string{"client_ip": "10.20.0.5"}},
		{name: "an appended upstream address is no X-Forwarded-For", line: `10.20.0.5 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-" "10.0.3.7:8080"`,
			want: map[string]string{"client_ip": "10.20.0.5"}},
		{name: "IPv4 written as IPv6", line: `::ffff:192.0.2.1 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"client_ip": "192.0.2.1"}},
		{name: "a timestamp is no vhost", line: `2025-06-14T09:21:44.517Z ` + pre + `"GET / HTTP/1.1" 200 1`, reason: ReasonBadSyntax},
		{name: "client address before the virtual host", line: `192.168.33.2:11111 vhost1.example.fr:22222 - - [26/Dec/2016:16:22:14 +0000] "GET /hello HTTP/1.1" 404 499 "-" "-"`,
			want: map[string]string{"client_ip": "192.168.33.2", "host": "vhost1.example.fr", "path": "/hello"}},
		{name: "a virtual host that is an address, a client that is a name", line: `67.43.156.15 localhost - - [29/May/2017:19:02:48 +0000] "GET /test2 HTTP/1.1" 200 612 "-" "-"`,
			want: map[string]string{"client_ip": "localhost", "host": "67.43.156.15"}},
		{name: "Apache's identd answer", line: `127.0.0.1 user-identity frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326`,
			want: map[string]string{"client_ip": "127.0.0.1", "client_key": "frank", "path": "/apache_pb.gif", "status": "200"}},
		{name: "a field between the byte count and the referer", line: pre + `"GET / HTTP/1.1" 200 612 3413 "-" "Mozilla/5.0"`,
			want: map[string]string{"user_agent": "Mozilla/5.0"}},
		{name: "a syslog header is no vhost, but an envelope", line: `Dec  7 13:00:00 web1 nginx: ` + pre + `"GET / HTTP/1.1" 200 1 "-" "-"`,
			want: map[string]string{"client_ip": "203.0.113.7", "host": ""}},
		{name: "a token is no vhost", line: `sk_live_4eC39HqLyjWDarjtT1zdp7dc ` + pre + `"GET / HTTP/1.1" 200 1`, reason: ReasonBadSyntax},
		{name: "a machine of the local network as the client", line: `monitoring-server - - [29/May/2017:19:02:48 +0000] "GET /status HTTP/1.1" 200 612 "-" "curl/7.79.1"`,
			want: map[string]string{"client_ip": "monitoring-server", "path": "/status"}},
		{name: "error log", line: `2025/06/14 11:21:44 [error] 31#31: *1 open() "/usr/share/nginx/html/x" failed (2: No such file or directory)`, reason: ReasonBadSyntax},
		{name: "no address", line: ` - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1`, reason: ReasonBadSyntax},
	})
}

func TestNginxJSONFields(t *testing.T) {
	const tl = `"time_local":"14/Jun/2025:11:21:44 +0200"`
	runFieldCases(t, mustParser(t, FormatNginx), []fieldCase{
		{name: "request line split", line: `{"remote_addr":"198.51.100.9",` + tl + `,"request":"PUT /a/7?x HTTP/2.0","status":"204"}`,
			want: map[string]string{"method": "PUT", "path": "/a/7", "route": "/a/{id}", "status": "204", "source": "nginx"}},
		{name: "request_method and request_uri win", line: `{"remote_addr":"198.51.100.9",` + tl + `,"request":"GET /r HTTP/1.1","request_method":"POST","request_uri":"/u?q"}`,
			want: map[string]string{"method": "POST", "path": "/u"}},
		{name: "request beats uri", line: `{"remote_addr":"198.51.100.9",` + tl + `,"uri":"/normalised","request":"GET /raw//x HTTP/1.1"}`,
			want: map[string]string{"path": "/raw//x"}},
		{name: "uri when nothing else", line: `{"remote_addr":"198.51.100.9",` + tl + `,"uri":"/only"}`,
			want: map[string]string{"path": "/only", "method": ""}},
		{name: "junk request", line: `{"remote_addr":"198.51.100.9",` + tl + `,"request":"\u0016\u0003\u0001","status":400}`,
			want: map[string]string{"method": "", "path": "", "status": "400"}},
		{name: "msec beats time_local", line: `{"remote_addr":"198.51.100.9","status":"200",` + tl + `,"msec":"1749892904.517"}`,
			want: map[string]string{"time": "2025-06-14T09:21:44.517Z"}},
		{name: "time_iso8601", line: `{"remote_addr":"198.51.100.9","status":"200","time_iso8601":"2025-06-14T11:21:44+02:00"}`,
			want: map[string]string{"time": "2025-06-14T09:21:44.000Z"}},
		{name: "http_host beats host", line: `{"remote_addr":"198.51.100.9","status":"200",` + tl + `,"host":"a.example","http_host":"a.example:8080"}`,
			want: map[string]string{"host": "a.example:8080"}},
		{name: "server_name underscore", line: `{"remote_addr":"198.51.100.9","status":"200",` + tl + `,"server_name":"_"}`,
			want: map[string]string{"host": ""}},
		{name: "XFF when no remote_addr", line: `{"status":"200",` + tl + `,"http_x_forwarded_for":"198.51.100.3, 10.0.0.1"}`,
			want: map[string]string{"client_ip": "198.51.100.3"}},
		{name: "a public remote_addr beats XFF", line: `{"status":"200",` + tl + `,"http_x_forwarded_for":"198.51.100.3","remote_addr":"203.0.113.1"}`,
			want: map[string]string{"client_ip": "203.0.113.1"}},
		{name: "XFF behind a private remote_addr", line: `{"status":"200",` + tl + `,"http_x_forwarded_for":"198.51.100.3","remote_addr":"10.0.0.1"}`,
			want: map[string]string{"client_ip": "198.51.100.3"}},
		{name: "country variants", line: `{"remote_addr":"198.51.100.9","status":"200",` + tl + `,"geoip_country_code":"fr","http_cf_ipcountry":"ch"}`,
			want: map[string]string{"country": "CH"}},
		{name: "Tor is no country", line: `{"remote_addr":"198.51.100.9","status":"200",` + tl + `,"http_cf_ipcountry":"T1"}`,
			want: map[string]string{"country": ""}},
		{name: "request id", line: `{"remote_addr":"198.51.100.9","status":"200",` + tl + `,"request_id":"f00d"}`,
			want: map[string]string{"request_id": "f00d"}},
		{name: "device header", line: `{"remote_addr":"198.51.100.9","status":"200",` + tl + `,"http_x_device_id":"dev-9","http_user_agent":"ua"}`,
			want: map[string]string{"device": "dev-9", "user_agent": "ua"}},
		{name: "empty strings are unset", line: `{` + tl + `,"status":"200","http_x_forwarded_for":"198.51.100.9","remote_addr":"","http_user_agent":"","remote_user":"","http_authorization":""}`,
			want: map[string]string{"client_ip": "198.51.100.9", "user_agent": "", "client_key": "", "token_fp": "", "device": ""}},
		{name: "AWS WAF read as nginx", line: `{"timestamp":1741944413589,"formatVersion":1,"webaclId":"arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/shop/1",` +
			`"terminatingRuleId":"Default_Action","action":"ALLOW","httpRequest":{"clientIp":"198.51.100.7","country":"DE","uri":"/v1/items/42","httpMethod":"GET"}}`,
			reason: ReasonMissingField},
		{name: "status missing is 0", line: `{"remote_addr":"198.51.100.9","request":"GET / HTTP/1.1",` + tl + `}`,
			want: map[string]string{"status": "0"}},
		{name: "no time", line: `{"status":"200"}`, reason: ReasonMissingField},
		{name: "bad msec", line: `{"msec":"17498.92.904"}`, reason: ReasonBadTimestamp},
		{name: "status object", line: `{` + tl + `,"status":{}}`, reason: ReasonBadValue},
		{name: "invalid JSON", line: `{` + tl + `,`, reason: ReasonInvalidJSON},
	})
}

func TestNginxAPIKeyHeaderOption(t *testing.T) {
	opts := testParserOptions(t)
	opts.APIKeyHeader = "X-Gateway-Key"
	opts.DeviceHeader = "X-Client-Device"
	p, err := NewParser(FormatNginx, opts)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(`{"time_local":"14/Jun/2025:11:21:44 +0200","status":"200","http_x_gateway_key":"gk_0123456789abcdef","http_x_api_key":"ignored-default-0001","http_x_client_device":"d-1"}`)
	var ev Event
	if err := p.Parse(&ev, line); err != nil {
		t.Fatal(err)
	}
	def := mustParser(t, FormatNginx)
	var evDef Event
	if err := def.Parse(&evDef, []byte(`{"time_local":"14/Jun/2025:11:21:44 +0200","status":"200","http_x_api_key":"gk_0123456789abcdef"}`)); err != nil {
		t.Fatal(err)
	}
	if ev.ClientKey == "" || ev.ClientKey != evDef.ClientKey || ev.TokenFP != ev.ClientKey {
		t.Errorf("configured header: client_key %q token_fp %q, want the fingerprint %q of its value", ev.ClientKey, ev.TokenFP, evDef.ClientKey)
	}
	if ev.Device != "d-1" {
		t.Errorf("device %q, want d-1 from the configured device header", ev.Device)
	}
}

func TestNginxRejectsNeverQuoteTheRecord(t *testing.T) {
	p := mustParser(t, FormatNginx)
	for _, line := range readLogRecords(t, "testdata/nginx/rejects.log") {
		var ev Event
		err := p.Parse(&ev, line)
		if err == nil {
			t.Errorf("Parse(%q) accepted a record of rejects.log", line)
			continue
		}
		for _, cred := range rawCredentials(line) {
			if strings.Contains(err.Error(), string(cred)) {
				t.Errorf("error %q quotes the credential of %q", err, line)
			}
		}
		if strings.Contains(err.Error(), string(line[:min(len(line), 24)])) {
			t.Errorf("error %q quotes the record %q", err, line)
		}
	}
}

func FuzzParseNginx(f *testing.F) {
	addLogSeeds(f, "testdata/nginx/*.log")
	p := mustParser(f, FormatNginx)
	f.Fuzz(func(t *testing.T, line []byte) { fuzzParse(t, p, line) })
}

func BenchmarkParseNginxCombined(b *testing.B) {
	benchParse(b, FormatNginx, "testdata/nginx/combined.log")
}

func BenchmarkParseNginxJSON(b *testing.B) {
	benchParse(b, FormatNginx, "testdata/nginx/json.log")
}

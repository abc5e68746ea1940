package ingest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/valyala/fastjson"
)

// readLogRecords returns the records of a testdata .log file: every line that is not
// blank and not a "#" comment.
func readLogRecords(tb testing.TB, path string) [][]byte {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		if line := sc.Bytes(); len(bytes.TrimSpace(line)) > 0 && line[0] != '#' {
			out = append(out, bytes.Clone(line))
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// addLogSeeds adds every record of the testdata files matching glob to the corpus.
func addLogSeeds(f *testing.F, glob string) {
	f.Helper()
	paths, err := filepath.Glob(glob)
	if err != nil || len(paths) == 0 {
		f.Fatalf("no seed files match %s (%v)", glob, err)
	}
	for _, path := range paths {
		for _, line := range readLogRecords(f, path) {
			f.Add(line)
		}
	}
}

// firstLogRecord returns the first record of a testdata .log file.
func firstLogRecord(tb testing.TB, path string) []byte {
	tb.Helper()
	recs := readLogRecords(tb, path)
	if len(recs) == 0 {
		tb.Fatalf("%s holds no record", path)
	}
	return recs[0]
}

// credentialKeys are the normalised JSON keys under which Envoy and nginx records of
// the tests carry raw credentials.
var credentialKeys = map[string]bool{
	"authorization": true, "http_authorization": true,
	"x_api_key": true, "http_x_api_key": true, "api_key": true,
}

// rawCredentials returns the credential values of a JSON record: each Authorization
// value whole and without its scheme, and each API key.
func rawCredentials(line []byte) [][]byte {
	var p fastjson.Parser
	v, err := p.ParseBytes(line)
	if err != nil {
		return nil
	}
	var out [][]byte
	v.GetObject().Visit(func(k []byte, v *fastjson.Value) {
		if !credentialKeys[string(normJSONKey(make([]byte, 0, 96), k))] {
			return
		}
		s, err := v.StringBytes()
		if err != nil {
			return
		}
		out = append(out, bytes.Clone(s))
		if tok := bearer(s); len(tok) > 0 && len(tok) < len(s) {
			out = append(out, bytes.Clone(tok))
		}
	})
	return out
}

// checkNoRawCredential fails when a field of ev, or err, holds a credential of line.
// A credential counts only if it is long enough to be one and occurs once in a line
// without escapes: then no other field can have carried it into the event.
func checkNoRawCredential(t *testing.T, ev *Event, err error, line []byte) {
	t.Helper()
	if bytes.IndexByte(line, '\\') >= 0 {
		return
	}
	js := string(ev.AppendJSON(nil))
	for _, cred := range rawCredentials(line) {
		if len(cred) < 8 || bytes.Count(line, cred) != 1 {
			continue
		}
		if strings.Contains(js, string(cred)) {
			t.Errorf("Parse(%.200q): raw credential %q in event %s", line, cred, js)
		}
		if err != nil && strings.Contains(err.Error(), string(cred)) {
			t.Errorf("Parse(%.200q): raw credential %q in error %q", line, cred, err)
		}
	}
}

// fuzzParse is the body of the parser fuzz targets: a failure is a *ParseError whose
// text quotes no credential, a success holds the event invariants, and no raw
// credential reaches the event.
func fuzzParse(t *testing.T, p Parser, line []byte) {
	var ev Event
	err := p.Parse(&ev, line)
	if err != nil {
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Fatalf("Parse(%.200q) = %T %v, want a *ParseError", line, err, err)
		}
		if !strings.Contains(strings.Join(Reasons, " "), pe.Reason) || pe.Reason == "" {
			t.Fatalf("Parse(%.200q): unknown reason %q", line, pe.Reason)
		}
	} else {
		checkEventInvariants(t, &ev, line)
		if !json.Valid(ev.AppendJSON(nil)) {
			t.Fatalf("Parse(%.200q): event is not valid JSON", line)
		}
	}
	checkNoRawCredential(t, &ev, err, line)
}

// eventField returns field name of ev as its JSON contract spells it, as text.
func eventField(t *testing.T, ev *Event, name string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(ev.AppendJSON(nil), &m); err != nil {
		t.Fatal(err)
	}
	v, ok := m[name]
	if !ok {
		t.Fatalf("event has no field %q", name)
	}
	return fmt.Sprint(v)
}

// fieldCase is one record of a field table: the fields listed in want must come out as
// written (JSON contract names; status as decimal text), or the record must be rejected
// with reason.
type fieldCase struct {
	name   string
	line   string
	want   map[string]string
	reason string
}

func runFieldCases(t *testing.T, p Parser, cases []fieldCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ev Event
			err := p.Parse(&ev, []byte(tc.line))
			if tc.reason != "" {
				if got := ReasonOf(err); got != tc.reason {
					t.Fatalf("Parse(%q) = %v, want reason %s", tc.line, err, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.line, err)
			}
			checkEventInvariants(t, &ev, []byte(tc.line))
			for name, want := range tc.want {
				if got := eventField(t, &ev, name); got != want {
					t.Errorf("Parse(%q): %s = %q, want %q", tc.line, name, got, want)
				}
			}
		})
	}
}

func TestNormJSONKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"start_time", "start_time"},
		{"startTime", "start_time"},
		{"START_TIME", "start_time"},
		{"StartTime", "start_time"},
		{"x-forwarded-for", "x_forwarded_for"},
		{"X-Forwarded-For", "x_forwarded_for"},
		{"XForwardedFor", "x_forwarded_for"},
		{":authority", "authority"},
		{"clientIP", "client_ip"},
		{"tlsJa3Fingerprint", "tls_ja3_fingerprint"},
		{"JA3Hash", "ja3_hash"},
		{"downstreamRemoteAddress", "downstream_remote_address"},
		{"http.user_agent", "http_user_agent"},
		{"@timestamp", "@timestamp"},
		{"", ""},
		{strings.Repeat("k", 49), ""}, // too long to be one of ours
	} {
		if got := string(normJSONKey(make([]byte, 0, 96), []byte(tc.in))); got != tc.want {
			t.Errorf("normJSONKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestEnvoyJSONFields(t *testing.T) {
	const ts = `"start_time":"2025-06-14T09:21:44.517Z"`
	runFieldCases(t, mustParser(t, FormatEnvoy), []fieldCase{
		{name: "IPv4 with port", line: `{"response_code":200,` + ts + `,"downstream_remote_address":"203.0.113.7:4431"}`,
			want: map[string]string{"client_ip": "203.0.113.7", "source": "envoy"}},
		{name: "IPv6 with brackets and port", line: `{"response_code":200,` + ts + `,"downstream_remote_address":"[2001:db8::1]:443"}`,
			want: map[string]string{"client_ip": "2001:db8::1"}},
		{name: "remote address beats XFF", line: `{"response_code":200,` + ts + `,"x_forwarded_for":"198.51.100.1","downstream_remote_address":"203.0.113.7:1"}`,
			want: map[string]string{"client_ip": "203.0.113.7"}},
		{name: "client_ip key beats remote address", line: `{"response_code":200,` + ts + `,"downstream_remote_address":"203.0.113.7:1","client_ip":"192.0.2.9"}`,
			want: map[string]string{"client_ip": "192.0.2.9"}},
		{name: "XFF's public entry when no address", line: `{"response_code":200,` + ts + `,"x_forwarded_for":" 198.51.100.1 , 10.0.0.1"}`,
			want: map[string]string{"client_ip": "198.51.100.1"}},
		{name: "a forged XFF entry is not the client", line: `{"response_code":200,` + ts + `,"x_forwarded_for":"192.0.2.66, 198.51.100.1"}`,
			want: map[string]string{"client_ip": "198.51.100.1"}},
		{name: "XFF behind a sidecar's private peer", line: `{"response_code":200,` + ts + `,"x_forwarded_for":"198.51.100.1","downstream_remote_address":"10.124.0.13:43612"}`,
			want: map[string]string{"client_ip": "198.51.100.1"}},
		{name: "no IP at all", line: `{` + ts + `,"response_code":200,"consumer_id":"c1","downstream_remote_address":"unix:/tmp/s","x_forwarded_for":"unknown"}`,
			want: map[string]string{"client_ip": "", "client_key": "c1"}},
		{name: "a token in the XFF is left out", line: `{` + ts + `,"response_code":200,"consumer_id":"c1","x_forwarded_for":"Bearer gwt_xff_0123456789abcdef"}`,
			want: map[string]string{"client_ip": ""}},
		{name: "absolute-form path names the host", line: `{` + ts + `,"response_code":200,"downstream_remote_address":"198.51.100.9:1","method":"GET","path":"http://proxy-target.example:8080/x?y","authority":"-"}`,
			want: map[string]string{"host": "proxy-target.example:8080", "path": "/x"}},
		{name: "a 48-character method is left out", line: `{` + ts + `,"response_code":400,"downstream_remote_address":"198.51.100.9:1","method":"GETGETGETGETGETGETGETGETGETGETGETGETGETGETGETGET"}`,
			want: map[string]string{"method": ""}},
		{name: "no client", line: `{` + ts + `,"response_code":200,"method":"GET","path":"/"}`, reason: ReasonMissingField},
		{name: "no request", line: `{` + ts + `,"downstream_remote_address":"198.51.100.9:1"}`, reason: ReasonMissingField},
		{name: "dash remote address falls back to XFF", line: `{"response_code":200,` + ts + `,"downstream_remote_address":"-","x_forwarded_for":"198.51.100.2"}`,
			want: map[string]string{"client_ip": "198.51.100.2"}},
		{name: "status 0 kept", line: `{"method":"GET","downstream_remote_address":"198.51.100.9:51000",` + ts + `,"response_code":0}`,
			want: map[string]string{"status": "0"}},
		{name: "status as a string", line: `{"downstream_remote_address":"198.51.100.9:51000",` + ts + `,"response_code":"404"}`,
			want: map[string]string{"status": "404"}},
		{name: "status null is unset", line: `{"downstream_remote_address":"198.51.100.9:51000","method":"GET",` + ts + `,"response_code":null}`,
			want: map[string]string{"status": "0"}},
		{name: "route name wins", line: `{"downstream_remote_address":"198.51.100.9:51000",` + ts + `,"path":"/a/1","route_name":"items"}`,
			want: map[string]string{"route": "items", "path": "/a/1"}},
		{name: "dash route name folds the path", line: `{"downstream_remote_address":"198.51.100.9:51000",` + ts + `,"path":"/a/1?x=2","route_name":"-"}`,
			want: map[string]string{"route": "/a/{id}", "path": "/a/1"}},
		{name: "Istio's default route name folds the path", line: `{"downstream_remote_address":"10.1.2.3:40000",` + ts + `,"path":"/a/1","route_name":"default"}`,
			want: map[string]string{"route": "/a/{id}", "path": "/a/1"}},
		{name: "Istio's blackhole route name folds the path", line: `{"downstream_remote_address":"10.1.2.3:40000",` + ts + `,"path":"/b/2","route_name":"block_all"}`,
			want: map[string]string{"route": "/b/{id}"}},
		{name: "original path wins in any key order", line: `{"downstream_remote_address":"198.51.100.9:51000",` + ts + `,"x_envoy_original_path":"/orig/1","path":"/rewritten"}`,
			want: map[string]string{"path": "/orig/1"}},
		{name: "dash original path does not hide the path", line: `{"downstream_remote_address":"198.51.100.9:51000",` + ts + `,"x_envoy_original_path":"-","path":"/p"}`,
			want: map[string]string{"path": "/p"}},
		{name: "host keeps its port", line: `{"downstream_remote_address":"198.51.100.9:51000","response_code":200,` + ts + `,"authority":"api.example:8443","host":"other"}`,
			want: map[string]string{"host": "api.example:8443"}},
		{name: "dash values are unset", line: `{"downstream_remote_address":"198.51.100.9:51000","response_code":200,` + ts + `,"method":"-","path":"-","authority":"-","user_agent":"-","request_id":"-"}`,
			want: map[string]string{"method": "", "path": "", "host": "", "user_agent": "", "request_id": "", "device": ""}},
		{name: "epoch milliseconds as a number", line: `{"downstream_remote_address":"198.51.100.9:51000","response_code":200,"start_time":1749892904517}`,
			want: map[string]string{"time": "2025-06-14T09:21:44.517Z"}},
		{name: "device id header beats the TLS hash", line: `{"downstream_remote_address":"198.51.100.9:51000","response_code":200,` + ts + `,"user_agent":"ua","ja3":"abc","x_device_id":"dev-1"}`,
			want: map[string]string{"device": "dev-1"}},
		{name: "country from the record", line: `{"downstream_remote_address":"198.51.100.9:51000","response_code":200,` + ts + `,"country":"nl"}`,
			want: map[string]string{"country": "NL"}},
		{name: "escaped key and value", line: `{"downstream_remote_address":"198.51.100.9:51000","response_code":200,"start\u005ftime":"2025-06-14T09:21:44.517Z","user_agent":"a\"b\u00e9"}`,
			want: map[string]string{"user_agent": "a\"bé"}},
		{name: "nested objects are read past", line: `{"downstream_remote_address":"198.51.100.9:51000",` + ts + `,"meta":{"path":"/nested","response_code":500},"path":"/top"}`,
			want: map[string]string{"path": "/top", "status": "0"}},
		{name: "no time", line: `{"response_code":200}`, reason: ReasonMissingField},
		{name: "time null", line: `{"start_time":null}`, reason: ReasonMissingField},
		{name: "time is an object", line: `{"start_time":{"s":1}}`, reason: ReasonBadTimestamp},
		{name: "negative status", line: `{` + ts + `,"response_code":-1}`, reason: ReasonBadValue},
		{name: "fractional status", line: `{` + ts + `,"response_code":200.5}`, reason: ReasonBadValue},
		{name: "not an object", line: `{"a":1}}`, reason: ReasonInvalidJSON},
		{name: "empty", line: ` `, reason: ReasonBadSyntax},
	})
}

func TestEnvoyIdentity(t *testing.T) {
	const ts = `"start_time":"2025-06-14T09:21:44.517Z"`
	p := mustParser(t, FormatEnvoy)
	parse := func(line string) Event {
		t.Helper()
		var ev Event
		line = strings.Replace(line, "{", `{"response_code":200,"downstream_remote_address":"198.51.100.9:1",`, 1)
		if err := p.Parse(&ev, []byte(line)); err != nil {
			t.Fatalf("Parse(%q): %v", line, err)
		}
		return ev
	}
	// The same token under any scheme spelling and key gives the same fingerprint.
	a := parse(`{` + ts + `,"authorization":"Bearer tok_abcdefgh12345678"}`)
	b := parse(`{` + ts + `,"Authorization":"bearer tok_abcdefgh12345678"}`)
	c := parse(`{` + ts + `,"http_authorization":"tok_abcdefgh12345678"}`)
	if a.TokenFP == "" || a.TokenFP != b.TokenFP || a.TokenFP != c.TokenFP {
		t.Errorf("token fingerprints %q %q %q, want one non-empty value", a.TokenFP, b.TokenFP, c.TokenFP)
	}
	if a.ClientKey != "" {
		t.Errorf("a bearer token alone gave client_key %q", a.ClientKey)
	}
	// JA4 wins over JA3: browsers that shuffle TLS extensions change JA3 per connection.
	j1 := parse(`{` + ts + `,"user_agent":"ua","ja3":"aaaa","ja4":"t13d_x_y"}`)
	j2 := parse(`{` + ts + `,"user_agent":"ua","ja3":"bbbb","ja4":"t13d_x_y"}`)
	if j1.Device == "" || j1.Device != j2.Device {
		t.Errorf("devices %q and %q differ although the JA4 is the same", j1.Device, j2.Device)
	}
	// A configured API key header is matched under its JSON spelling.
	opts := testParserOptions(t)
	opts.APIKeyHeader = "X-Gateway-Key"
	q, err := NewParser(FormatEnvoy, opts)
	if err != nil {
		t.Fatal(err)
	}
	var ev Event
	if err := q.Parse(&ev, []byte(`{`+ts+`,"response_code":200,"x_gateway_key":"gk_0123456789abcdef"}`)); err != nil {
		t.Fatal(err)
	}
	if ev.ClientKey == "" || ev.ClientKey != ev.TokenFP || strings.Contains(string(ev.AppendJSON(nil)), "gk_0123456789abcdef") {
		t.Errorf("configured API key header: client_key %q token_fp %q", ev.ClientKey, ev.TokenFP)
	}
}

func TestEnvoyTextFields(t *testing.T) {
	const head = `[2025-06-14T09:24:00.310Z] `
	runFieldCases(t, mustParser(t, FormatEnvoy), []fieldCase{
		{name: "default format", line: head + `"GET /a/1?b=2 HTTP/1.1" 200 - 0 10 3 2 "203.0.113.1, 10.0.0.1" "curl/8" "rid-1" "api.example:80" "10.0.0.9:8080"`,
			want: map[string]string{"method": "GET", "path": "/a/1", "route": "/a/{id}", "status": "200", "client_ip": "203.0.113.1", "user_agent": "curl/8", "request_id": "rid-1", "host": "api.example:80"}},
		{name: "protocol unknown (\"-\")", line: head + `"GET /status/418 -" 418 - 0 10 3 2 "203.0.113.1" "curl/8" "rid-1" "api.example" "-"`,
			want: map[string]string{"method": "GET", "path": "/status/418", "status": "418"}},
		{name: "quote inside the user agent", line: head + `"GET / HTTP/1.1" 200 - 0 10 3 2 "198.51.100.1" "a "b" c" "rid" "host" "-"`,
			want: map[string]string{"user_agent": `a "b" c`, "request_id": "rid", "host": "host"}},
		// Envoy does not escape headers: a user agent holding `" "` shifts the fields
		// after it, which the client sets anyway; the client IP comes before it.
		{name: "separator inside the user agent", line: head + `"GET / HTTP/1.1" 200 - 0 10 3 2 "198.51.100.1" "a" "b" "rid" "host" "-"`,
			want: map[string]string{"user_agent": "a", "request_id": "b", "host": "rid", "client_ip": "198.51.100.1"}},
		{name: "appended quoted fields are ignored", line: head + `"GET / HTTP/1.1" 200 - 0 10 3 2 "198.51.100.1" "ua" "rid" "host" "-" "Bearer tok_appended_0123456789" "x"`,
			want: map[string]string{"user_agent": "ua", "request_id": "rid", "host": "host", "token_fp": ""}},
		{name: "Istio tail with a quote", line: head + `"GET /v1 HTTP/2" 200 - via_upstream - "-" 0 5 3 2 "-" "ua" "rid" "h" "-" c 10.0.0.2:1 10.0.0.3:2 10.0.0.4:4 sni "route"`, reason: ReasonBadSyntax},
		{name: "quote in the path", line: head + `"GET /x"y HTTP/1.1" 404 - 0 10 3 2 "198.51.100.1" "ua" "rid" "host" "-"`,
			want: map[string]string{"path": `/x"y`, "status": "404"}},
		{name: "quote and digits in the path", line: head + `"GET /x" 5b" 20/ HTTP/1.1" 404 - 0 10 3 2 "198.51.100.1" "ua" "rid" "host" "-"`,
			want: map[string]string{"path": `/x" 5b" 20/`, "status": "404"}},
		{name: "status 0", line: head + `"GET / HTTP/1.1" 0 DC 0 0 3 - "198.51.100.1" "-" "-" "-" "-"`,
			want: map[string]string{"status": "0", "user_agent": "", "device": ""}},
		{name: "Istio format", line: head + `"GET /v1 HTTP/2" 200 - via_upstream - "-" 0 5 3 2 "198.51.100.1" "ua" "rid" "h" "10.0.0.9:80" outbound|80||s.ns.svc 10.0.0.2:1 10.0.0.3:2 [2001:db8::5]:4 sni route-v1`,
			want: map[string]string{"client_ip": "2001:db8::5", "route": "route-v1", "host": "h", "request_id": "rid"}},
		{name: "Istio's generated inbound route name is no route", line: head + `"GET /v1/carts/77 HTTP/1.1" 200 - via_upstream - "-" 0 5 3 2 "-" "ua" "rid" "carts:8080" "10.0.0.9:8080" inbound|8080|| 127.0.0.6:1 10.0.0.9:8080 10.0.0.4:4 outbound_.8080_._.carts.shop.svc.cluster.local default`,
			want: map[string]string{"route": "/v1/carts/{id}", "path": "/v1/carts/77"}},
		{name: "Istio's passthrough route name is no route", line: head + `"GET /x/5 HTTP/1.1" 200 - via_upstream - "-" 0 5 3 2 "-" "ua" "rid" "h" "10.0.0.9:80" PassthroughCluster 10.0.0.2:1 10.0.0.3:2 10.0.0.4:4 - allow_any`,
			want: map[string]string{"route": "/x/{id}"}},
		{name: "Emissary's ACCESS prefix", line: `ACCESS ` + head + `"GET /api/v1/quote HTTP/1.1" 200 - 0 132 6 5 "198.51.100.4" "python-requests/2.32.3" "rid-7" "ambassador.example" "10.0.4.7:8080"`,
			want: map[string]string{"client_ip": "198.51.100.4", "path": "/api/v1/quote", "host": "ambassador.example", "status": "200"}},
		{name: "CONNECT names the host", line: head + `"CONNECT internal.example:443 HTTP/1.1" 403 - 0 0 0 - "198.51.100.1" "-" "-" "-" "-"`,
			want: map[string]string{"method": "CONNECT", "host": "internal.example:443", "path": ""}},
		{name: "no client: no X-Forwarded-For", line: head + `"GET / HTTP/1.1" 200 - 0 10 3 2 "-" "ua" "rid" "host" "-"`, reason: ReasonMissingField},
		{name: "dash time", line: `[-] "GET / HTTP/1.1" 200 - 0 0 1 - "-" "-" "-" "-" "-"`, reason: ReasonMissingField},
		{name: "junk time", line: `[noon] "GET / HTTP/1.1" 200 - 0 0 1 - "-" "-" "-" "-" "-"`, reason: ReasonBadTimestamp},
		{name: "four quoted fields", line: head + `"GET / HTTP/1.1" 200 - 0 0 1 - "-" "-" "-" "-"`, reason: ReasonBadSyntax},
		{name: "four-digit response code", line: head + `"GET / HTTP/1.1" 2000 - 0 0 1 - "-" "-" "-" "-" "-"`, reason: ReasonBadSyntax},
		{name: "unterminated request", line: head + `"GET / HTTP/1.1`, reason: ReasonBadSyntax},
		{name: "neither JSON nor text", line: `GET / HTTP/1.1`, reason: ReasonBadSyntax},
	})
}

func TestEnvoyRejectsNeverQuoteTheRecord(t *testing.T) {
	p := mustParser(t, FormatEnvoy)
	for _, line := range readLogRecords(t, "testdata/envoy/rejects.log") {
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

// TestParserGoldensHoldNoCredential checks the golden output of the Envoy, nginx and
// auto samples: no raw token or API key of the input reaches it. Every fake credential
// in those samples starts with one of credentialMarkers, wherever the record keeps it.
func TestParserGoldensHoldNoCredential(t *testing.T) {
	credentialMarkers := []string{"gwk_", "gwt_", "eyJ", "Ym9i"}
	var paths []string
	for _, dir := range []string{"envoy", "nginx", "auto"} {
		more, _ := filepath.Glob("testdata/" + dir + "/*.log")
		paths = append(paths, more...)
	}
	for _, path := range paths {
		golden, err := os.ReadFile(strings.TrimSuffix(path, ".log") + ".golden")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range credentialMarkers {
			if bytes.Contains(golden, []byte(m)) {
				t.Errorf("%s: golden output holds %q, the start of a raw credential", path, m)
			}
		}
		for _, line := range readLogRecords(t, path) {
			for _, cred := range rawCredentials(line) {
				if len(cred) >= 8 && bytes.Contains(golden, cred) {
					t.Errorf("%s: golden output holds the raw credential %q", path, cred)
				}
			}
		}
	}
}

func FuzzParseEnvoy(f *testing.F) {
	addLogSeeds(f, "testdata/envoy/*.log")
	p := mustParser(f, FormatEnvoy)
	f.Fuzz(func(t *testing.T, line []byte) { fuzzParse(t, p, line) })
}

// benchParse measures one parser on one record; run with
// go test ./ingest -run '^$' -bench BenchmarkParse -benchmem -count 6 and compare with benchstat.
func benchParse(b *testing.B, format, path string) {
	line := firstLogRecord(b, path)
	p, ev := mustParser(b, format), new(Event)
	if err := p.Parse(ev, line); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Parse(ev, line); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkParseEnvoyJSON(b *testing.B) {
	benchParse(b, FormatEnvoy, "testdata/envoy/istio-json.log")
}

func BenchmarkParseEnvoyText(b *testing.B) {
	benchParse(b, FormatEnvoy, "testdata/envoy/default-text.log")
}

// TestEnvoyTextNoClientSaysWhatToLog: Envoy's default format names the client only in
// X-Forwarded-For; an edge proxy leaves it "-", and the rejection says what to add.
func TestEnvoyTextNoClientSaysWhatToLog(t *testing.T) {
	line := `[2025-06-14T09:24:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 "-" "nsq2http" "rid-1" "locations" "tcp://10.0.2.1:80"`
	var ev Event
	err := mustParser(t, FormatEnvoy).Parse(&ev, []byte(line))
	if ReasonOf(err) != ReasonMissingField || !strings.Contains(fmt.Sprint(err), "%DOWNSTREAM_REMOTE_ADDRESS%") {
		t.Errorf("Parse = %v (%s), want missing_field naming %%DOWNSTREAM_REMOTE_ADDRESS%%", err, ReasonOf(err))
	}
}

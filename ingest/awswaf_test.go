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

// Test credentials planted in testdata/{awswaf,apigw,kong,cloudflare}: their raw values
// must never reach an Event field or an error, only their fingerprints.
const (
	vendorTestToken  = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJnd3Rlc3QtdXNlci0xIn0.gwtest-sig-Q1w2E3r4T5y6"
	vendorTestAPIKey = "gwtest-key-Zk3Pq8Wm2Lr5Tn7Y"
	vendorTestBasic  = "Z3d0ZXN0OnBhc3N3b3Jk" // "gwtest:password"
)

var vendorSecrets = []string{vendorTestToken, vendorTestAPIKey, vendorTestBasic}

// vendorFP is the fingerprint the test secret gives credential.
func vendorFP(t testing.TB, credential string) string {
	t.Helper()
	return string(testParserOptions(t).Secret.newFingerprinter().Sum([]byte(credential)))
}

// vendorKeyFP is the client key the test secret gives an API key.
func vendorKeyFP(t testing.TB, key string) string {
	t.Helper()
	return testParserOptions(t).Secret.KeyFingerprint([]byte(key))
}

// vendorFixtureLines returns the records (not the # comments) of testdata/<format>/*.log.
func vendorFixtureLines(t testing.TB, format string) [][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", format, "*.log"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no testdata/%s/*.log: %v", format, err)
	}
	var lines [][]byte
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for sc.Scan() {
			if l := sc.Bytes(); len(bytes.TrimSpace(l)) > 0 && l[0] != '#' {
				lines = append(lines, bytes.Clone(l))
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return lines
}

// vendorEventFields is ev as the JSON contract writes it, each value as text.
func vendorEventFields(t testing.TB, ev *Event) map[string]string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(ev.AppendJSON(nil), &m); err != nil {
		t.Fatalf("event JSON: %v", err)
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}

// A vendorCase is one record and what its event must hold (fields by their JSON name),
// or the reason it must be rejected for.
type vendorCase struct {
	name   string
	line   string
	want   map[string]string
	reason string
}

func runVendorCases(t *testing.T, format string, opts ParserOptions, cases []vendorCase) {
	t.Helper()
	p, err := NewParser(format, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ev Event
			err := p.Parse(&ev, []byte(tc.line))
			checkVendorError(t, err, []byte(tc.line))
			if tc.reason != "" {
				if got := ReasonOf(err); got != tc.reason {
					t.Fatalf("Parse(%s) = %v, want reason %s", tc.line, err, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%s) = %v", tc.line, err)
			}
			checkEventInvariants(t, &ev, []byte(tc.line))
			got := vendorEventFields(t, &ev)
			for k, want := range tc.want {
				if got[k] != want {
					t.Errorf("Parse(%s): %s = %q, want %q", tc.line, k, got[k], want)
				}
			}
		})
	}
}

// checkVendorError holds for every rejection: a *ParseError whose text quotes neither
// the record nor a credential.
func checkVendorError(t *testing.T, err error, line []byte) {
	t.Helper()
	if err == nil {
		return
	}
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("Parse(%.200q) = %T %v, want a *ParseError", line, err, err)
	}
	msg := err.Error()
	for _, s := range vendorSecrets {
		if strings.Contains(msg, s) {
			t.Fatalf("Parse(%.200q): error %q holds a raw credential", line, msg)
		}
	}
	if len(line) >= 16 && strings.Contains(msg, string(line)) {
		t.Fatalf("Parse(%.200q): error %q quotes the record", line, msg)
	}
}

// checkNoSecrets fails when a raw test credential reached an event field although the
// record holds it only as a credential (an Authorization or API key header or key). A
// mutated record may well carry the same text as, say, its user agent, which the event
// then rightly shows.
func checkNoSecrets(t *testing.T, ev *Event, line []byte) {
	t.Helper()
	fields := []string{ev.Source, ev.ClientKey, ev.TokenFP, ev.Device, ev.ClientIP, ev.Country, ev.Method,
		ev.Host, ev.Route, ev.Path, ev.Action, ev.RuleID, ev.UserAgent, ev.RequestID}
	for _, s := range vendorSecrets {
		for _, f := range fields {
			if strings.Contains(f, s) && onlyAsCredential(line, s) {
				t.Fatalf("Parse(%.200q): a raw credential reached the event: %+v", line, *ev)
			}
		}
	}
}

// onlyAsCredential reports whether every occurrence of secret in the JSON record line is
// the value of a credential: a key or header named authorization, x-api-key or apiKey
// (compared as the parsers do: last dotted segment, any case, without '_', '-', '$').
func onlyAsCredential(line []byte, secret string) bool {
	var jp fastjson.Parser
	v, err := jp.ParseBytes(line)
	if err != nil {
		return false
	}
	found, elsewhere := false, false
	var walk func(v *fastjson.Value, credential bool)
	walk = func(v *fastjson.Value, credential bool) {
		switch v.Type() {
		case fastjson.TypeObject:
			o, _ := v.Object()
			name := v.GetStringBytes("name") // a {name, value} header entry
			o.Visit(func(k []byte, vv *fastjson.Value) {
				if bytes.Contains(k, []byte(secret)) {
					found, elsewhere = true, true
				}
				walk(vv, isCredentialName(k) || (string(k) == "value" && isCredentialName(name)))
			})
		case fastjson.TypeArray:
			a, _ := v.Array()
			for _, e := range a {
				walk(e, credential)
			}
		case fastjson.TypeString:
			if b, _ := v.StringBytes(); bytes.Contains(b, []byte(secret)) {
				found = true
				elsewhere = elsewhere || !credential
			}
		}
	}
	walk(v, false)
	return found && !elsewhere
}

func isCredentialName(k []byte) bool {
	if i := bytes.LastIndexByte(k, '.'); i >= 0 {
		k = k[i+1:]
	}
	var b []byte
	for _, c := range bytes.ToLower(k) {
		if c != '_' && c != '-' && c != '$' {
			b = append(b, c)
		}
	}
	switch string(b) {
	case "authorization", "xapikey", "apikey":
		return true
	}
	return false
}

// fuzzVendorParser seeds f with the format's testdata records and checks, for any input,
// that a rejection is a clean *ParseError and an accepted event keeps every invariant.
func fuzzVendorParser(f *testing.F, format string) {
	for _, l := range vendorFixtureLines(f, format) {
		f.Add(l)
	}
	p := mustParser(f, format)
	f.Fuzz(func(t *testing.T, line []byte) {
		var ev Event
		err := p.Parse(&ev, line)
		checkVendorError(t, err, line)
		if err != nil {
			return
		}
		checkEventInvariants(t, &ev, line)
		checkNoSecrets(t, &ev, line)
		if ev.Source != format {
			t.Fatalf("Parse(%.200q): source %q, want %q", line, ev.Source, format)
		}
		if !json.Valid(ev.AppendJSON(nil)) {
			t.Fatalf("Parse(%.200q): event JSON is not valid", line)
		}
	})
}

// benchVendorParser parses the first record of testdata/<format>/*.log, the realistic one.
func benchVendorParser(b *testing.B, format string) {
	line := vendorFixtureLines(b, format)[0]
	p := mustParser(b, format)
	ev := new(Event)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Parse(ev, line); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// checkVendorAllocs holds the steady-state allocations per accepted record at most 2
// (strings come from arena chunks, so most records allocate nothing).
func checkVendorAllocs(t *testing.T, format string) {
	p := mustParser(t, format)
	var ev Event
	var accepted [][]byte
	for _, l := range vendorFixtureLines(t, format) {
		if p.Parse(&ev, l) == nil {
			accepted = append(accepted, l)
		}
	}
	if len(accepted) == 0 {
		t.Fatal("no accepted records")
	}
	for _, l := range accepted {
		if n := testing.AllocsPerRun(200, func() { _ = p.Parse(&ev, l) }); n > 2 {
			t.Errorf("Parse(%.80q...) allocates %v times per record, want at most 2", l, n)
		}
	}
	all := testing.AllocsPerRun(200, func() {
		for _, l := range accepted {
			_ = p.Parse(&ev, l)
		}
	})
	if perRecord := all / float64(len(accepted)); perRecord > 1 {
		t.Errorf("the %s fixture allocates %.2f times per record, want at most 1", format, perRecord)
	}
}

func TestAWSWAFParse(t *testing.T) {
	rec := func(top, req string) string {
		return `{"timestamp":1741944413589,"formatVersion":1,"terminatingRuleId":"Default_Action","action":"ALLOW"` + top +
			`,"httpRequest":{"clientIp":"198.51.100.7","country":"DE","uri":"/v1/items/42","args":"a=1","httpMethod":"GET","requestId":"rid-1"` + req + `}}`
	}
	hdrs := func(kv ...string) string {
		var b strings.Builder
		b.WriteString(`,"headers":[`)
		for i := 0; i+1 < len(kv); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"name":%q,"value":%q}`, kv[i], kv[i+1])
		}
		b.WriteString(`]`)
		return b.String()
	}
	const ua = "Mozilla/5.0 test"
	cases := []vendorCase{
		{name: "fields as logged", line: rec("", hdrs("Host", "api.example.com:443", "User-Agent", ua)), want: map[string]string{
			"time": "2025-03-14T09:26:53.589Z", "source": "awswaf", "client_ip": "198.51.100.7", "country": "DE", "method": "GET",
			"host": "api.example.com:443", "path": "/v1/items/42", "route": "/v1/items/{id}", "status": "0", "action": "ALLOW",
			"rule_id": "Default_Action", "user_agent": ua, "request_id": "rid-1", "client_key": "", "token_fp": ""}},
		{name: "header names in any case", line: rec("", hdrs("hOsT", "h.example", "USER-agent", ua, "AUTHORIZATION", "Bearer "+vendorTestToken, "X-API-KEY", vendorTestAPIKey)),
			want: map[string]string{"host": "h.example", "user_agent": ua, "token_fp": vendorFP(t, vendorTestToken), "client_key": vendorFP(t, vendorTestAPIKey)}},
		{name: "first non-empty header wins", line: rec("", hdrs("Host", "", "Host", "first.example", "host", "second.example")),
			want: map[string]string{"host": "first.example"}},
		{name: ":authority when no Host", line: rec("", hdrs(":authority", "h2.example")), want: map[string]string{"host": "h2.example"}},
		{name: "API key alone is client key and token", line: rec("", hdrs("x-api-key", vendorTestAPIKey)),
			want: map[string]string{"client_key": vendorFP(t, vendorTestAPIKey), "token_fp": vendorFP(t, vendorTestAPIKey)}},
		{name: "token scheme case does not matter", line: rec("", hdrs("authorization", "BEARER "+vendorTestToken)),
			want: map[string]string{"token_fp": vendorFP(t, vendorTestToken)}},
		{name: "device header wins over fingerprints", line: rec(`,"ja4Fingerprint":"t13d_x_y"`, hdrs("User-Agent", ua, "X-Device-ID", "dev-1")),
			want: map[string]string{"device": "dev-1"}},
		{name: "JA4 preferred over JA3", line: rec(`,"ja3Fingerprint":"e7d705a3286e19ea42f587b344ee6865","ja4Fingerprint":"t13d1516h2_8daaf6152771_b186095e22b6"`, hdrs("User-Agent", ua)),
			want: map[string]string{"device": string(appendDeviceHash(nil, ua, []byte("t13d1516h2_8daaf6152771_b186095e22b6")))}},
		{name: "JA3 when no JA4", line: rec(`,"ja3Fingerprint":"e7d705a3286e19ea42f587b344ee6865","ja4Fingerprint":null`, hdrs("User-Agent", ua)),
			want: map[string]string{"device": string(appendDeviceHash(nil, ua, []byte("e7d705a3286e19ea42f587b344ee6865")))}},
		{name: "BLOCK without responseCodeSent is 403", line: `{"timestamp":1741944413589,"action":"BLOCK","terminatingRuleId":"SQLi","responseCodeSent":null,"httpRequest":{"clientIp":"198.51.100.7"}}`,
			want: map[string]string{"status": "403", "action": "BLOCK", "rule_id": "SQLi"}},
		{name: "responseCodeSent is the status", line: `{"timestamp":1741944413589,"action":"BLOCK","terminatingRuleId":"RL","responseCodeSent":429,"httpRequest":{"clientIp":"198.51.100.7"}}`,
			want: map[string]string{"status": "429"}},
		{name: "ALLOW has no status", line: rec("", ""), want: map[string]string{"status": "0"}},
		{name: "country dash is unknown", line: strings.Replace(rec("", ""), `"DE"`, `"-"`, 1), want: map[string]string{"country": ""}},
		{name: "country lower case", line: strings.Replace(rec("", ""), `"DE"`, `"de"`, 1), want: map[string]string{"country": "DE"}},
		{name: "uri with a query", line: strings.Replace(rec("", ""), `"/v1/items/42"`, `"/p?x=1"`, 1), want: map[string]string{"path": "/p"}},
		{name: "escaped key names", line: `{"\u0074imestamp":1741944413589,"action":"BL\u004fCK","httpRequest":{"clientIp":"198.51.100.7"}}`, want: map[string]string{"action": "BLOCK", "status": "403"}},
		{name: "a token in clientIp is left out", line: strings.Replace(rec("", hdrs("x-api-key", vendorTestAPIKey)), `"198.51.100.7"`, `"`+vendorTestToken+`"`, 1),
			want: map[string]string{"client_ip": "", "client_key": vendorFP(t, vendorTestAPIKey)}},
		{name: "a junk method is left out", line: strings.Replace(rec("", ""), `"GET"`, `"`+strings.Repeat("GET", 16)+`"`, 1), want: map[string]string{"method": ""}},
		{name: "no client", line: `{"timestamp":1741944413589,"action":"BLOCK","httpRequest":{"uri":"/"}}`, reason: ReasonMissingField},
		{name: "no timestamp", line: `{"action":"ALLOW","httpRequest":{}}`, reason: ReasonMissingField},
		{name: "null timestamp", line: `{"timestamp":null}`, reason: ReasonMissingField},
		{name: "timestamp in 1970", line: `{"timestamp":1000}`, reason: ReasonBadTimestamp},
		{name: "timestamp negative", line: `{"timestamp":-1741944413589}`, reason: ReasonBadTimestamp},
		{name: "timestamp an object", line: `{"timestamp":{}}`, reason: ReasonBadTimestamp},
		{name: "status text", line: `{"timestamp":1741944413589,"responseCodeSent":"403","httpRequest":{"clientIp":"198.51.100.7"}}`, want: map[string]string{"status": "403"}},
		{name: "status not a code", line: `{"timestamp":1741944413589,"responseCodeSent":4030}`, reason: ReasonBadValue},
		{name: "status a fraction", line: `{"timestamp":1741944413589,"responseCodeSent":403.5}`, reason: ReasonBadValue},
		{name: "headers not a list", line: rec("", `,"headers":{"Host":"x"}`), reason: ReasonBadValue},
		{name: "header not an object", line: rec("", `,"headers":["Host: x"]`), reason: ReasonBadValue},
		{name: "credential of the wrong type", line: rec("", `,"headers":[{"name":"Authorization","value":["Bearer `+vendorTestToken+`"]}]`), reason: ReasonBadValue},
		{name: "action not text", line: `{"timestamp":1741944413589,"action":1}`, reason: ReasonBadValue},
		{name: "array", line: `[{"timestamp":1741944413589}]`, reason: ReasonInvalidJSON},
		{name: "truncated", line: `{"timestamp":1741944413589,"httpRequest":{"headers":[{"name":"Authorization","value":"Bearer ` + vendorTestToken, reason: ReasonInvalidJSON},
		{name: "empty", line: ``, reason: ReasonInvalidJSON},
		{name: "bad UTF-8", line: "{\"timestamp\":1741944413589,\"action\":\"\xff\",\"httpRequest\":{\"clientIp\":\"198.51.100.7\",\"httpMethod\":\"GET\"}}", reason: ReasonBadUTF8},
	}
	runVendorCases(t, FormatAWSWAF, testParserOptions(t), cases)

	opts := testParserOptions(t)
	opts.APIKeyHeader, opts.DeviceHeader = "X-Gw-Key", "X-Gw-Device"
	runVendorCases(t, FormatAWSWAF, opts, []vendorCase{
		{name: "configured headers", line: rec("", hdrs("x-gw-key", vendorTestAPIKey, "X-GW-DEVICE", "dev-9", "x-api-key", "other")),
			want: map[string]string{"client_key": vendorFP(t, vendorTestAPIKey), "device": "dev-9"}},
	})
}

func TestAWSWAFAllocs(t *testing.T) { checkVendorAllocs(t, FormatAWSWAF) }

func FuzzParseAWSWAF(f *testing.F) { fuzzVendorParser(f, FormatAWSWAF) }

func BenchmarkParseAWSWAF(b *testing.B) { benchVendorParser(b, FormatAWSWAF) }

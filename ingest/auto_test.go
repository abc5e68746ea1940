package ingest

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestRecogniseFormat(t *testing.T) {
	for _, tc := range []struct {
		name, line, want string
	}{
		{"awswaf by webaclId", `{"timestamp":1749892904517,"formatVersion":1,"webaclId":"arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/shop/abc","terminatingRuleId":"Default_Action","action":"ALLOW","httpRequest":{"clientIp":"203.0.113.1","country":"DE","headers":[],"uri":"/","httpMethod":"GET"}}`, FormatAWSWAF},
		{"awswaf without webaclId", `{"timestamp":1749892904517,"terminatingRuleId":"RateLimit","action":"BLOCK","httpRequest":{"clientIp":"203.0.113.1"}}`, FormatAWSWAF},
		{"cloudflare by EdgeStartTimestamp", `{"ClientIP":"203.0.113.2","ClientRequestMethod":"GET","EdgeResponseStatus":200,"EdgeStartTimestamp":1749892904517000000}`, FormatCloudflare},
		{"cloudflare by RayID", `{"RayID":"8a1b2c3d4e5f6071","ClientIP":"203.0.113.2"}`, FormatCloudflare},
		{"cloudflare by ClientRequestHost", `{"ClientRequestHost":"www.shop.example","EdgeResponseStatus":403}`, FormatCloudflare},
		{"kong", `{"request":{"method":"GET","uri":"/v1/items","headers":{"user-agent":"curl/8"}},"response":{"status":200},"client_ip":"203.0.113.3","started_at":1749892904517}`, FormatKong},
		{"kong with blanks", `{ "started_at" : 1749892904517, "request" : { "method" : "GET" } }`, FormatKong},
		{"kong needs the request object", `{"started_at":1749892904517,"request":"GET / HTTP/1.1"}`, ""},
		{"apigw REST", `{"requestId":"6b2c1d0e-aaaa-4bbb-8ccc-0d1e2f3a4b5c","ip":"203.0.113.4","requestTime":"14/Jun/2025:09:21:44 +0000","httpMethod":"GET","resourcePath":"/pets/{petId}","status":"200"}`, FormatAPIGateway},
		{"apigw HTTP API", `{"requestId":"GQIVriFLIAMEMsA=","routeKey":"GET /","status":"200"}`, FormatAPIGateway},
		{"apigw by method and ip", `{"requestId":"x1","httpMethod":"GET","ip":"203.0.113.4"}`, FormatAPIGateway},
		{"apigw epoch", `{"requestId":"x1","requestTimeEpoch":"1749892904517"}`, FormatAPIGateway},
		{"requestId alone is nothing", `{"requestId":"x1","status":"200"}`, ""},
		{"apigw snake_case (Centralized Logging with OpenSearch)", `{"request_id":"r1","client_ip":"203.0.113.4","request_time":"14/Jun/2025:09:21:44 +0000","http_method":"GET","resource_path":"/pets","status":"200"}`, FormatAPIGateway},
		{"apigw snake_case route key", `{"request_id":"r1","route_key":"GET /pets","status":"200"}`, FormatAPIGateway},
		{"nginx JSON with request_id and request_time", `{"request_id":"r1","request_time":"0.003","remote_addr":"203.0.113.6","status":"200"}`, FormatNginx},
		{"envoy Istio JSON", `{"authority":"a","downstream_remote_address":"203.0.113.5:1","method":"GET","path":"/","response_code":200,"start_time":"2025-06-14T09:21:44.517Z"}`, FormatEnvoy},
		{"envoy camelCase keys", `{"startTime":"2025-06-14T09:21:44.517Z","responseCode":"200"}`, FormatEnvoy},
		{"envoy header-style keys", `{"START_TIME":"2025-06-14T09:21:44.517Z"}`, FormatEnvoy},
		{"nginx JSON", `{"time_local":"14/Jun/2025:11:21:44 +0200","remote_addr":"203.0.113.6","request":"GET / HTTP/1.1","status":"200"}`, FormatNginx},
		{"nginx JSON request_uri", `{"msec":"1749892904.517","request_uri":"/a"}`, FormatNginx},
		{"envoy text", `[2025-06-14T09:24:00.310Z] "GET / HTTP/1.1" 200 - 0 0 1 - "-" "-" "-" "-" "-"`, FormatEnvoy},
		{"Emissary text", `ACCESS [2025-06-14T09:24:00.310Z] "GET / HTTP/1.1" 200 - 0 0 1 - "-" "-" "-" "-" "-"`, FormatEnvoy},
		{"ACCESS alone is no format", `ACCESS denied`, ""},
		{"nginx combined", `203.0.113.7 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 612 "-" "curl/8.7.1"`, FormatNginx},
		{"Apache combined with a host name", `crawl-66-249-66-1.googlebot.com - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 612 "-" "-"`, FormatNginx},
		{"nginx combined IPv6", `2001:db8::1 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 612 "-" "-"`, FormatNginx},
		{"nginx combined address list", `203.0.113.7, 10.0.0.1 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 612 "-" "-"`, FormatNginx},
		{"leading blanks", `   {"start_time":"2025-06-14T09:21:44.517Z"}`, FormatEnvoy},
		// A client cannot steer recognition through a value it controls.
		{"key names as values", `{"ua":"webaclId","ref":"RayID","x":"\"EdgeStartTimestamp\":1","start_time":"2025-06-14T09:21:44.517Z"}`, FormatEnvoy},
		{"escaped quote before a colon", `{"ua":"a\":b","remote_addr":"203.0.113.6"}`, FormatNginx},
		{"nginx user agent naming Envoy keys", `{"time_local":"14/Jun/2025:11:21:44 +0200","http_user_agent":"start_time: response_code:"}`, FormatNginx},
		{"Kong batch (a JSON array, which Kong's parser rejects)", `[{"started_at":1749892904517,"request":{}}]`, FormatKong},
		{"other JSON array", `[{"start_time":"2025-06-14T09:21:44.517Z"}]`, ""},
		{"unknown JSON", `{"hello":"world"}`, ""},
		{"JSON scalar", `"start_time"`, ""},
		{"plain text", `this is not an access log line`, ""},
		{"Apache with an identd answer", `127.0.0.1 user-identity frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326`, FormatNginx},
		{"nginx error log", `2025/06/14 11:21:44 [error] 31#31: *1 open() "/usr/share/nginx/html/x" failed`, ""},
		{"vhost prefix", `www.shop.example 203.0.113.5 - - [14/Jun/2025:09:22:00 +0000] "GET / HTTP/1.1" 200 612`, FormatNginx},
		{"empty", ``, ""},
		{"blank", " \t ", ""},
	} {
		if got := recogniseFormat([]byte(tc.line)); got != tc.want {
			t.Errorf("%s: recogniseFormat(%q) = %q, want %q", tc.name, tc.line, got, tc.want)
		}
	}
}

// TestAutoMatchesEnvoyAndNginx parses every Envoy and nginx sample with auto and with
// the format's own parser: the outcomes must be the same, down to the rejection reason
// of records auto recognises.
func TestAutoMatchesEnvoyAndNginx(t *testing.T) {
	auto := mustParser(t, FormatAuto)
	for _, format := range []string{FormatEnvoy, FormatNginx} {
		direct := mustParser(t, format)
		paths, _ := filepath.Glob("testdata/" + format + "/*.log")
		for _, path := range paths {
			for _, line := range readLogRecords(t, path) {
				var want, got Event
				werr := direct.Parse(&want, line)
				gerr := auto.Parse(&got, line)
				switch {
				case werr == nil && gerr != nil:
					t.Errorf("%s: auto rejected %q (%v), %s accepts it", path, line, gerr, format)
				case werr == nil && !bytes.Equal(got.AppendJSON(nil), want.AppendJSON(nil)):
					t.Errorf("%s: auto gave %s\nwant %s", path, got.AppendJSON(nil), want.AppendJSON(nil))
				case werr != nil && gerr == nil:
					t.Errorf("%s: auto accepted %q, %s rejects it (%v)", path, line, format, werr)
				case werr != nil && ReasonOf(gerr) != ReasonOf(werr) && ReasonOf(gerr) != ReasonUnknownFormat:
					t.Errorf("%s: auto rejected %q as %s, %s as %s", path, line, ReasonOf(gerr), format, ReasonOf(werr))
				}
			}
		}
	}
}

func TestAutoRejects(t *testing.T) {
	opts := testParserOptions(t)
	opts.MaxLineBytes = 512
	p, err := NewParser(FormatAuto, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, line, reason string
	}{
		{"unknown JSON", `{"hello":"world","authorization":"Bearer gwt_auto_secret_123456"}`, ReasonUnknownFormat},
		{"plain text", `GET / HTTP/1.1`, ReasonUnknownFormat},
		{"empty", ``, ReasonUnknownFormat},
		{"oversized", `{"start_time":"` + strings.Repeat("9", 600) + `"}`, ReasonOversized},
		{"oversized junk", strings.Repeat("x", 600), ReasonOversized},
		{"bad UTF-8 unknown", "\xff\xfe junk", ReasonUnknownFormat}, // repaired, still nothing known
		{"bad UTF-8 in a recognised record", "{\"start_time\":\"2025-06-14T09:21:44.517Z\",\"response_code\":200,\"downstream_remote_address\":\"198.51.100.9:1\",\"user_agent\":\"\xff\"}", ReasonBadUTF8},
		{"recognised, then rejected by its parser", `{"start_time":"-","response_code":200}`, ReasonMissingField},
	} {
		var ev Event
		err := p.Parse(&ev, []byte(tc.line))
		if got := ReasonOf(err); got != tc.reason {
			t.Errorf("%s: Parse = %v, want reason %s", tc.name, err, tc.reason)
		}
		if err != nil && strings.Contains(err.Error(), "gwt_auto_secret") {
			t.Errorf("%s: error %q quotes the record", tc.name, err)
		}
	}
}

// TestParseAllocs holds the hot-path budget: at most two allocations per record for
// every Envoy and nginx variant, directly and through auto (the arena's 32 KiB chunk,
// shared by dozens of records, is the only steady-state allocation).
func TestParseAllocs(t *testing.T) {
	for _, tc := range []struct{ format, path string }{
		{FormatEnvoy, "testdata/envoy/istio-json.log"},
		{FormatEnvoy, "testdata/envoy/json-format.log"},
		{FormatEnvoy, "testdata/envoy/default-text.log"},
		{FormatNginx, "testdata/nginx/combined.log"},
		{FormatNginx, "testdata/nginx/json.log"},
	} {
		for _, format := range []string{tc.format, FormatAuto} {
			p := mustParser(t, format)
			var ev Event
			var lines [][]byte
			for _, line := range readLogRecords(t, tc.path) {
				if p.Parse(&ev, line) == nil { // every record of these files parses
					lines = append(lines, line)
				}
			}
			if len(lines) == 0 {
				t.Fatalf("%s: no record parses as %s", tc.path, format)
			}
			allocs := testing.AllocsPerRun(200, func() {
				for _, line := range lines {
					if err := p.Parse(&ev, line); err != nil {
						t.Fatal(err)
					}
				}
			})
			if perRecord := allocs / float64(len(lines)); perRecord > 2 {
				t.Errorf("%s as %s: %.2f allocations per record, want at most 2", tc.path, format, perRecord)
			}
		}
	}
}

func FuzzParseAuto(f *testing.F) {
	addLogSeeds(f, "testdata/*/*.log")
	p := mustParser(f, FormatAuto)
	f.Fuzz(func(t *testing.T, line []byte) { fuzzParse(t, p, line) })
}

// BenchmarkParseAuto parses a mix of Envoy and nginx records (JSON and text) through
// auto, so recognition and dispatch are part of the cost.
func BenchmarkParseAuto(b *testing.B) {
	lines := [][]byte{
		firstLogRecord(b, "testdata/envoy/istio-json.log"),
		firstLogRecord(b, "testdata/envoy/default-text.log"),
		firstLogRecord(b, "testdata/nginx/combined.log"),
		firstLogRecord(b, "testdata/nginx/json.log"),
	}
	p, ev := mustParser(b, FormatAuto), new(Event)
	size := 0
	for _, line := range lines {
		if err := p.Parse(ev, line); err != nil {
			b.Fatal(err)
		}
		size += len(line)
	}
	b.SetBytes(int64(size / len(lines)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := p.Parse(ev, lines[i%len(lines)]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// TestWrongFormatGivesNoEvent reads every testdata record of each format with every other
// format's parser, as an operator who picked the wrong --format would: no record may
// become an event (AWS WAF read as nginx once gave events with a time and nothing else,
// which every detector ignored while the run reported success).
func TestWrongFormatGivesNoEvent(t *testing.T) {
	for _, written := range Formats[1:] {
		own := mustParser(t, written)
		var lines [][]byte // the records of the format (its testdata also holds rejects)
		for _, line := range vendorFixtureLines(t, written) {
			var ev Event
			if err := own.Parse(&ev, line); err == nil || Kept(err) {
				lines = append(lines, line)
			}
		}
		for _, read := range Formats[1:] {
			if read == written {
				continue
			}
			p := mustParser(t, read)
			for _, line := range lines {
				var ev Event
				err := p.Parse(&ev, line)
				if err == nil || Kept(err) {
					t.Errorf("%s record read as %s became an event: %s\n  record: %.200s", written, read, ev.AppendJSON(nil), line)
				}
			}
		}
	}
}

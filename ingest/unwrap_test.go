package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// envelopes put a log line in each envelope a container runtime or shipper writes
// (see unwrapper), shaped as those tools write them.
var envelopes = []struct {
	name string
	wrap func(line string) string
}{
	{"docker json-file", func(l string) string {
		return mustJSON(map[string]any{"log": l + "\n", "stream": "stdout", "time": "2025-06-14T09:21:44.517312345Z"})
	}},
	{"docker json-file with attrs", func(l string) string {
		return mustJSON(map[string]any{"log": l + "\n", "stream": "stderr", "attrs": map[string]string{"tag": "gw"}, "time": "2025-06-14T09:21:44.517312345Z"})
	}},
	{"CRI", func(l string) string { return "2025-06-14T09:21:44.517312345Z stdout F " + l }},
	{"CRI with more tags", func(l string) string { return "2025-06-14T09:21:44.517312345+00:00 stderr F:x " + l }},
	{"filebeat", func(l string) string {
		return mustJSON(map[string]any{"@timestamp": "2025-06-14T09:21:44.602Z", "log": map[string]any{"offset": 48213, "file": map[string]string{"path": "/var/log/gw/access.log"}},
			"message": l, "input": map[string]string{"type": "filestream"}, "host": map[string]string{"name": "shipper-1"}})
	}},
	{"vector", func(l string) string {
		return mustJSON(map[string]any{"file": "/var/log/gw/access.log", "host": "vector-0", "message": l, "source_type": "file", "timestamp": "2025-06-14T09:21:44.6Z"})
	}},
	{"fluent bit cri", func(l string) string {
		return mustJSON(map[string]any{"time": "2025-06-14T09:21:44.517312345Z", "stream": "stdout", "logtag": "F", "log": l,
			"kubernetes": map[string]any{"pod_name": "gw-0", "namespace_name": "edge", "host": "node-1"}})
	}},
	{"filebeat around docker", func(l string) string {
		return mustJSON(map[string]any{"@timestamp": "2025-06-14T09:21:44.602Z", "message": mustJSON(map[string]any{"log": l + "\n", "stream": "stdout", "time": "2025-06-14T09:21:44.5Z"})})
	}},
	{"vector around CRI", func(l string) string {
		return mustJSON(map[string]any{"file": "/var/log/pods/edge_gw-0/gw/0.log", "message": "2025-06-14T09:21:44.517312345Z stdout F " + l, "source_type": "file"})
	}},
	{"syslog file (RFC 3164)", func(l string) string { return "Jun 14 09:21:44 web1 nginx[812]: " + l }},
	{"syslog file, day under 10", func(l string) string { return "Jun  4 09:21:44 web1 gw: " + l }},
	{"syslog high-precision file", func(l string) string { return "2025-06-14T09:21:44.517312+02:00 web1 nginx: " + l }},
	{"syslog RFC 3164 forwarded", func(l string) string { return "<190>Jun 14 09:21:44 web1 kong[1]: " + l }},
	{"syslog RFC 5424", func(l string) string { return "<190>1 2025-06-14T09:21:44.517Z web1 envoy 812 - - " + l }},
	{"syslog RFC 5424 with structured data", func(l string) string {
		return `<190>1 2025-06-14T09:21:44.517Z web1 gw - access [origin ip="10.0.0.5"][meta x="a\]b"] ` + "\ufeff" + l
	}},
	{"filebeat around syslog", func(l string) string {
		return mustJSON(map[string]any{"@timestamp": "2025-06-14T09:21:44.602Z", "message": "Jun 14 09:21:44 web1 nginx: " + l})
	}},
}

func mustJSON(v any) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// TestEnvelopesAreTakenOffForEveryFormat wraps every record of every format's testdata in
// every envelope and parses it with the format's parser and with auto: the outcome must
// be the one of the bare record, event for event and reason for reason.
func TestEnvelopesAreTakenOffForEveryFormat(t *testing.T) {
	for _, format := range Formats[1:] {
		for _, as := range []string{format, FormatAuto} {
			p := mustParser(t, as)
			for _, line := range vendorFixtureLines(t, format) {
				var bare Event
				berr := p.Parse(&bare, line)
				want := string(bare.AppendJSON(nil))
				for _, env := range envelopes {
					wrapped := env.wrap(string(line))
					var ev Event
					err := p.Parse(&ev, []byte(wrapped))
					switch {
					case berr == nil && err != nil:
						t.Errorf("%s as %s in %s: %v\n  record: %.200s", format, as, env.name, err, wrapped)
					case berr == nil && string(ev.AppendJSON(nil)) != want:
						t.Errorf("%s as %s in %s: %s\n  want %s", format, as, env.name, ev.AppendJSON(nil), want)
					case berr != nil && err == nil:
						t.Errorf("%s as %s in %s: accepted a record rejected bare (%v)", format, as, env.name, berr)
					}
				}
			}
		}
	}
}

func TestUnwrap(t *testing.T) {
	const combined = `203.0.113.7 - - [14/Jun/2025:11:21:44 +0200] "GET /a HTTP/1.1" 200 612 "-" "curl/8.7.1"`
	for _, tc := range []struct {
		name, in, want string
		partial        bool
	}{
		{name: "docker", in: `{"log":"` + strings.ReplaceAll(combined, `"`, `\"`) + `\n","stream":"stdout","time":"2025-06-14T09:21:44.1Z"}`, want: combined},
		{name: "docker CRLF", in: `{"log":"` + strings.ReplaceAll(combined, `"`, `\"`) + `\r\n","stream":"stdout","time":"2025-06-14T09:21:44.1Z"}`, want: combined},
		{name: "docker part", in: `{"log":"203.0.113.7 - - [14/Jun/2025:11:21:44 +0200] \"GET /aaaa","stream":"stdout","time":"2025-06-14T09:21:44.1Z"}`, partial: true},
		{name: "CRI", in: "2025-06-14T09:21:44.123456789Z stdout F " + combined, want: combined},
		{name: "CRI part", in: "2025-06-14T09:21:44.123456789Z stdout P 203.0.113.7 - - [14/Jun", partial: true},
		{name: "fluent bit part", in: `{"time":"x","stream":"stdout","logtag":"P","log":"{\"start_time\":"}`, partial: true},
		{name: "CRI with an unknown tag", in: "2025-06-14T09:21:44.123456789Z stdout X " + combined},
		{name: "CRI with an unknown stream", in: "2025-06-14T09:21:44.123456789Z stdin F " + combined},
		{name: "not a CRI time", in: "2025/06/14 stdout F " + combined},
		{name: "syslog", in: "Jun 14 09:21:44 web1 nginx: " + combined, want: combined},
		{name: "syslog RFC 5424", in: "<134>1 2025-06-14T09:21:44Z web1 nginx - - - " + combined, want: combined},
		{name: "syslog without a tag", in: "Jun 14 09:21:44 web1 " + combined},
		{name: "syslog month that is none", in: "Jux 14 09:21:44 web1 nginx: " + combined},
		{name: "syslog with no record", in: "Jun 14 09:21:44 web1 sshd[1]: Accepted publickey for root"},
		{name: "RFC 5424 unterminated structured data", in: `<134>1 2025-06-14T09:21:44Z web1 nginx - - [x a="1" ` + combined},
		{name: "message that is no record", in: `{"@timestamp":"2025-06-14T09:21:44Z","message":"no healthy upstream"}`},
		{name: "message not a string", in: `{"message":{"start_time":"2025-06-14T09:21:44Z"}}`},
		{name: "log object (Filebeat's metadata)", in: `{"log":{"file":{"path":"/x"}},"message":"hello"}`},
		{name: "message before log", in: `{"message":"` + strings.ReplaceAll(combined, `"`, `\"`) + `","log":{"offset":1}}`, want: combined},
		{name: "invalid JSON", in: `{"log":"` + combined},
		{name: "plain record", in: combined},
		{name: "empty", in: ``},
		{name: "deeper than three envelopes stops", in: nest(combined, 4), want: nest(combined, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var u unwrapper
			got, err := u.unwrap([]byte(tc.in))
			if tc.partial {
				if ReasonOf(err) != ReasonBadSyntax {
					t.Fatalf("unwrap = %q, %v, want a partial-line bad_syntax", got, err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("unwrap = %q, %v, want %q", got, err, tc.want)
			}
		})
	}
}

// nest wraps line in n Filebeat envelopes.
func nest(line string, n int) string {
	for range n {
		line = mustJSON(map[string]string{"message": line})
	}
	return line
}

// TestUnwrapAllocs holds the unwrapping of an envelope at no allocation once warm.
func TestUnwrapAllocs(t *testing.T) {
	const combined = `203.0.113.7 - - [14/Jun/2025:11:21:44 +0200] "GET /a HTTP/1.1" 200 612 "-" "curl/8.7.1"`
	for _, env := range envelopes {
		in := []byte(env.wrap(combined))
		var u unwrapper
		if n := testing.AllocsPerRun(100, func() { _, _ = u.unwrap(in) }); n > 0 {
			t.Errorf("%s: unwrap allocates %.0f times", env.name, n)
		}
	}
}

// FuzzUnwrap checks the unwrapping layer on any input: it never panics, never returns
// more than it was given, and for any line put in any envelope gives the line back
// (unless the line is an envelope itself, which is then opened too).
func FuzzUnwrap(f *testing.F) {
	addLogSeeds(f, "testdata/*/*.log")
	f.Add([]byte("2025-06-14T09:21:44.123456789Z stdout P part"))
	f.Add([]byte(`{"log":"x\n","stream":"stdout","time":"t"}`))
	f.Add([]byte(`Jun  4 09:21:44 web1 nginx[812]: 203.0.113.7 - - [14/Jun/2025:11:21:44 +0200] "GET / HTTP/1.1" 200 1`))
	f.Add([]byte(`<190>1 2025-06-14T09:21:44Z web1 gw - - [a b="c\]"] {"start_time":"2025-06-14T09:21:44Z"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var u unwrapper
		got, err := u.unwrap(line)
		if err != nil && ReasonOf(err) != ReasonBadSyntax {
			t.Fatalf("unwrap(%q): %v", line, err)
		}
		if len(got) > len(line) {
			t.Fatalf("unwrap(%q) = %q, longer than its input", line, got)
		}
		inner := trimRecord(line)
		if !utf8.Valid(inner) || bytes.ContainsAny(inner, "\r\n") || !looksLikeRecord(inner) {
			return // no envelope holds it as it is
		}
		if again, partial := u.open(inner); again != nil || partial {
			return // an envelope itself: opened further
		}
		for _, env := range envelopes {
			wrapped := env.wrap(string(inner))
			got, err := u.unwrap([]byte(wrapped))
			if err != nil || !bytes.Equal(got, inner) {
				t.Fatalf("%s: unwrap(%q) = %q, %v, want %q", env.name, wrapped, got, err, inner)
			}
		}
	})
}

// TestStderrLinesAreSetAside: a line a container wrote to stderr that is no record is
// rejected as stderr, not as a record of the wrong format; an access log a container
// writes to stderr is parsed as any other.
func TestStderrLinesAreSetAside(t *testing.T) {
	const combined = `203.0.113.7 - - [14/Jun/2025:11:21:44 +0200] "GET /v1/items/1 HTTP/1.1" 200 512 "-" "curl/8.5.0"`
	const notice = "2025/06/14 09:21:44 [notice] 1#1: start worker processes"
	for _, tc := range []struct {
		name, line, reason string
	}{
		{"CRI stderr notice", "2025-06-14T09:21:44.517312345Z stderr F " + notice, ReasonStderr},
		{"Docker stderr notice", `{"log":"` + notice + `\n","stream":"stderr","time":"2025-06-14T09:21:44.517Z"}`, ReasonStderr},
		{"CRI stderr access log", "2025-06-14T09:21:44.517312345Z stderr F " + combined, ""},
		{"CRI stdout notice", "2025-06-14T09:21:44.517312345Z stdout F " + notice, ReasonUnknownFormat},
		{"bare notice", notice, ReasonUnknownFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ev Event
			err := mustParser(t, FormatAuto).Parse(&ev, []byte(tc.line))
			var pe *ParseError
			switch {
			case tc.reason == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case tc.reason != "" && (!errors.As(err, &pe) || pe.Reason != tc.reason):
				t.Errorf("error %v, want reason %s", err, tc.reason)
			}
		})
	}
}

package syslog

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzEscaping checks that the escapers keep attacker-controlled text (keys, paths,
// summaries) inside its field: no line break survives, and unescaping gives the input
// back, so nothing can be injected and nothing is lost.
func FuzzEscaping(f *testing.F) {
	for _, s := range []string{"", "plain", `a"b\c]d`, "a=b\\c\nd\re|f", "CEF:0|x|y", "é\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v := string(appendCEFValue(nil, s))
		if strings.ContainsAny(v, "\r\n") {
			t.Fatalf("CEF value %q keeps a line break: %q", s, v)
		}
		if got := unescape(v, map[byte]byte{'\\': '\\', '=': '=', 'n': '\n', 'r': '\r'}); got != s {
			t.Fatalf("CEF value %q escaped to %q unescapes to %q", s, v, got)
		}
		h := string(appendCEFHeader(nil, s))
		if strings.ContainsAny(h, "\r\n") {
			t.Fatalf("CEF header %q keeps a line break: %q", s, h)
		}
		if got, want := unescape(h, map[byte]byte{'\\': '\\', '|': '|'}), strings.NewReplacer("\r", " ", "\n", " ").Replace(s); got != want {
			t.Fatalf("CEF header %q escaped to %q unescapes to %q", s, h, got)
		}
		if !utf8.ValidString(s) {
			return
		}
		p := string(appendParamValue(nil, s))
		if got := unescape(p, map[byte]byte{'\\': '\\', '"': '"', ']': ']'}); got != s {
			t.Fatalf("PARAM-VALUE %q escaped to %q unescapes to %q", s, p, got)
		}
	})
}

// unescape undoes a backslash escaping whose escape sequences are in seq; it fails
// (returns a marker) on a lone backslash or an unknown sequence, and on an unescaped
// character that seq says must be escaped.
func unescape(s string, seq map[byte]byte) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			if _, special := seq[c]; special && c != 'n' && c != 'r' {
				return "\x00unescaped " + string(c)
			}
			b.WriteByte(c)
			continue
		}
		if i+1 == len(s) {
			return "\x00lone backslash"
		}
		r, ok := seq[s[i+1]]
		if !ok {
			return "\x00unknown escape"
		}
		b.WriteByte(r)
		i++
	}
	return b.String()
}

package slack

import (
	"strings"
	"testing"
)

// FuzzEscape checks that text from requests cannot format a Slack message: escaped
// mrkdwn has no < or > (mentions, links), and a code span has no backquote inside.
func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "/v1/<!channel>", "<https://evil|x>", "a`b", "&amp;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if e := escape(s); strings.ContainsAny(e, "<>") {
			t.Fatalf("escape(%q) = %q keeps < or >", s, e)
		}
		c := code(s)
		if len(c) < 2 || c[0] != '`' || c[len(c)-1] != '`' {
			if s != "" {
				t.Fatalf("code(%q) = %q is not one code span", s, c)
			}
			return
		}
		if inner := c[1 : len(c)-1]; strings.ContainsAny(inner, "`<>") {
			t.Fatalf("code(%q) = %q has a backquote, < or > inside", s, c)
		}
	})
}

package ingest

import (
	"net/netip"
	"testing"
)

func TestSplitTarget(t *testing.T) {
	for _, tc := range []struct{ method, in, host, path string }{
		{"GET", "/a/b?c=d#e", "", "/a/b"},
		{"GET", "/", "", "/"},
		{"OPTIONS", "*", "", "*"},
		{"GET", "http://host.example/a/b?x=1", "host.example", "/a/b"},
		{"GET", "HTTPS://host.example:8443", "host.example:8443", "/"},
		{"GET", "http://host.example?x", "host.example", "/"},
		{"GET", "http://[2001:db8::1]:8080/x", "[2001:db8::1]:8080", "/x"},
		{"GET", "http://admin:hunter2@proxy.example:3128/", "proxy.example:3128", "/"}, // userinfo is a credential
		{"GET", "http://bad host/x", "", "/x"},
		{"CONNECT", "api.example:443", "api.example:443", ""},
		{"connect", "203.0.113.9:25", "203.0.113.9:25", ""},
		{"CONNECT", "[2001:db8::1]:443", "[2001:db8::1]:443", ""},
		{"GET", "host.example:443", "", ""}, // authority form only for CONNECT
		{"CONNECT", "host.example:99999", "", ""},
		{"CONNECT", "a b:443", "", ""},
		{"GET", "", "", ""},
		{"GET", "-", "", ""},
		{"GET", "javascript:alert(1)", "", ""},
		{"GET", "../../etc/passwd", "", ""},
	} {
		host, path := splitTarget([]byte(tc.method), []byte(tc.in))
		if string(host) != tc.host || string(path) != tc.path {
			t.Errorf("splitTarget(%q, %q) = %q, %q, want %q, %q", tc.method, tc.in, host, path, tc.host, tc.path)
		}
	}
}

func TestIsHostName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"crawl-66-249-66-1.googlebot.com", true},
		{"ec2-54-12-34-56.eu-west-1.compute.amazonaws.com", true},
		{"HOST-1.EXAMPLE.NET", true},
		{"localhost", true},
		{"monitoring-server", true},                         // one label: a machine of the local network
		{"10.1.2.300", false},                               // numeric top-level label
		{"host.example.", false},                            // trailing dot
		{"-bad.example.com", false},                         // leading hyphen
		{"under_score.example.com", false},                  // not a host name character
		{"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", false}, // a JWT: mixed case
		{"sk_live_4eC39HqLyjWDarjtT1zdp7dc", false},
		{"a." + string(make([]byte, 64)), false},
		{"", false},
	} {
		if got := isHostName([]byte(tc.in)); got != tc.want {
			t.Errorf("isHostName(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestClientFieldsAreValidated(t *testing.T) {
	b := newBase(testParserOptions(t))
	for _, tc := range []struct {
		in       string
		ip, host string // what setClientIP and setClientHost store
	}{
		{"203.0.113.7", "203.0.113.7", "203.0.113.7"},
		{"203.0.113.7:443", "203.0.113.7", "203.0.113.7"},
		{"[2001:db8::1]:443", "2001:db8::1", "2001:db8::1"},
		{"203.0.113.7, 10.0.0.2", "203.0.113.7", "203.0.113.7"},
		{"fe80::1%eth0", "fe80::1", "fe80::1"},
		{"::ffff:192.0.2.1", "192.0.2.1", "192.0.2.1"},
		{"2001:DB8::1", "2001:db8::1", "2001:db8::1"},
		// Lists: the rightmost address that is not private, else the leftmost.
		{"10.0.0.2, 10.0.0.1, 127.0.0.1", "10.0.0.2", "10.0.0.2"},
		{"10.0.0.2, 10.0.0.1, 67.43.156.14", "67.43.156.14", "67.43.156.14"},
		{"198.51.100.1, 203.0.113.7, 10.0.0.2", "203.0.113.7", "203.0.113.7"}, // the leftmost may be forged
		{"2a02:cf40::1, 10.225.192.17 10.2.2.121", "2a02:cf40::1", "2a02:cf40::1"},
		{`"10.5.102.222, 199.96.1.1, 204.246.1.1" 10.2.1.185`, "204.246.1.1", "204.246.1.1"},
		{"unknown, 203.0.113.7:5120", "203.0.113.7", "203.0.113.7"},
		{"203.0.113.7, 100.64.1.2", "203.0.113.7", "203.0.113.7"}, // shared address space
		{"localhost, localhost", "", "localhost"},
		{"crawl-66-249-66-1.googlebot.com", "", "crawl-66-249-66-1.googlebot.com"},
		{"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "", ""},
		{"gwtest-key-Zk3Pq8Wm2Lr5Tn7Y", "", ""},
		{"unknown", "", ""},
		{"unix:/var/run/envoy.sock", "", ""},
		{"-", "", ""},
		{"", "", ""},
	} {
		var ev Event
		b.setClientIP(&ev, []byte(tc.in))
		if ev.ClientIP != tc.ip {
			t.Errorf("setClientIP(%q) stored %q, want %q", tc.in, ev.ClientIP, tc.ip)
		}
		ev = Event{}
		b.setClientHost(&ev, []byte(tc.in), nil)
		if ev.ClientIP != tc.host {
			t.Errorf("setClientHost(%q) stored %q, want %q", tc.in, ev.ClientIP, tc.host)
		}
	}
	// A peer of the operator's own network forwarded the request: the client is among
	// the hops X-Forwarded-For names. Any other peer is the client.
	for _, tc := range []struct{ peer, xff, want string }{
		{"203.0.113.7", "198.51.100.1", "203.0.113.7"},
		{"10.0.0.5", "198.51.100.7, 10.0.0.2", "198.51.100.7"},
		{"10.0.0.5:41000", "198.51.100.1, 198.51.100.7", "198.51.100.7"},
		{"127.0.0.1", "10.1.1.1", "10.1.1.1"},
		{"10.0.0.5", "-", "10.0.0.5"},
		{"10.0.0.5", "", "10.0.0.5"},
		{"10.0.0.5", "unknown", "10.0.0.5"},
		{"", "198.51.100.7", "198.51.100.7"},
		{"unix:/var/run/nginx.sock", "198.51.100.7", "198.51.100.7"},
		{"", "", ""},
	} {
		var ev Event
		b.setClientBehind(&ev, []byte(tc.peer), []byte(tc.xff))
		if ev.ClientIP != tc.want {
			t.Errorf("setClientBehind(%q, %q) stored %q, want %q", tc.peer, tc.xff, ev.ClientIP, tc.want)
		}
	}
	// Behind a CDN whose edges are in ingest.trusted_proxies, the client is the hop
	// before the edge, not a forged entry before it.
	o := testParserOptions(t)
	o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("204.246.164.0/22")}
	cdn := newBase(o)
	for _, tc := range []struct{ peer, xff, want string }{
		{"", "192.0.2.66, 198.51.100.7, 204.246.164.9", "198.51.100.7"},
		{"204.246.165.1", "198.51.100.7", "198.51.100.7"},
		{"10.2.1.185", "10.5.102.222, 198.51.100.7, 204.246.164.9", "198.51.100.7"},
		{"203.0.113.1", "198.51.100.7", "203.0.113.1"}, // not an edge: the client
	} {
		var ev Event
		cdn.setClientBehind(&ev, []byte(tc.peer), []byte(tc.xff))
		if ev.ClientIP != tc.want {
			t.Errorf("behind the CDN, setClientBehind(%q, %q) stored %q, want %q", tc.peer, tc.xff, ev.ClientIP, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"GET", "GET"},
		{"PROPFIND", "PROPFIND"},
		{"VERSION-CONTROL", "VERSION-CONTROL"},
		{"get", "get"},
		{"GETGETGETGETGETGETGETGETGETGETGETGETGETGETGETGET", ""}, // 48 characters
		{"G3T", ""},
		{"-", ""},
		{"\x16\x03\x01", ""}, // a TLS handshake sent to a plain-HTTP port
	} {
		var ev Event
		b.setMethod(&ev, []byte(tc.in))
		if ev.Method != tc.want {
			t.Errorf("setMethod(%q) stored %q, want %q", tc.in, ev.Method, tc.want)
		}
	}
}

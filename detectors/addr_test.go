package detectors

import (
	"testing"

	"github.com/gatewatch/gatewatch/ingest"
)

func TestAddrKey(t *testing.T) {
	for _, tc := range []struct{ ip, want string }{
		{"203.0.113.7", "203.0.113.7"},
		{"monitoring-server", "monitoring-server"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64"},
		{"2001:db8::1", "2001:db8::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"::ffff:192.0.2.1", "::ffff:192.0.2.1"}, // parsers write it as 192.0.2.1
		{"not:an:address", "not:an:address"},
		{"", ""},
	} {
		var buf AddrBuf
		if got := AddrKey(tc.ip, &buf); got != tc.want {
			t.Errorf("AddrKey(%q) = %q, want %q", tc.ip, got, tc.want)
		}
		if !isIP(AddrKey(tc.ip, &buf)) && isIP(tc.ip) {
			t.Errorf("isIP(AddrKey(%q)) = false", tc.ip)
		}
	}
	var buf AddrBuf
	ev := ingest.Event{ClientIP: "2001:db8:1:2::9"}
	if k, byIP := ClientOf(&ev, &buf); k != "2001:db8:1:2::/64" || !byIP {
		t.Errorf("ClientOf = %q, %v", k, byIP)
	}
	if k, byKey := HostOf(&ev, &buf); k != "2001:db8:1:2::/64" || byKey {
		t.Errorf("HostOf = %q, %v", k, byKey)
	}
	ev.ClientKey = "k1"
	if k, byIP := ClientOf(&ev, &buf); k != "k1" || byIP {
		t.Errorf("ClientOf with a key = %q, %v", k, byIP)
	}
	if allocs := testing.AllocsPerRun(100, func() { AddrKey("2001:db8:1:2::9", &buf) }); allocs > 0 {
		t.Errorf("AddrKey allocates %.0f times", allocs)
	}
}

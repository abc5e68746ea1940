package ingest_test

import (
	"net/netip"
	"testing"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/geoiptest"
)

var testNetworks = map[string]string{
	"203.0.113.0/24":  "DE",
	"198.51.100.0/25": "FR",
	"2001:db8::/32":   "JP",
	"192.0.2.0/24":    "registered:US",
}

func TestGeoIPCountry(t *testing.T) {
	g, err := ingest.OpenGeoIP(geoiptest.File(t, testNetworks))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, tc := range []struct{ ip, want string }{
		{"203.0.113.7", "DE"},
		{"203.0.113.7", "DE"}, // second lookup comes from the cache
		{"198.51.100.1", "FR"},
		{"198.51.100.200", ""}, // outside the /25
		{"2001:db8::1", "JP"},
		{"::ffff:203.0.113.9", "DE"}, // IPv4-mapped IPv6
		{"192.0.2.1", "US"},          // registered country stands in
		{"8.8.8.8", ""},
	} {
		if got := g.Country(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("Country(%s) = %q, want %q", tc.ip, got, tc.want)
		}
	}
}

func TestGeoIPFillsCountryOnlyWhenTheLogHasNone(t *testing.T) {
	g, err := ingest.OpenGeoIPBytes(geoiptest.Bytes(t, testNetworks))
	if err != nil {
		t.Fatal(err)
	}
	secret, _ := ingest.NewTokenSecret([]byte("0123456789abcdef0123"))
	p, err := ingest.NewParser(ingest.FormatNginx, ingest.ParserOptions{Secret: secret, GeoIP: g})
	if err != nil {
		t.Fatal(err)
	}
	var ev ingest.Event
	line := []byte(`203.0.113.50 - - [07/Dec/2024:10:34:43 +0100] "GET /v1/users/42 HTTP/1.1" 200 571 "-" "curl/8.5.0"`)
	if err := p.Parse(&ev, line); err != nil {
		t.Fatal(err)
	}
	if ev.Country != "DE" {
		t.Errorf("nginx record from 203.0.113.50: country %q, want DE from GeoIP", ev.Country)
	}
}

func TestOpenGeoIPErrors(t *testing.T) {
	if _, err := ingest.OpenGeoIP("testdata/does-not-exist.mmdb"); err == nil {
		t.Error("OpenGeoIP of a missing file succeeded")
	}
	if _, err := ingest.OpenGeoIPBytes([]byte("not a database")); err == nil {
		t.Error("OpenGeoIPBytes of junk succeeded")
	}
}

func BenchmarkGeoIPCountry(b *testing.B) {
	g, err := ingest.OpenGeoIPBytes(geoiptest.Bytes(b, testNetworks))
	if err != nil {
		b.Fatal(err)
	}
	ip := netip.MustParseAddr("203.0.113.7")
	b.ReportAllocs()
	for b.Loop() {
		if g.Country(ip) != "DE" {
			b.Fatal("wrong country")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}

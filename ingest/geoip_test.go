package ingest_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/maxmind/mmdbwriter/mmdbtype"

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
	flat := map[string]string{"203.0.113.0/24": "DE", "198.51.100.0/25": "fr", "2001:db8::/32": "JP"}
	for _, db := range []struct {
		name  string
		bytes []byte
	}{
		{"MaxMind schema (country.iso_code)", geoiptest.Bytes(t, testNetworks)},
		{"flat schema (country_code, ip-location-db)", geoiptest.FlatBytes(t, flat)},
	} {
		t.Run(db.name, func(t *testing.T) {
			g, err := ingest.OpenGeoIP(geoiptest.WriteFile(t, db.bytes))
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
				{"8.8.8.8", ""},
			} {
				if got := g.Country(netip.MustParseAddr(tc.ip)); got != tc.want {
					t.Errorf("Country(%s) = %q, want %q", tc.ip, got, tc.want)
				}
			}
		})
	}
	g, err := ingest.OpenGeoIPBytes(geoiptest.Bytes(t, testNetworks))
	if err != nil {
		t.Fatal(err)
	}
	if got := g.Country(netip.MustParseAddr("192.0.2.1")); got != "US" {
		t.Errorf("Country(192.0.2.1) = %q, want the registered country US", got)
	}
}

// TestOpenGeoIPRefusesDatabasesWithoutCountries holds the start-up check: a database
// whose records carry no country (an ASN database, a city database of another schema)
// is refused, and the error names the keys looked for and the keys found.
func TestOpenGeoIPRefusesDatabasesWithoutCountries(t *testing.T) {
	asn := geoiptest.Records(t, "GeoLite2-ASN", map[string]mmdbtype.DataType{
		"203.0.113.0/24": mmdbtype.Map{"autonomous_system_number": mmdbtype.Uint32(64500), "autonomous_system_organization": mmdbtype.String("Example Net")},
	})
	other := geoiptest.Records(t, "Other-Country", map[string]mmdbtype.DataType{
		"203.0.113.0/24": mmdbtype.Map{"countryCode": mmdbtype.String("DE")},
	})
	for _, tc := range []struct {
		name  string
		db    []byte
		wants []string
	}{
		{"ASN database", asn, []string{"GeoLite2-ASN", "country.iso_code", "country_code", "autonomous_system_number"}},
		{"unknown country key", other, []string{"country.iso_code", "countryCode"}},
		{"no networks", geoiptest.Records(t, "Empty", nil), []string{"no networks"}},
	} {
		_, err := ingest.OpenGeoIP(geoiptest.WriteFile(t, tc.db))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not name %q", tc.name, err, w)
			}
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

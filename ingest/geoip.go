package ingest

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/oschwald/maxminddb-golang/v2"
)

// GeoIP maps client addresses to ISO country codes with a country database in the
// MaxMind DB format. It reads both record schemas found in the wild:
//
//   - MaxMind's GeoIP2/GeoLite2 Country and City (and DB-IP's databases that follow it):
//     {"country": {"iso_code": "DE"}, "registered_country": {"iso_code": "DE"}, ...};
//     the registered country stands in when a network has no country (anycast, some
//     cloud ranges);
//   - the flat schema of the free ip-location-db country databases (and DB-IP Lite's
//     flat variant): {"country_code": "DE"}.
//
// It is safe for concurrent use.
type GeoIP struct {
	db *maxminddb.Reader

	mu sync.RWMutex
	// byRecord caches the country of each database record (a handful of thousand in a
	// Country database), so a lookup decodes nothing and allocates nothing once warm.
	byRecord map[uintptr]string
}

// geoRecord is what a lookup decodes: every schema's country key at once.
type geoRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	Registered struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"registered_country"`
	CountryCode string `maxminddb:"country_code"`
}

func (r *geoRecord) country() string {
	for _, cc := range [...]string{r.Country.ISOCode, r.CountryCode, r.Registered.ISOCode} {
		if len(cc) == 2 {
			return strings.ToUpper(cc)
		}
	}
	return ""
}

// geoKeys names the keys a record is read for, in error messages.
const geoKeys = "country.iso_code, country_code or registered_country.iso_code"

// OpenGeoIP opens a country database file and checks that it yields countries (see
// OpenGeoIPBytes). Call it at start-up: a database that gives no country would let
// new_country run on nothing.
func OpenGeoIP(path string) (*GeoIP, error) {
	db, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ingest: open geoip database: %w", err)
	}
	return newGeoIP(db, path)
}

// OpenGeoIPBytes reads a country database held in memory. A database whose records
// carry none of the country keys (an ASN database, say) is refused with an error that
// names the keys it looked for and the keys it found.
func OpenGeoIPBytes(b []byte) (*GeoIP, error) {
	db, err := maxminddb.OpenBytes(b)
	if err != nil {
		return nil, fmt.Errorf("ingest: open geoip database: %w", err)
	}
	return newGeoIP(db, "in memory")
}

func newGeoIP(db *maxminddb.Reader, name string) (*GeoIP, error) {
	if err := checkCountries(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("ingest: geoip database %s (%s): %w", name, db.Metadata.DatabaseType, err)
	}
	return &GeoIP{db: db, byRecord: make(map[uintptr]string)}, nil
}

// geoProbe is how many networks checkCountries reads before it gives up on finding a
// country: a country database has one on (nearly) every network.
const geoProbe = 1000

// checkCountries reads the first networks of db and returns an error unless one of
// them yields a country.
func checkCountries(db *maxminddb.Reader) error {
	seen := map[string]bool{}
	n := 0
	for res := range db.Networks() {
		if n++; n > geoProbe {
			break
		}
		var rec geoRecord
		if err := res.Decode(&rec); err != nil {
			return fmt.Errorf("decode a record: %w", err)
		}
		if rec.country() != "" {
			return nil
		}
		var keys map[string]any
		if res.Decode(&keys) == nil {
			for k := range keys {
				seen[k] = true
			}
		}
	}
	if n == 0 {
		return errors.New("holds no networks")
	}
	found := slices.Sorted(maps.Keys(seen))
	return fmt.Errorf("its records have no country (looked for %s; they have %s): is it a country or city database?",
		geoKeys, strings.Join(found, ", "))
}

// maxCachedRecords bounds the cache for databases far larger than a Country database.
const maxCachedRecords = 1 << 16

// Country returns the upper-case ISO 3166-1 alpha-2 code of ip's country, or "" when the
// database does not know it.
func (g *GeoIP) Country(ip netip.Addr) string {
	res := g.db.Lookup(ip.Unmap())
	if !res.Found() {
		return ""
	}
	off := res.Offset()
	g.mu.RLock()
	cc, ok := g.byRecord[off]
	g.mu.RUnlock()
	if ok {
		return cc
	}
	var rec geoRecord
	if err := res.Decode(&rec); err != nil {
		return ""
	}
	cc = rec.country()
	g.mu.Lock()
	if len(g.byRecord) < maxCachedRecords {
		g.byRecord[off] = cc
	}
	g.mu.Unlock()
	return cc
}

// Close releases the database.
func (g *GeoIP) Close() error { return g.db.Close() }

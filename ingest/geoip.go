package ingest

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/oschwald/maxminddb-golang/v2"
)

// GeoIP maps client addresses to ISO country codes with a MaxMind GeoIP2/GeoLite2
// Country (or City) database. It is safe for concurrent use.
type GeoIP struct {
	db *maxminddb.Reader

	mu sync.RWMutex
	// byRecord caches the country of each database record (a handful of thousand in a
	// Country database), so a lookup decodes nothing and allocates nothing once warm.
	byRecord map[uintptr]string
}

// OpenGeoIP opens a MaxMind database file.
func OpenGeoIP(path string) (*GeoIP, error) {
	db, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ingest: open geoip database: %w", err)
	}
	return newGeoIP(db), nil
}

// OpenGeoIPBytes reads a MaxMind database held in memory.
func OpenGeoIPBytes(b []byte) (*GeoIP, error) {
	db, err := maxminddb.OpenBytes(b)
	if err != nil {
		return nil, fmt.Errorf("ingest: open geoip database: %w", err)
	}
	return newGeoIP(db), nil
}

func newGeoIP(db *maxminddb.Reader) *GeoIP {
	return &GeoIP{db: db, byRecord: make(map[uintptr]string)}
}

// maxCachedRecords bounds the cache for databases far larger than a Country database.
const maxCachedRecords = 1 << 16

// Country returns the upper-case ISO 3166-1 alpha-2 code of ip's country, or "" when the
// database does not know it. The registered country stands in when the database has no
// country for the network (anycast and some cloud ranges).
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
	var rec struct {
		Country struct {
			ISOCode string `maxminddb:"iso_code"`
		} `maxminddb:"country"`
		Registered struct {
			ISOCode string `maxminddb:"iso_code"`
		} `maxminddb:"registered_country"`
	}
	if err := res.Decode(&rec); err != nil {
		return ""
	}
	cc = rec.Country.ISOCode
	if cc == "" {
		cc = rec.Registered.ISOCode
	}
	if len(cc) != 2 {
		cc = ""
	}
	g.mu.Lock()
	if len(g.byRecord) < maxCachedRecords {
		g.byRecord[off] = cc
	}
	g.mu.Unlock()
	return cc
}

// Close releases the database.
func (g *GeoIP) Close() error { return g.db.Close() }

// Package geoiptest writes small country databases for tests, with the real writer
// (github.com/maxmind/mmdbwriter), so GeoIP code is tested against the real format and
// against both record schemas in use: MaxMind's and the flat one of ip-location-db.
package geoiptest

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Bytes returns a GeoLite2-Country-shaped database ({"country": {"iso_code": CC}})
// mapping each CIDR to its ISO country code. A code starting with "registered:" is
// stored as registered_country only.
func Bytes(t testing.TB, networks map[string]string) []byte {
	t.Helper()
	records := make(map[string]mmdbtype.DataType, len(networks))
	for cidr, cc := range networks {
		field := "country"
		if rest, ok := strings.CutPrefix(cc, "registered:"); ok {
			field, cc = "registered_country", rest
		}
		records[cidr] = mmdbtype.Map{mmdbtype.String(field): mmdbtype.Map{"iso_code": mmdbtype.String(cc)}}
	}
	return Records(t, "GeoLite2-Country", records)
}

// FlatBytes returns a database in the flat schema of the ip-location-db country
// databases and DB-IP Lite's flat variant ({"country_code": CC}).
func FlatBytes(t testing.TB, networks map[string]string) []byte {
	t.Helper()
	records := make(map[string]mmdbtype.DataType, len(networks))
	for cidr, cc := range networks {
		records[cidr] = mmdbtype.Map{"country_code": mmdbtype.String(cc)}
	}
	return Records(t, "ip-location-db country", records)
}

// Records returns a database of type dbType holding each record at its CIDR, for
// databases of any other shape (an ASN database, say).
func Records(t testing.TB, dbType string, records map[string]mmdbtype.DataType) []byte {
	t.Helper()
	w, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            dbType,
		RecordSize:              24,
		IncludeReservedNetworks: true, // tests use documentation and private ranges
	})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, rec := range records {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Insert(n, rec); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// File writes the database of Bytes to a temporary file and returns its path.
func File(t testing.TB, networks map[string]string) string {
	t.Helper()
	return WriteFile(t, Bytes(t, networks))
}

// WriteFile writes a database to a temporary file and returns its path.
func WriteFile(t testing.TB, db []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "country.mmdb")
	if err := os.WriteFile(path, db, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

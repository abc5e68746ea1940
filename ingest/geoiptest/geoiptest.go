// Package geoiptest writes small MaxMind country databases for tests, with the real
// writer (github.com/maxmind/mmdbwriter), so GeoIP code is tested against the real format.
package geoiptest

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Bytes returns a GeoLite2-Country-shaped database mapping each CIDR to its ISO country
// code. A code starting with "registered:" is stored as registered_country only.
func Bytes(t testing.TB, networks map[string]string) []byte {
	t.Helper()
	w, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            "GeoLite2-Country",
		RecordSize:              24,
		IncludeReservedNetworks: true, // tests use documentation and private ranges
	})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, cc := range networks {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		field := "country"
		if rest, ok := bytes.CutPrefix([]byte(cc), []byte("registered:")); ok {
			field, cc = "registered_country", string(rest)
		}
		rec := mmdbtype.Map{mmdbtype.String(field): mmdbtype.Map{"iso_code": mmdbtype.String(cc)}}
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
	path := filepath.Join(t.TempDir(), "GeoLite2-Country.mmdb")
	if err := os.WriteFile(path, Bytes(t, networks), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

package clickhousetest

import (
	"context"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

func TestRequireAndNewDatabase(t *testing.T) {
	addr := Require(t)
	db := NewDatabase(t, addr)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Auth: clickhouse.Auth{Database: db}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var current string
	if err := conn.QueryRow(ctx, "SELECT currentDatabase()").Scan(&current); err != nil {
		t.Fatal(err)
	}
	if current != db {
		t.Errorf("currentDatabase() = %q, want %q", current, db)
	}
	if again := Require(t); again != addr {
		t.Errorf("second Require = %s, want the shared server %s", again, addr)
	}
}

func TestSanitize(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"TestArchive/by_key", "testarchive_by_key"},
		{"Test-Ä", "test___"},
	} {
		if got := sanitize(c.in); got != c.want {
			t.Errorf("sanitize(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

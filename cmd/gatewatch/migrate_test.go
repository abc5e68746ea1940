package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// TestMigrateAgainstClickHouse runs `gatewatch migrate` twice against a real server:
// the second run finds nothing to do and still succeeds.
func TestMigrateAgainstClickHouse(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gatewatch.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("store:\n  data_dir: %s\n  clickhouse: {addr: [%q], database: %s}\n", dir, addr, db)), 0o600)
	for range 2 {
		_, errOut, code := runCmd(t, "", "migrate", "--config", cfg)
		if code != 0 || !strings.Contains(errOut, "schema of "+db+" is up to date") {
			t.Fatalf("migrate: exit %d: %s", code, errOut)
		}
	}
	_, errOut, code := runCmd(t, "", "migrate", "--config", "testdata/config/good.yaml")
	if code != 1 || !strings.Contains(errOut, "store.clickhouse is not configured") {
		t.Errorf("migrate without clickhouse: exit %d: %s", code, errOut)
	}
}

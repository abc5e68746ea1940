package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/geoiptest"
)

// TestFingerprintMatchesTheEvents: the fingerprint printed for a raw key or token read
// on stdin is the client_key / token_fp parse gives a record carrying it.
func TestFingerprintMatchesTheEvents(t *testing.T) {
	cfg := testConfig(t, "")
	const key, token = "gwkey-live-6f1d2c3b4a5e6f70", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjdXN0LTQyIn0.c2lnbmF0dXJl"
	record := `{"timestamp":1762041600000,"action":"ALLOW","httpRequest":{"clientIp":"198.51.100.7","httpMethod":"GET","uri":"/v1/orders",` +
		`"headers":[{"name":"x-api-key","value":"` + key + `"},{"name":"Authorization","value":"Bearer ` + token + `"}]}}`
	out, _, code := runCmd(t, record, "parse", "--config", cfg, "--format", "awswaf", "--input", "-")
	var ev struct {
		ClientKey string `json:"client_key"`
		TokenFP   string `json:"token_fp"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &ev) != nil || ev.ClientKey == "" {
		t.Fatalf("parse: exit %d, %q", code, out)
	}
	got, errOut, code := runCmd(t, key+"\n", "fingerprint", "--config", cfg)
	if code != 0 || got != ev.ClientKey+"\n" {
		t.Errorf("fingerprint of the key: exit %d, %q, want the client_key %s (%s)", code, got, ev.ClientKey, errOut)
	}
	got, _, code = runCmd(t, "Bearer "+token+"\n"+token+"\n", "fingerprint", "--config", cfg, "--kind", "token")
	if code != 0 || got != ev.TokenFP+"\n"+ev.TokenFP+"\n" {
		t.Errorf("fingerprint of the token: exit %d, %q, want the token_fp %s twice", code, got, ev.TokenFP)
	}
	if strings.Contains(got+errOut, key) || strings.Contains(got+errOut, token) {
		t.Error("the raw credential was echoed")
	}
}

func TestFingerprintRefusesArgumentsAndNothing(t *testing.T) {
	cfg := testConfig(t, "")
	if _, errOut, code := runCmd(t, "", "fingerprint", "--config", cfg, "gwkey-on-the-command-line"); code != 2 || !strings.Contains(errOut, "standard input") ||
		strings.Contains(errOut, "gwkey-on-the-command-line") {
		t.Errorf("a key as an argument: exit %d, %q", code, errOut)
	}
	if _, errOut, code := runCmd(t, "\n  \n", "fingerprint", "--config", cfg); code != 1 || !strings.Contains(errOut, "no key or token") {
		t.Errorf("nothing on stdin: exit %d, %q", code, errOut)
	}
	if _, _, code := runCmd(t, "k\n", "fingerprint", "--config", cfg, "--kind", "password"); code != 2 {
		t.Errorf("--kind password: exit %d", code)
	}
}

// TestFingerprintWithoutASecretUsesTheDataDirKey: the key replay and demo keep under
// store.data_dir, so the fingerprint matches their alerts.
func TestFingerprintWithoutASecretUsesTheDataDirKey(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gatewatch.yaml")
	os.WriteFile(cfg, []byte("store:\n  data_dir: "+filepath.Join(dir, "data")+"\n"), 0o600)
	a, errOut, code := runCmd(t, "gwkey-1\n", "fingerprint", "--config", cfg)
	b, _, _ := runCmd(t, "gwkey-1\n", "fingerprint", "--config", cfg)
	s, _, err := ingest.DataDirTokenSecret(filepath.Join(dir, "data"))
	if err != nil || code != 0 || a != b || a != s.KeyFingerprint([]byte("gwkey-1"))+"\n" || !strings.Contains(errOut, "token-secret") {
		t.Errorf("exit %d, %q then %q (%v):\n%s", code, a, b, err, errOut)
	}
}

// TestCountryWarning: new_country with records that carry no country and no GeoIP
// database is said at start-up, once; not when a database or the log gives countries.
func TestCountryWarning(t *testing.T) {
	rec := `{"requestId":"r1","ip":"198.51.100.7","requestTime":"02/Nov/2026:00:00:00 +0000","httpMethod":"GET","resourcePath":"/pets","status":"200","apiKeyId":"k1"}`
	geo := geoiptest.File(t, map[string]string{"198.51.100.0/24": "DE"})
	for _, tc := range []struct {
		name, extra, format string
		warn                bool
	}{
		{"apigw without GeoIP", "", "apigw", true},
		{"apigw through auto", "", "auto", true},
		{"apigw with GeoIP", "  geoip: {database: " + geo + "}\n", "apigw", false},
		{"new_country off", "detectors:\n  new_country: {enabled: false}\n", "apigw", false},
	} {
		_, errOut, code := runCmd(t, rec, "replay", "--config", testConfig(t, tc.extra), "--format", tc.format, "--input", "-")
		if code != 0 {
			t.Fatalf("%s: exit %d:\n%s", tc.name, code, errOut)
		}
		if n := strings.Count(errOut, "new_country is enabled, but"); n != map[bool]int{true: 1, false: 0}[tc.warn] {
			t.Errorf("%s: warned %d times:\n%s", tc.name, n, errOut)
		}
	}
	// nginx logs a country only when its log format has one: it is judged by what was
	// read, for parse as for replay.
	withCountry := `{"time_iso8601":"2026-11-02T00:00:00+00:00","remote_addr":"198.51.100.7","request_method":"GET","request_uri":"/pets","status":200,"http_x_api_key":"k1","http_cf_ipcountry":"DE"}`
	for _, tc := range []struct {
		name, cmd, rec string
		warn           bool
	}{
		{"nginx JSON with a country, replay", "replay", withCountry, false},
		{"nginx JSON with a country, parse", "parse", withCountry, false},
		{"nginx JSON without, replay", "replay", strings.Replace(withCountry, `,"http_cf_ipcountry":"DE"`, "", 1), true},
		{"nginx JSON without, parse", "parse", strings.Replace(withCountry, `,"http_cf_ipcountry":"DE"`, "", 1), true},
	} {
		_, errOut, code := runCmd(t, tc.rec, tc.cmd, "--config", testConfig(t, ""), "--format", "nginx", "--input", "-")
		if code != 0 {
			t.Fatalf("%s: exit %d:\n%s", tc.name, code, errOut)
		}
		if n := strings.Count(errOut, "new_country is enabled, but"); n != map[bool]int{true: 1, false: 0}[tc.warn] {
			t.Errorf("%s: warned %d times:\n%s", tc.name, n, errOut)
		}
	}
	waf := `{"timestamp":1762041600000,"webaclId":"acl","action":"ALLOW","httpRequest":{"clientIp":"198.51.100.7","country":"DE","httpMethod":"GET","uri":"/","headers":[{"name":"x-api-key","value":"k1"}]}}`
	for _, format := range []string{"awswaf", "auto"} {
		_, errOut, code := runCmd(t, waf, "replay", "--config", testConfig(t, ""), "--format", format, "--input", "-")
		if code != 0 || strings.Contains(errOut, "new_country is enabled") {
			t.Errorf("AWS WAF logs the country, yet with --format %s (exit %d):\n%s", format, code, errOut)
		}
	}
}

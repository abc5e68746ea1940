package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBadConfigs(t *testing.T) {
	for _, tc := range []struct {
		file string
		want []string // fragments, each must appear in the error
	}{
		{"unknown-key.bad.yaml", []string{"unknown-key.bad.yaml:4:", "ingest.kafka", "unknown key grup; did you mean group?"}},
		{"bad-format.bad.yaml", []string{"bad-format.bad.yaml:6:", "ingest.kafka.topics[1].format", `unknown format "akamai"`}},
		{"bad-duration.bad.yaml", []string{"bad-duration.bad.yaml:2:", "ingest.max_clock_skew", "cannot unmarshal", "like 90s"}},
		{"bad-values.bad.yaml", []string{
			"bad-values.bad.yaml:2:3: ingest.max_line_bytes: must be between",
			"bad-values.bad.yaml:4:5: ingest.kafka.start_offset",
			"bad-values.bad.yaml:5:12: ingest.kafka.sasl.mechanism",
			`bad-values.bad.yaml:6:37: ingest.trusted_proxies[1]: must be a network in CIDR notation (203.0.113.0/24), got "204.246.164.0"`,
			"ingest.kafka.topics", // brokers are absent here, so no topic error...
		}},
		{"flow-unknown-key.bad.yaml", []string{"flow-unknown-key.bad.yaml:3:30: detectors.token_reuse.max_device: unknown key max_device; did you mean max_devices?"}},
		{"bad-enums.bad.yaml", []string{
			`bad-enums.bad.yaml:3:32: detectors.new_country.severity: severity must be low, medium, high or critical, got "urgent"`,
			`bad-enums.bad.yaml:6:50: alerting.receivers[0].syslog.format: must be json or cef, got "xml"`,
			`bad-enums.bad.yaml:8:27: alerting.routes[0].match.severity[0]: severity must be low, medium, high or critical, got "hgh"`,
		}},
		// yaml decodes 45.9 into an int as 45, silently.
		{"fraction.bad.yaml", []string{
			"fraction.bad.yaml:2:32: detectors.forbidden_burst.threshold: must be a whole number, got 45.9",
			"fraction.bad.yaml:4:18: detectors.token_reuse.max_devices: must be a whole number, got 2.5",
			"fraction.bad.yaml:7:37: detectors.route_scan.overrides[0].min_routes: must be a whole number, got 30.5",
		}},
		{"syntax.bad.yaml", []string{"syntax.bad.yaml:5: invalid YAML: did not find expected ',' or ']'"}},
		{"indent.bad.yaml", []string{"indent.bad.yaml:6: invalid YAML: did not find expected key"}},
		{"service.bad.yaml", []string{
			`service.bad.yaml:3:3: admin.listen: must be host:port (127.0.0.1:9464, :9464), got "localhost"`,
			"service.bad.yaml:4:1: console.token_file: needs token_file or token_env",
			"service.bad.yaml:6:1: cluster: needs ingest.kafka.brokers",
			"service.bad.yaml:6:1: cluster: needs store.clickhouse",
			"service.bad.yaml:7:3: cluster.internal_topic_prefix: must be 1-200 letters",
			"service.bad.yaml:8:3: cluster.partitions: must be between 1 and 10000",
		}},
		{"console.bad.yaml", []string{"console.bad.yaml:3:11: console.listen: is admin.listen too"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			_, err := loadConfigFile(filepath.Join("testdata", "config", tc.file))
			if err == nil {
				t.Fatal("loaded without error")
			}
			for _, w := range tc.want {
				if w == "ingest.kafka.topics" {
					if strings.Contains(err.Error(), w) {
						t.Errorf("error mentions %q although no brokers are set:\n%v", w, err)
					}
					continue
				}
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestEveryErrorAtOnce: one run reports every error of the file, decode errors and
// validation errors alike, in file order, each at its line, column and key.
func TestEveryErrorAtOnce(t *testing.T) {
	_, err := loadConfigFile("testdata/config/many-errors.bad.yaml")
	if err == nil {
		t.Fatal("loaded without error")
	}
	want := []string{
		"many-errors.bad.yaml:4:3: ingest.max_line_bytes: must be between 1024 and 67108864, got 12",
		"many-errors.bad.yaml:6:5: ingest.kafka.grup: unknown key grup; did you mean group?",
		"many-errors.bad.yaml:9:5: detectors.token_reuse.window: cannot unmarshal !!int `10` into time.Duration (durations look like 90s, 10m, 720h)",
		"many-errors.bad.yaml:10:21: detectors.forbidden_burst.min_ratio: must be in (0,1], got 1.5",
		`many-errors.bad.yaml:10:37: detectors.forbidden_burst.severity: severity must be low, medium, high or critical, got "loud"`,
		`many-errors.bad.yaml:15:20: alerting.routes[0].receivers[0]: undefined receiver "archiv"`,
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(got), len(want), err)
	}
	for i := range want {
		if !strings.HasSuffix(got[i], want[i]) {
			t.Errorf("error %d = %q, want %q", i, got[i], want[i])
		}
	}
}

func TestGoodConfigAndDefaults(t *testing.T) {
	cfg, err := loadConfigFile("testdata/config/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Ingest.Kafka.Topics[1].Format; got != "kong" {
		t.Errorf("topics[1].format = %q", got)
	}
	if cfg.Ingest.Kafka.BatchSize != 1000 || cfg.Ingest.MaxLineBytes != 1<<20 {
		t.Errorf("defaults not applied under the file: batch_size %d max_line_bytes %d", cfg.Ingest.Kafka.BatchSize, cfg.Ingest.MaxLineBytes)
	}
	empty, err := loadConfig("empty.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if empty.Ingest.APIKeyHeader != "x-api-key" {
		t.Errorf("empty file: api_key_header %q, want the default", empty.Ingest.APIKeyHeader)
	}
}

func TestCheckConfigPrintsNoSecrets(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "hmac")
	const planted = "planted-secret-value-9f8e7d6c"
	os.WriteFile(secretFile, []byte(planted+"\n"), 0o600)
	cfgFile := filepath.Join(dir, "gatewatch.yaml")
	os.WriteFile(cfgFile, []byte("ingest:\n  token_secret_file: "+secretFile+"\n"), 0o600)
	out, errOut, code := runCmd(t, "", "check-config", cfgFile)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.Contains(out+errOut, planted) {
		t.Error("check-config output contains the secret")
	}
	if !strings.Contains(out, "token_secret_file: "+secretFile) {
		t.Errorf("check-config output lacks the setting:\n%s", out)
	}
}

func FuzzLoadConfig(f *testing.F) {
	files, _ := filepath.Glob("testdata/config/*.yaml")
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := loadConfig("fuzz.yaml", b)
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
		if err == nil {
			if verr := cfg.validate(); verr != nil {
				t.Fatalf("loaded config fails validation: %v", verr)
			}
		}
	})
}

// TestExampleConfig keeps deploy/gatewatch.example.yaml valid.
func TestExampleConfig(t *testing.T) {
	cfg, err := loadConfigFile("../../deploy/gatewatch.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.ClickHouse == nil || len(cfg.Ingest.Kafka.Topics) != 4 || cfg.Detectors.NewCountry.MinEvents != 20 {
		t.Errorf("example config not decoded as written: %+v", cfg)
	}
}

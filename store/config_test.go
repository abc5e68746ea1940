package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestConfigDecodeAndDefaults(t *testing.T) {
	const doc = `
clickhouse:
  addr: [127.0.0.1:9000, ch2:9000]
  database: soc
  password_env: CH_PASSWORD
  tls: {enabled: true, server_name: ch.example.com}
  batch_size: 5000
  retention: 720h
data_dir: /var/lib/gatewatch
`
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	got := cfg.ClickHouse.withDefaults(cfg.DataDir)
	want := DefaultClickHouseConfig()
	want.Addr = []string{"127.0.0.1:9000", "ch2:9000"}
	want.Database = "soc"
	want.PasswordEnv = "CH_PASSWORD"
	want.TLS.Enabled, want.TLS.ServerName = true, "ch.example.com"
	want.BatchSize = 5000
	want.Retention = 720 * time.Hour
	want.SpillDir = "/var/lib/gatewatch/clickhouse-spill"
	if got.Database != want.Database || got.BatchSize != want.BatchSize || got.BufferSize != want.BufferSize ||
		got.SpillDir != want.SpillDir || got.Retention != want.Retention || got.DialTimeout != want.DialTimeout ||
		got.FlushInterval != want.FlushInterval || !got.TLS.Enabled || got.Username != "default" {
		t.Errorf("decoded config with defaults\n got %+v\nwant %+v", got, want)
	}

	empty := DefaultConfig()
	if err := yaml.Unmarshal([]byte("{}"), &empty); err != nil {
		t.Fatal(err)
	}
	if empty.ClickHouse != nil || empty.DataDir != DefaultDataDir {
		t.Errorf("empty store section = %+v, want the embedded store under %s", empty, DefaultDataDir)
	}

	dec = yaml.NewDecoder(strings.NewReader("clickhouse: {adr: [x:1]}\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err == nil || !strings.Contains(err.Error(), "adr") {
		t.Errorf("unknown key decoded with %v, want an error naming it", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		keys []string
	}{
		{"embedded", DefaultConfig(), nil},
		{"minimal clickhouse", Config{DataDir: "d", ClickHouse: &ClickHouseConfig{Addr: []string{"localhost:9000"}}}, nil},
		{"no data dir", Config{}, []string{"data_dir"}},
		{"negative local retention", Config{DataDir: "d", Retention: -time.Hour}, []string{"retention"}},
		{"everything wrong", Config{DataDir: "d", ClickHouse: &ClickHouseConfig{
			Addr:         []string{"localhost", "ok:9000", ":"},
			Database:     "drop table; --",
			PasswordFile: "/run/secrets/ch",
			PasswordEnv:  "CH",
			DialTimeout:  -time.Second,
			BatchSize:    2_000_000,
			BufferSize:   10,
			Retention:    time.Hour,
		}}, []string{
			"clickhouse.addr[0]", "clickhouse.addr[2]", "clickhouse.database", "clickhouse.password_file",
			"clickhouse.dial_timeout", "clickhouse.retention", "clickhouse.batch_size", "clickhouse.buffer_size",
		}},
		{"no addr, cert without key", Config{DataDir: "d", ClickHouse: &ClickHouseConfig{}}, []string{"clickhouse.addr"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "no addr, cert without key" {
				c.cfg.ClickHouse.TLS.CertFile = "cert.pem"
				c.keys = append(c.keys, "clickhouse.tls.cert_file")
			}
			err := c.cfg.Validate()
			var got []string
			var errs []error
			if err != nil {
				errs = err.(interface{ Unwrap() []error }).Unwrap()
			}
			for _, e := range errs {
				var ke interface{ Key() string }
				if !errors.As(e, &ke) {
					t.Fatalf("error %q has no Key()", e)
				}
				got = append(got, ke.Key())
				if !strings.HasPrefix(e.Error(), ke.Key()+": ") {
					t.Errorf("error %q does not start with its key", e)
				}
			}
			if strings.Join(got, " ") != strings.Join(c.keys, " ") {
				t.Errorf("Validate() keys = %v, want %v (errors: %v)", got, c.keys, err)
			}
		})
	}
}

// TestPasswordOptional: ClickHouse's default user has no password, so a config that
// names no source means the empty password; how a named source loads is the shared
// loader's (internal/config).
func TestPasswordOptional(t *testing.T) {
	if got, err := (&ClickHouseConfig{}).password(); got != "" || err != nil {
		t.Errorf("password() without a source = %q, %v; want the empty password", got.Reveal(), err)
	}
	c := Config{DataDir: "d", ClickHouse: &ClickHouseConfig{Addr: []string{"ch:9000"}, PasswordEnv: "GATEWATCH_TEST_CH_UNSET"}}
	if err := c.Check(); err == nil || !strings.Contains(err.Error(), "clickhouse.password_env: environment variable GATEWATCH_TEST_CH_UNSET is not set") {
		t.Errorf("Check = %v, want the unset variable at clickhouse.password_env", err)
	}
}

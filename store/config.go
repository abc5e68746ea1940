package store

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/internal/config"
)

// Config is the store section of gatewatch.yaml. Without a clickhouse block gatewatch
// keeps everything in the embedded local store under DataDir.
type Config struct {
	ClickHouse *ClickHouseConfig `yaml:"clickhouse"` // nil: the embedded local store
	DataDir    string            `yaml:"data_dir"`   // local store, ClickHouse spill files; default ./gatewatch-data
	Retention  time.Duration     `yaml:"retention"`  // how long the local store keeps archived events and alert history; 0 keeps them
	// Archive makes `run` keep every event in the archive that replay and the runbooks'
	// forensic queries read; default true.
	Archive bool `yaml:"archive"`
}

// ClickHouseConfig says how to reach ClickHouse and how the event archive writes to it.
// A zero numeric or duration setting means its default (see DefaultClickHouseConfig),
// because the YAML decoder builds this block from zero when the file has one.
type ClickHouseConfig struct {
	Addr          []string      `yaml:"addr"`          // host:port of the native protocol (9000, TLS 9440)
	Database      string        `yaml:"database"`      // default gatewatch
	Username      string        `yaml:"username"`      // default "default"
	PasswordFile  string        `yaml:"password_file"` // the password, read from this file
	PasswordEnv   string        `yaml:"password_env"`  // or from this environment variable
	TLS           config.TLS    `yaml:"tls"`
	DialTimeout   time.Duration `yaml:"dial_timeout"`   // default 5s
	WriteTimeout  time.Duration `yaml:"write_timeout"`  // bound on one insert or query round trip; default 30s
	BatchSize     int           `yaml:"batch_size"`     // events per archive insert; default 100000
	FlushInterval time.Duration `yaml:"flush_interval"` // longest an event waits for a full batch; default 1s
	BufferSize    int           `yaml:"buffer_size"`    // events held in memory while ClickHouse is slow; default 500000
	SpillDir      string        `yaml:"spill_dir"`      // where unwritable batches and baseline updates wait on disk; default <data_dir>/clickhouse-spill
	Retention     time.Duration `yaml:"retention"`      // how long the event archive and the alert history keep rows; 0 keeps them
	// BaselineTimeout bounds how long UpdateBaselines waits for ClickHouse before it
	// spills the update to disk and returns; default 2s.
	BaselineTimeout time.Duration `yaml:"baseline_timeout"`
}

// DefaultDataDir is where the local store and the ClickHouse spill files live unless
// data_dir says otherwise.
const DefaultDataDir = "./gatewatch-data"

// DefaultConfig returns the store defaults that the config file overrides: the
// embedded store under DefaultDataDir, keeping archived events for 30 days.
func DefaultConfig() Config {
	return Config{DataDir: DefaultDataDir, Retention: 720 * time.Hour, Archive: true}
}

// DefaultClickHouseConfig returns what each zero ClickHouse setting stands for.
func DefaultClickHouseConfig() ClickHouseConfig {
	return ClickHouseConfig{
		Database:     "gatewatch",
		Username:     "default",
		DialTimeout:  5 * time.Second,
		WriteTimeout: 30 * time.Second,
		// ClickHouse wants few, large inserts: each insert writes a part per partition
		// and per materialized view, and 18.16 spends about as long on a 10,000-row
		// insert as on a 100,000-row one (BenchmarkArchiveInsert: about 75,000
		// against 240,000 rows/s). At ordinary rates flush_interval bounds the batch instead,
		// to one insert a second.
		BatchSize:     100_000,
		FlushInterval: time.Second,
		BufferSize:    500_000, // five batches, about 125 MB of encoded events
		// The engine waits for UpdateBaselines before it acknowledges a batch; a
		// healthy server takes an update in tens of milliseconds.
		BaselineTimeout: 2 * time.Second,
	}
}

// withDefaults returns c with each zero setting replaced by its default; the spill
// directory defaults to dataDir/clickhouse-spill.
func (c ClickHouseConfig) withDefaults(dataDir string) ClickHouseConfig {
	d := DefaultClickHouseConfig()
	if c.Database == "" {
		c.Database = d.Database
	}
	if c.Username == "" {
		c.Username = d.Username
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = d.DialTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.BatchSize == 0 {
		c.BatchSize = d.BatchSize
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = d.FlushInterval
	}
	if c.BufferSize == 0 {
		c.BufferSize = max(d.BufferSize, c.BatchSize)
	}
	if c.BaselineTimeout == 0 {
		c.BaselineTimeout = d.BaselineTimeout
	}
	if c.SpillDir == "" {
		if dataDir == "" {
			dataDir = DefaultDataDir
		}
		c.SpillDir = filepath.Join(dataDir, "clickhouse-spill")
	}
	return c
}

// cfgErr reports one invalid setting at its key path below the store section
// ("clickhouse.batch_size"), which the config loader turns into a file position.
var cfgErr = config.Errorf

// Validate reports every invalid setting at once, each as a *config.Error.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, cfgErr("data_dir", "must be set"))
	}
	if c.Retention < 0 {
		errs = append(errs, cfgErr("retention", "must be 0 (keep) or positive, got %s", c.Retention))
	}
	if c.ClickHouse != nil {
		errs = append(errs, c.ClickHouse.validate("clickhouse.")...)
	}
	return errors.Join(errs...)
}

// Validate reports every invalid ClickHouse setting at once, each as a *config.Error
// whose key is relative to the clickhouse block.
func (c *ClickHouseConfig) Validate() error { return errors.Join(c.validate("")...) }

// validate reports the invalid settings with their keys prefixed by p.
func (c *ClickHouseConfig) validate(p string) []error {
	var errs []error
	if len(c.Addr) == 0 {
		errs = append(errs, cfgErr(p+"addr", "must list at least one host:port"))
	}
	for i, a := range c.Addr {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			errs = append(errs, cfgErr(p+fmt.Sprintf("addr[%d]", i), "must be host:port, got %q", a))
		}
	}
	if c.Database != "" && !isIdentifier(c.Database) {
		errs = append(errs, cfgErr(p+"database", "must be letters, digits and underscores, not starting with a digit, got %q", c.Database))
	}
	errs = append(errs, config.Prefix(p+"tls", c.TLS.Validate()), config.Prefix(strings.TrimSuffix(p, "."), c.Password().Validate(false)))
	nonNegative := func(key string, d time.Duration) {
		if d < 0 {
			errs = append(errs, cfgErr(p+key, "must be positive, got %s", d))
		}
	}
	nonNegative("dial_timeout", c.DialTimeout)
	nonNegative("write_timeout", c.WriteTimeout)
	nonNegative("flush_interval", c.FlushInterval)
	nonNegative("baseline_timeout", c.BaselineTimeout)
	if c.Retention < 0 {
		errs = append(errs, cfgErr(p+"retention", "must be 0 (keep) or positive, got %s", c.Retention))
	}
	if c.Retention > 0 && c.Retention < 24*time.Hour {
		// The archive is partitioned by day and old servers expire whole partitions.
		errs = append(errs, cfgErr(p+"retention", "must be 0 (keep) or at least 24h, got %s", c.Retention))
	}
	if c.BatchSize < 0 || c.BatchSize > 1_000_000 {
		errs = append(errs, cfgErr(p+"batch_size", "must be between 1 and 1000000, got %d", c.BatchSize))
	}
	batch := c.BatchSize
	if batch == 0 {
		batch = DefaultClickHouseConfig().BatchSize
	}
	if c.BufferSize < 0 || (c.BufferSize > 0 && c.BufferSize < batch) {
		errs = append(errs, cfgErr(p+"buffer_size", "must be at least batch_size (%d), got %d", batch, c.BufferSize))
	}
	return errs
}

func isIdentifier(s string) bool {
	for i, c := range s {
		switch {
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return s != ""
}

// Password is where the password comes from; none configured is the empty password.
func (c *ClickHouseConfig) Password() config.SecretRef {
	return config.SecretRef{Key: "password", File: c.PasswordFile, Env: c.PasswordEnv}
}

// password loads the configured password; none configured is the empty password.
func (c *ClickHouseConfig) password() (config.Secret, error) {
	if !c.Password().IsSet() {
		return "", nil
	}
	return c.Password().Load(1)
}

// Check reads what the settings name, as start-up will: the ClickHouse password and
// TLS files. It reports each problem as a *config.Error and never the password.
func (c *Config) Check() error {
	if c.ClickHouse == nil {
		return nil
	}
	_, perr := c.ClickHouse.password()
	_, terr := c.ClickHouse.TLS.Client(false)
	return config.Prefix("clickhouse", errors.Join(perr, config.Prefix("tls", terr)))
}

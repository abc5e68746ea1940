package ingest

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/internal/config"
)

// Config is the ingest section of gatewatch.yaml.
type Config struct {
	Kafka           KafkaConfig   `yaml:"kafka"`
	GeoIP           GeoIPConfig   `yaml:"geoip"`
	TokenSecretFile string        `yaml:"token_secret_file"` // HMAC key for token fingerprints, read from this file
	TokenSecretEnv  string        `yaml:"token_secret_env"`  // or from this environment variable
	APIKeyHeader    string        `yaml:"api_key_header"`    // default x-api-key
	DeviceHeader    string        `yaml:"device_header"`     // default x-device-id
	MaxLineBytes    int           `yaml:"max_line_bytes"`    // default 1 MiB
	MaxClockSkew    time.Duration `yaml:"max_clock_skew"`    // default 24h
	// TrustedProxies are networks of the operator's proxies beyond the private ones (a
	// CDN's edge ranges): their addresses forward requests, and the client is looked
	// for before them in X-Forwarded-For (see clientOfList).
	TrustedProxies []string         `yaml:"trusted_proxies"`
	DeadLetter     DeadLetterConfig `yaml:"dead_letter"`
}

// KafkaConfig says where to consume from. No brokers means no Kafka source.
type KafkaConfig struct {
	Brokers     []string      `yaml:"brokers"`
	Group       string        `yaml:"group"`
	ClientID    string        `yaml:"client_id"`
	Topics      []TopicConfig `yaml:"topics"`
	StartOffset string        `yaml:"start_offset"` // earliest (default) or latest, for a group with no committed offset
	BatchSize   int           `yaml:"batch_size"`   // most events handed to the engine at once (a batch also ends at 8 MiB of records); default 1000
	BatchWait   time.Duration `yaml:"batch_wait"`   // longest a partial batch waits for more records; default 100ms
	MaxBytes    int           `yaml:"max_bytes"`    // most bytes per fetch; default 10 MiB
	TLS         config.TLS    `yaml:"tls"`
	SASL        config.SASL   `yaml:"sasl"`
	Timeout     time.Duration `yaml:"timeout"` // dial and commit deadline; default 10s
}

// TopicConfig names one topic and the format of its records.
type TopicConfig struct {
	Name   string `yaml:"name"`
	Format string `yaml:"format"`
}

// GeoIPConfig points at a MaxMind Country or City database; empty means no GeoIP.
type GeoIPConfig struct {
	Database string `yaml:"database"`
}

// DeadLetterConfig says where rejected records go: a file of JSON lines, a Kafka topic
// (on the ingest brokers), or both. Neither means rejected records are only counted and
// logged by `parse`; `run` requires one.
type DeadLetterConfig struct {
	File  string `yaml:"file"`
	Topic string `yaml:"topic"`
}

// DefaultConfig returns the ingest defaults that the config file overrides.
func DefaultConfig() Config {
	return Config{
		Kafka: KafkaConfig{
			Group:       "gatewatch",
			ClientID:    "gatewatch",
			StartOffset: "earliest",
			BatchSize:   1000,
			BatchWait:   100 * time.Millisecond,
			MaxBytes:    10 << 20,
			Timeout:     10 * time.Second,
		},
		APIKeyHeader: DefaultAPIKeyHeader,
		DeviceHeader: DefaultDeviceHeader,
		MaxLineBytes: DefaultMaxLineBytes,
		MaxClockSkew: DefaultMaxClockSkew,
	}
}

// cfgErr reports one invalid setting at its key path below the ingest section
// ("kafka.topics[1].format"), which the config loader turns into a file position.
var cfgErr = config.Errorf

// TokenSecretRef is where the token secret comes from: token_secret_file or
// token_secret_env.
func (c *Config) TokenSecretRef() config.SecretRef {
	return config.SecretRef{Key: "token_secret", File: c.TokenSecretFile, Env: c.TokenSecretEnv}
}

// Validate reports every invalid setting at once, each as a *config.Error.
func (c *Config) Validate() error {
	var errs []error
	k := &c.Kafka
	if len(k.Brokers) > 0 {
		if k.Group == "" {
			errs = append(errs, cfgErr("kafka.group", "must be set when brokers are"))
		}
		if len(k.Topics) == 0 {
			errs = append(errs, cfgErr("kafka.topics", "must list at least one topic when brokers are set"))
		}
	}
	seen := map[string]bool{}
	for i, t := range k.Topics {
		key := fmt.Sprintf("kafka.topics[%d]", i)
		switch {
		case t.Name == "":
			errs = append(errs, cfgErr(key+".name", "must be set"))
		case seen[t.Name]:
			errs = append(errs, cfgErr(key+".name", "topic %q is listed twice", t.Name))
		}
		seen[t.Name] = true
		if !slices.Contains(Formats, t.Format) {
			errs = append(errs, cfgErr(key+".format", "unknown format %q (want one of %s)", t.Format, strings.Join(Formats, ", ")))
		}
	}
	if k.StartOffset != "earliest" && k.StartOffset != "latest" {
		errs = append(errs, cfgErr("kafka.start_offset", "must be earliest or latest, got %q", k.StartOffset))
	}
	if k.BatchSize < 1 || k.BatchSize > 1_000_000 {
		errs = append(errs, cfgErr("kafka.batch_size", "must be between 1 and 1000000, got %d", k.BatchSize))
	}
	if k.BatchWait <= 0 {
		errs = append(errs, cfgErr("kafka.batch_wait", "must be positive, got %s", k.BatchWait))
	}
	if k.MaxBytes < 1<<10 {
		errs = append(errs, cfgErr("kafka.max_bytes", "must be at least 1024, got %d", k.MaxBytes))
	}
	if k.Timeout <= 0 {
		errs = append(errs, cfgErr("kafka.timeout", "must be positive, got %s", k.Timeout))
	}
	errs = append(errs, config.Prefix("kafka.tls", k.TLS.Validate()), config.Prefix("kafka.sasl", k.SASL.Validate()),
		c.TokenSecretRef().Validate(false))
	if c.MaxLineBytes < 1<<10 || c.MaxLineBytes > 64<<20 {
		errs = append(errs, cfgErr("max_line_bytes", "must be between 1024 and 67108864, got %d", c.MaxLineBytes))
	}
	if c.MaxClockSkew <= 0 {
		errs = append(errs, cfgErr("max_clock_skew", "must be positive, got %s", c.MaxClockSkew))
	}
	_, perrs := c.trustedProxies()
	errs = append(errs, perrs...)
	if c.DeadLetter.Topic != "" && len(k.Brokers) == 0 {
		errs = append(errs, cfgErr("dead_letter.topic", "needs kafka.brokers"))
	}
	return errors.Join(errs...)
}

// trustedProxies returns TrustedProxies parsed, and an error for each entry that is no
// network.
func (c *Config) trustedProxies() ([]netip.Prefix, []error) {
	var nets []netip.Prefix
	var errs []error
	for i, n := range c.TrustedProxies {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			errs = append(errs, cfgErr(fmt.Sprintf("trusted_proxies[%d]", i), "must be a network in CIDR notation (203.0.113.0/24), got %q", n))
			continue
		}
		nets = append(nets, p.Masked())
	}
	return nets, errs
}

// Check reads what the settings name, as start-up will: the token secret (at least
// 16 bytes), the SASL password, the TLS files. It reports each problem as a
// *config.Error and never a secret's value. The GeoIP database is OpenGeoIP's.
func (c *Config) Check() error {
	var errs []error
	if c.TokenSecretRef().IsSet() {
		_, err := c.TokenSecretRef().Load(minSecretBytes)
		errs = append(errs, err)
	}
	if len(c.Kafka.Brokers) > 0 {
		_, err := c.Kafka.TLS.Client(false)
		errs = append(errs, config.Prefix("kafka.tls", err))
		if c.Kafka.SASL.Mechanism != "" {
			_, err := c.Kafka.SASL.Password().Load(1)
			errs = append(errs, config.Prefix("kafka.sasl", err))
		}
	}
	return errors.Join(errs...)
}

// ParserOptions returns the parser options this config asks for, loading the token
// secret and the GeoIP database. With no secret configured it returns an error unless
// allowRandom, in which case fingerprints use a random per-run key (see TokenSecret.Random).
func (c *Config) ParserOptions(allowRandom bool) (ParserOptions, error) {
	o := ParserOptions{
		APIKeyHeader: c.APIKeyHeader,
		DeviceHeader: c.DeviceHeader,
		MaxLineBytes: c.MaxLineBytes,
		MaxClockSkew: c.MaxClockSkew,
	}
	var perrs []error
	if o.TrustedProxies, perrs = c.trustedProxies(); len(perrs) > 0 {
		return o, errors.Join(perrs...)
	}
	switch {
	case c.TokenSecretRef().IsSet():
		s, err := LoadTokenSecret(c.TokenSecretFile, c.TokenSecretEnv)
		if err != nil {
			return o, err
		}
		o.Secret = s
	case allowRandom:
		o.Secret = RandomTokenSecret()
	default:
		return o, errors.New("ingest: no token secret: set ingest.token_secret_file or ingest.token_secret_env")
	}
	if c.GeoIP.Database != "" {
		g, err := OpenGeoIP(c.GeoIP.Database)
		if err != nil {
			return o, err
		}
		o.GeoIP = g
	}
	return o, nil
}

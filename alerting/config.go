package alerting

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/config"
)

// Config is the alerting section of gatewatch.yaml.
type Config struct {
	// RunbookBaseURL is where the runbooks are published: an alert links to
	// RunbookBaseURL/<detector>.md unless its detector sets its own runbook.
	RunbookBaseURL string           `yaml:"runbook_base_url"`
	Receivers      []ReceiverConfig `yaml:"receivers"`
	// Routes pick the receivers of each alert: the first route that matches wins
	// unless it says continue. No routes: every alert goes to every receiver.
	Routes   []Route   `yaml:"routes"`
	Silences []Silence `yaml:"silences"`
	Outbox   Outbox    `yaml:"outbox"`
	// Grouping gathers the alerts of a storm into one notification per group, as
	// Alertmanager does; a route may set its own. Without group_by every alert is
	// delivered on its own, at once.
	Grouping `yaml:",inline"`
	// RepeatInterval re-sends an incident that is still open and unchanged, as a
	// reminder; a route may override it. 0: never.
	RepeatInterval time.Duration `yaml:"repeat_interval"`
	// ResolveTimeout bounds reminders: an incident whose newest version is older than
	// this (its last_seen, event time, against the clock) is taken as over, because
	// the detectors re-emit an incident while it goes on. Default 1h, the longest
	// detector cooldown; alerts of a replay of old history get no reminders.
	ResolveTimeout time.Duration `yaml:"resolve_timeout"`
	// ReplayCommand is shown in Slack messages for the 30 minutes around an alert;
	// {from} and {to} are replaced with RFC 3339 times, and gatewatch's command
	// line fills in {config} (the config file's path), {brokers} and {topics}
	// (ingest.kafka's), so the command runs as printed and raises the alert again,
	// with its id. Empty: no replay command in the message.
	ReplayCommand string `yaml:"replay_command"`
}

// Outbox configures the durable outbox every alert enters before delivery.
type Outbox struct {
	Dir            string        `yaml:"dir"`             // default: <store.data_dir>/outbox
	InitialBackoff time.Duration `yaml:"initial_backoff"` // default 1s
	MaxBackoff     time.Duration `yaml:"max_backoff"`     // default 5m
	// GiveUpAfter parks a delivery as failed, loudly (log and metric), once it has
	// failed for this long; it stays in the outbox for an operator. Default 24h.
	GiveUpAfter time.Duration `yaml:"give_up_after"`
	// Retention is how long a delivered alert version is remembered, so that the same
	// version put again (a replay after a crash, `notify` run twice) is not sent
	// again. Failed deliveries are kept until an operator requeues them. Default 720h.
	Retention time.Duration `yaml:"retention"`
}

// ReceiverConfig is one named destination; exactly one of the kinds is set.
type ReceiverConfig struct {
	Name      string        `yaml:"name"`
	RateLimit float64       `yaml:"rate_limit"` // most notifications a second; 0: unlimited
	Burst     int           `yaml:"burst"`      // default 1 when rate_limit is set
	Timeout   time.Duration `yaml:"timeout"`    // per attempt; default 10s

	Slack     *SlackConfig     `yaml:"slack,omitempty"`
	SplunkHEC *SplunkHECConfig `yaml:"splunk_hec,omitempty"`
	Syslog    *SyslogConfig    `yaml:"syslog,omitempty"`
	Kafka     *KafkaConfig     `yaml:"kafka,omitempty"`
	Webhook   *WebhookConfig   `yaml:"webhook,omitempty"`
	File      *FileConfig      `yaml:"file,omitempty"`
}

// Kind returns the receiver's kind ("slack", "splunk_hec", ...), or "" when none or
// several are set.
func (r *ReceiverConfig) Kind() string {
	kinds := r.kinds()
	if len(kinds) != 1 {
		return ""
	}
	return kinds[0]
}

func (r *ReceiverConfig) kinds() []string {
	var k []string
	for _, c := range []struct {
		name string
		set  bool
	}{
		{"slack", r.Slack != nil}, {"splunk_hec", r.SplunkHEC != nil}, {"syslog", r.Syslog != nil},
		{"kafka", r.Kafka != nil}, {"webhook", r.Webhook != nil}, {"file", r.File != nil},
	} {
		if c.set {
			k = append(k, c.name)
		}
	}
	return k
}

// SlackConfig posts with a bot token (chat.postMessage, Block Kit, threaded updates)
// or, with webhook_url_file/env set, through an incoming webhook (no threads).
type SlackConfig struct {
	TokenFile      string `yaml:"token_file"`
	TokenEnv       string `yaml:"token_env"`
	Channel        string `yaml:"channel"`
	APIURL         string `yaml:"api_url"` // a Slack-compatible endpoint; default Slack's
	WebhookURLFile string `yaml:"webhook_url_file"`
	WebhookURLEnv  string `yaml:"webhook_url_env"`
}

// SplunkHECConfig sends to a Splunk HTTP Event Collector.
type SplunkHECConfig struct {
	URL        string     `yaml:"url"` // https://splunk:8088; /services/collector/event is added
	TokenFile  string     `yaml:"token_file"`
	TokenEnv   string     `yaml:"token_env"`
	Index      string     `yaml:"index"`
	Source     string     `yaml:"source"`     // default gatewatch
	SourceType string     `yaml:"sourcetype"` // default gatewatch:alert
	BatchSize  int        `yaml:"batch_size"` // events per POST; default 100
	TLS        config.TLS `yaml:"tls"`
}

// SyslogConfig sends RFC 5424 messages (octet counting over TCP/TLS, one datagram per
// message over UDP), with a JSON or CEF payload.
type SyslogConfig struct {
	Network  string     `yaml:"network"` // tcp (default), tls or udp
	Address  string     `yaml:"address"` // host:port
	Format   string     `yaml:"format"`  // json (default) or cef
	AppName  string     `yaml:"app_name"`
	Facility int        `yaml:"facility"` // default 10 (authpriv)
	TLS      config.TLS `yaml:"tls"`
}

// KafkaConfig writes alerts as JSON to a topic, in gatewatch's own shape or as OCSF
// Detection Findings.
type KafkaConfig struct {
	Brokers []string    `yaml:"brokers"`
	Topic   string      `yaml:"topic"`
	Format  string      `yaml:"format"` // gatewatch (default) or ocsf
	TLS     config.TLS  `yaml:"tls"`
	SASL    config.SASL `yaml:"sasl"`
}

// WebhookConfig POSTs alerts as JSON, signed with HMAC-SHA-256 over the body.
type WebhookConfig struct {
	URLFile    string     `yaml:"url_file"` // webhook URLs are credentials: from a file or the environment
	URLEnv     string     `yaml:"url_env"`
	SecretFile string     `yaml:"secret_file"`
	SecretEnv  string     `yaml:"secret_env"`
	TLS        config.TLS `yaml:"tls"`
}

// FileConfig appends alerts as JSON lines.
type FileConfig struct {
	Path string `yaml:"path"`
}

// Matcher selects alerts. Empty lists match everything; all set fields must match.
type Matcher struct {
	Detector []string             `yaml:"detector" json:"detector,omitempty"`
	Severity []detectors.Severity `yaml:"severity" json:"severity,omitempty"`
	Key      []string             `yaml:"key" json:"key,omitempty"`
	Labels   map[string]string    `yaml:"labels" json:"labels,omitempty"`
}

// Matches reports whether a is selected.
func (m *Matcher) Matches(a *detectors.Alert) bool {
	if len(m.Detector) > 0 && !slices.Contains(m.Detector, a.Detector) {
		return false
	}
	if len(m.Severity) > 0 && !slices.Contains(m.Severity, a.Severity) {
		return false
	}
	if len(m.Key) > 0 && !slices.Contains(m.Key, a.Key) {
		return false
	}
	for k, v := range m.Labels {
		if a.Labels[k] != v {
			return false
		}
	}
	return true
}

// Route sends the alerts it matches to its receivers.
type Route struct {
	Match          Matcher       `yaml:"match"`
	Receivers      []string      `yaml:"receivers"`
	Continue       bool          `yaml:"continue"`
	RepeatInterval time.Duration `yaml:"repeat_interval"` // 0: the alerting section's
	// Grouping of the alerts this route sends; each setting left out is the alerting
	// section's.
	Grouping `yaml:",inline"`
}

// Grouping says how alerts are gathered into groups (Alertmanager's group_by,
// group_wait and group_interval). The alerts of one group that a receiver has waiting
// are delivered together: one Slack message listing the incidents (updated in place as
// more join), one HEC request, one syslog summary line. Each incident keeps its own
// id, evidence, history and delivery state.
type Grouping struct {
	// GroupBy names what the alerts of one group share: detector, severity, key,
	// route (the evidence's method and route), key_prefix:N (the first N characters
	// of the key: a subnet, a tenant prefix) or labels.NAME. Empty: no grouping.
	GroupBy []string `yaml:"group_by,omitempty"`
	// GroupWait is how long a new group waits for more alerts before its first
	// notification. Default 0: the first incident of a storm goes out as fast as an
	// incident alone; the storm that follows waits for group_interval.
	GroupWait time.Duration `yaml:"group_wait,omitempty"`
	// GroupInterval is how long a group waits, after a notification, before the next
	// one with the alerts that joined or changed meanwhile. Default 1m.
	GroupInterval time.Duration `yaml:"group_interval,omitempty"`
}

// Silence mutes the alerts it matches until it expires.
type Silence struct {
	Match   Matcher   `yaml:"match"`
	Expires time.Time `yaml:"expires"` // RFC 3339; required
	Comment string    `yaml:"comment"` // why, and who asked
}

// DefaultConfig returns the alerting defaults.
func DefaultConfig() Config {
	return Config{
		RunbookBaseURL: "https://github.com/gatewatch/gatewatch/blob/main/deploy/runbooks",
		Outbox:         Outbox{InitialBackoff: time.Second, MaxBackoff: 5 * time.Minute, GiveUpAfter: 24 * time.Hour, Retention: 720 * time.Hour},
		Grouping:       Grouping{GroupInterval: time.Minute},
		ResolveTimeout: time.Hour,
		ReplayCommand:  "gatewatch replay --config {config} --kafka {brokers} --topic {topics} --from {from} --to {to}",
	}
}

// cfgErr reports one invalid setting at its key path below the alerting section
// ("receivers[0].slack.channel"), which the config loader turns into a file position.
var cfgErr = config.Errorf

// Token is where the bot token comes from.
func (s *SlackConfig) Token() config.SecretRef {
	return config.SecretRef{Key: "token", File: s.TokenFile, Env: s.TokenEnv}
}

// WebhookURL is where the incoming webhook's URL comes from; set, it selects the
// webhook mode.
func (s *SlackConfig) WebhookURL() config.SecretRef {
	return config.SecretRef{Key: "webhook_url", File: s.WebhookURLFile, Env: s.WebhookURLEnv}
}

// Token is where the HEC token comes from.
func (s *SplunkHECConfig) Token() config.SecretRef {
	return config.SecretRef{Key: "token", File: s.TokenFile, Env: s.TokenEnv}
}

// URL is where the webhook's URL comes from: the URL is a credential.
func (w *WebhookConfig) URL() config.SecretRef {
	return config.SecretRef{Key: "url", File: w.URLFile, Env: w.URLEnv}
}

// Secret is where the webhook's signing key comes from.
func (w *WebhookConfig) Secret() config.SecretRef {
	return config.SecretRef{Key: "secret", File: w.SecretFile, Env: w.SecretEnv}
}

// MinWebhookSecretBytes is the shortest webhook signing key accepted: a shorter HMAC
// key is guessable, and usually a mistake.
const MinWebhookSecretBytes = 16

// Validate reports every invalid setting: receivers with no kind or several, names
// used twice, routes naming unknown receivers, silences without an expiry.
func (c *Config) Validate() error {
	var errs []error
	if c.RunbookBaseURL != "" {
		if u, err := url.Parse(c.RunbookBaseURL); err != nil || u.Scheme == "" {
			errs = append(errs, cfgErr("runbook_base_url", "must be an absolute URL, got %q", c.RunbookBaseURL))
		}
	}
	names := map[string]bool{}
	for i, r := range c.Receivers {
		p := fmt.Sprintf("receivers[%d]", i)
		switch {
		case r.Name == "":
			errs = append(errs, cfgErr(p+".name", "must be set"))
		case names[r.Name]:
			errs = append(errs, cfgErr(p+".name", "receiver %q is defined twice", r.Name))
		}
		names[r.Name] = true
		switch k := r.kinds(); len(k) {
		case 0:
			errs = append(errs, cfgErr(p, "needs exactly one of slack, splunk_hec, syslog, kafka, webhook, file"))
		case 1:
		default:
			errs = append(errs, cfgErr(p, "sets %s: a receiver has exactly one kind", strings.Join(k, " and ")))
		}
		if r.RateLimit < 0 {
			errs = append(errs, cfgErr(p+".rate_limit", "must not be negative"))
		}
		if r.Burst < 0 {
			errs = append(errs, cfgErr(p+".burst", "must not be negative"))
		}
		if r.Timeout < 0 {
			errs = append(errs, cfgErr(p+".timeout", "must not be negative"))
		}
		errs = append(errs, r.validateKind(p)...)
	}
	for i, rt := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		if len(rt.Receivers) == 0 {
			errs = append(errs, cfgErr(p+".receivers", "must name at least one receiver"))
		}
		for j, n := range rt.Receivers {
			if !names[n] {
				errs = append(errs, cfgErr(fmt.Sprintf("%s.receivers[%d]", p, j), "undefined receiver %q", n))
			}
		}
		errs = append(errs, rt.Match.validate(p+".match")...)
	}
	for i, s := range c.Silences {
		p := fmt.Sprintf("silences[%d]", i)
		if s.Expires.IsZero() {
			errs = append(errs, cfgErr(p+".expires", "must be set: a silence without an end hides alerts forever"))
		}
		errs = append(errs, s.Match.validate(p+".match")...)
	}
	o := c.Outbox
	if o.InitialBackoff <= 0 || o.MaxBackoff < o.InitialBackoff {
		errs = append(errs, cfgErr("outbox", "need 0 < initial_backoff <= max_backoff"))
	}
	if o.GiveUpAfter <= 0 {
		errs = append(errs, cfgErr("outbox.give_up_after", "must be positive"))
	}
	if o.Retention <= 0 {
		errs = append(errs, cfgErr("outbox.retention", "must be positive: delivered alerts are remembered for it, to send each version once"))
	}
	if c.RepeatInterval < 0 {
		errs = append(errs, cfgErr("repeat_interval", "must not be negative"))
	}
	if c.ResolveTimeout <= 0 {
		errs = append(errs, cfgErr("resolve_timeout", "must be positive"))
	}
	for i, rt := range c.Routes {
		if rt.RepeatInterval < 0 {
			errs = append(errs, cfgErr(fmt.Sprintf("routes[%d].repeat_interval", i), "must not be negative"))
		}
		errs = append(errs, rt.Grouping.validate(fmt.Sprintf("routes[%d].", i))...)
	}
	errs = append(errs, c.Grouping.validate("")...)
	return errors.Join(errs...)
}

func (m *Matcher) validate(p string) []error {
	var errs []error
	for i, d := range m.Detector {
		if !slices.Contains(detectors.Names, d) {
			errs = append(errs, cfgErr(fmt.Sprintf("%s.detector[%d]", p, i), "unknown detector %q (want one of %s)", d, strings.Join(detectors.Names, ", ")))
		}
	}
	for i, s := range m.Severity {
		if !s.Valid() {
			errs = append(errs, cfgErr(fmt.Sprintf("%s.severity[%d]", p, i), "unknown severity %q", s))
		}
	}
	return errs
}

func (r *ReceiverConfig) validateKind(p string) []error {
	var errs []error
	add := func(prefix string, err error) { errs = append(errs, config.Prefix(prefix, err)) }
	switch {
	case r.Slack != nil:
		s := r.Slack
		if s.WebhookURL().IsSet() {
			add(p+".slack", s.WebhookURL().Validate(true))
		} else {
			add(p+".slack", s.Token().Validate(true))
			if s.Channel == "" {
				errs = append(errs, cfgErr(p+".slack.channel", "must be set for the bot-token mode"))
			}
		}
	case r.SplunkHEC != nil:
		h := r.SplunkHEC
		u, err := url.Parse(h.URL)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			errs = append(errs, cfgErr(p+".splunk_hec.url", "must be a URL like https://splunk:8088"))
		case u.Scheme == "http" && h.TLS.On():
			errs = append(errs, cfgErr(p+".splunk_hec.tls", "turns TLS on, but the url is http://; use https://"))
		}
		add(p+".splunk_hec", h.Token().Validate(true))
		add(p+".splunk_hec.tls", h.TLS.Validate())
	case r.Syslog != nil:
		s := r.Syslog
		if !slices.Contains([]string{"", "tcp", "tls", "udp"}, s.Network) {
			errs = append(errs, cfgErr(p+".syslog.network", "must be tcp, tls or udp, got %q", s.Network))
		}
		if s.Address == "" {
			errs = append(errs, cfgErr(p+".syslog.address", "must be set (host:port)"))
		}
		if !slices.Contains([]string{"", "json", "cef"}, s.Format) {
			errs = append(errs, cfgErr(p+".syslog.format", "must be json or cef, got %q", s.Format))
		}
		if s.Facility < 0 || s.Facility > 23 {
			errs = append(errs, cfgErr(p+".syslog.facility", "must be 0-23, got %d", s.Facility))
		}
		if s.Network == "udp" && s.TLS.On() {
			errs = append(errs, cfgErr(p+".syslog.tls", "turns TLS on, which needs network tls (or tcp), not udp"))
		}
		add(p+".syslog.tls", s.TLS.Validate())
	case r.Kafka != nil:
		if len(r.Kafka.Brokers) == 0 || r.Kafka.Topic == "" {
			errs = append(errs, cfgErr(p+".kafka", "needs brokers and topic"))
		}
		if !slices.Contains([]string{"", "gatewatch", "ocsf"}, r.Kafka.Format) {
			errs = append(errs, cfgErr(p+".kafka.format", "must be gatewatch or ocsf, got %q", r.Kafka.Format))
		}
		add(p+".kafka.tls", r.Kafka.TLS.Validate())
		add(p+".kafka.sasl", r.Kafka.SASL.Validate())
	case r.Webhook != nil:
		add(p+".webhook", errors.Join(r.Webhook.URL().Validate(true), r.Webhook.Secret().Validate(true)))
		add(p+".webhook.tls", r.Webhook.TLS.Validate())
	case r.File != nil:
		if r.File.Path == "" {
			errs = append(errs, cfgErr(p+".file.path", "must be set"))
		}
	}
	return errs
}

// Check reads what each receiver's settings name, as building it will: its secrets
// (a webhook's signing key at least MinWebhookSecretBytes long) and its TLS files. It
// reports each problem as a *config.Error and never a secret's value. It assumes
// Validate passed.
func (c *Config) Check() error {
	var errs []error
	load := func(p string, ref config.SecretRef, minLen int) {
		_, err := ref.Load(minLen)
		errs = append(errs, config.Prefix(p, err))
	}
	tls := func(p string, t config.TLS, transport bool) {
		_, err := t.Client(transport)
		errs = append(errs, config.Prefix(p+".tls", err))
	}
	for i, r := range c.Receivers {
		p := fmt.Sprintf("receivers[%d]", i)
		switch {
		case r.Slack != nil:
			if r.Slack.WebhookURL().IsSet() {
				load(p+".slack", r.Slack.WebhookURL(), 1)
			} else {
				load(p+".slack", r.Slack.Token(), 1)
			}
		case r.SplunkHEC != nil:
			load(p+".splunk_hec", r.SplunkHEC.Token(), 1)
			tls(p+".splunk_hec", r.SplunkHEC.TLS, false)
		case r.Syslog != nil:
			tls(p+".syslog", r.Syslog.TLS, r.Syslog.Network == "tls")
		case r.Kafka != nil:
			tls(p+".kafka", r.Kafka.TLS, false)
			if r.Kafka.SASL.Mechanism != "" {
				load(p+".kafka.sasl", r.Kafka.SASL.Password(), 1)
			}
		case r.Webhook != nil:
			load(p+".webhook", r.Webhook.URL(), 1)
			load(p+".webhook", r.Webhook.Secret(), MinWebhookSecretBytes)
			tls(p+".webhook", r.Webhook.TLS, false)
		}
	}
	return errors.Join(errs...)
}

// Warnings reports what is valid but almost certainly not what the operator meant, as
// *config.Errors at the settings concerned: no receivers at all; a route that can
// never match, because the detectors it names never fire (fires says which can) or an
// earlier route without continue takes every alert it would match; a receiver no
// route names; alerts of a detector and severity that no route takes, which reach
// nobody.
func (c *Config) Warnings(fires []string) error {
	if len(c.Receivers) == 0 {
		return cfgErr("receivers", "none: every alert reaches nobody (notify fails, run only counts them)")
	}
	if len(c.Routes) == 0 {
		return nil // every alert goes to every receiver
	}
	var errs []error
	named := map[string]bool{}
	for i, rt := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		for _, n := range rt.Receivers {
			named[n] = true
		}
		if ds := rt.Match.Detector; len(ds) > 0 && !slices.ContainsFunc(ds, func(d string) bool { return slices.Contains(fires, d) }) {
			errs = append(errs, cfgErr(p+".match.detector", "never matches: %s %s disabled", strings.Join(ds, ", "), plural(len(ds), "is", "are")))
			continue
		}
		for j := range i {
			if c.Routes[j].Continue || !c.Routes[j].Match.covers(&rt.Match) {
				continue
			}
			errs = append(errs, cfgErr(p, "never matches: routes[%d] takes every alert it would, and has no continue: true", j))
			break
		}
	}
	for i, r := range c.Receivers {
		if !named[r.Name] {
			errs = append(errs, cfgErr(fmt.Sprintf("receivers[%d]", i), "receiver %q is in no route: it gets nothing", r.Name))
		}
	}
	for _, d := range fires {
		var lost []string
		for _, s := range []detectors.Severity{detectors.SeverityLow, detectors.SeverityMedium, detectors.SeverityHigh, detectors.SeverityCritical} {
			a := detectors.Alert{Detector: d, Severity: s}
			if !slices.ContainsFunc(c.Routes, func(rt Route) bool {
				return len(rt.Match.Key) == 0 && len(rt.Match.Labels) == 0 && rt.Match.Matches(&a)
			}) {
				lost = append(lost, string(s))
			}
		}
		if len(lost) > 0 {
			errs = append(errs, cfgErr("routes", "%s alerts of severity %s may match no route and reach nobody; a last route without match takes the rest",
				d, strings.Join(lost, ", ")))
		}
	}
	return errors.Join(errs...)
}

// covers reports whether m matches every alert o matches: each of m's conditions is
// one of o's, or looser.
func (m *Matcher) covers(o *Matcher) bool {
	within := func(mine, theirs []string) bool {
		return len(mine) == 0 || (len(theirs) > 0 && !slices.ContainsFunc(theirs, func(s string) bool { return !slices.Contains(mine, s) }))
	}
	sev := func(s []detectors.Severity) []string {
		out := make([]string, len(s))
		for i := range s {
			out[i] = string(s[i])
		}
		return out
	}
	for k, v := range m.Labels {
		if ov, ok := o.Labels[k]; !ok || ov != v {
			return false
		}
	}
	return within(m.Detector, o.Detector) && within(sev(m.Severity), sev(o.Severity)) && within(m.Key, o.Key)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

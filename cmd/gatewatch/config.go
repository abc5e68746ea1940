package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/internal/cluster"
	gwconfig "github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/console"
	"github.com/gatewatch/gatewatch/internal/pipeline"
	"github.com/gatewatch/gatewatch/store"
)

// config is gatewatch.yaml: each part's section, decoded over its defaults, and the
// live service's own sections.
type config struct {
	Ingest    ingest.Config        `yaml:"ingest"`
	Detectors detectors.Config     `yaml:"detectors"`
	Store     store.Config         `yaml:"store"`
	Alerting  alerting.Config      `yaml:"alerting"`
	Admin     pipeline.AdminConfig `yaml:"admin"`
	Console   console.Config       `yaml:"console"`
	Cluster   *clusterConfig       `yaml:"cluster,omitempty"` // nil: one instance runs everything

	// Where the config came from, to place errors found after loading (check).
	file string
	root *yaml.Node
}

// clusterConfig turns on scale-out: stage one writes normalised records to internal
// topics, stage two runs one engine per internal partition.
type clusterConfig struct {
	InternalTopicPrefix string `yaml:"internal_topic_prefix"` // default DefaultInternalTopicPrefix
	// Partitions of each internal topic; required, because it is fixed for the life of
	// a deployment (it decides which task owns which key).
	Partitions int `yaml:"partitions"`
}

// DefaultInternalTopicPrefix names the internal topics unless cluster says otherwise.
const DefaultInternalTopicPrefix = "gatewatch-internal"

// maxInternalPartitions bounds cluster.partitions: each is a task with its own
// engine, and Kafka itself advises against topics with many thousand partitions.
const maxInternalPartitions = 10_000

// topicRE is what Kafka accepts in a topic name; the prefix leaves room for the
// suffixes of the internal topics within Kafka's 249 characters.
var topicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,200}$`)

func defaultConfig() config {
	return config{
		Ingest:    ingest.DefaultConfig(),
		Detectors: detectors.DefaultConfig(),
		Store:     store.DefaultConfig(),
		Alerting:  alerting.DefaultConfig(),
	}
}

// applyDefaults fills what decoding cannot: a block that the file has but that has no
// defaults of its own, because the decoder builds it from zero (cluster).
func (c *config) applyDefaults() {
	if c.Cluster != nil && c.Cluster.InternalTopicPrefix == "" {
		c.Cluster.InternalTopicPrefix = DefaultInternalTopicPrefix
	}
}

// validate checks every section, each error keyed by its full path.
func (c *config) validate() error {
	return errors.Join(
		gwconfig.Prefix("ingest", c.Ingest.Validate()),
		gwconfig.Prefix("detectors", c.Detectors.Validate()),
		gwconfig.Prefix("store", c.Store.Validate()),
		gwconfig.Prefix("alerting", c.Alerting.Validate()),
		c.validateService(),
	)
}

// validateService checks the admin, console and cluster sections.
func (c *config) validateService() error {
	var errs []error
	listen := func(key, addr string) {
		if addr == "" {
			return
		}
		_, port, err := net.SplitHostPort(addr)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || (n == 0 && port != "0") {
			errs = append(errs, gwconfig.Errorf(key, "must be host:port (127.0.0.1:9464, :9464), got %q", addr))
		}
	}
	listen("admin.listen", c.Admin.Listen)
	errs = append(errs, gwconfig.Prefix("console", c.Console.Validate()))
	if c.Console.Listen != "" && c.Console.Listen == c.Admin.Listen {
		errs = append(errs, gwconfig.Errorf("console.listen", "is admin.listen too; give each its own address"))
	}
	if cl := c.Cluster; cl != nil {
		if !topicRE.MatchString(cl.InternalTopicPrefix) {
			errs = append(errs, gwconfig.Errorf("cluster.internal_topic_prefix",
				"must be 1-200 letters, digits, '.', '_' or '-' (a Kafka topic name), got %q", cl.InternalTopicPrefix))
		}
		if cl.Partitions < 1 || cl.Partitions > maxInternalPartitions {
			errs = append(errs, gwconfig.Errorf("cluster.partitions",
				"must be between 1 and %d (fixed for the life of a deployment), got %d", maxInternalPartitions, cl.Partitions))
		}
		if len(c.Ingest.Kafka.Brokers) == 0 {
			errs = append(errs, gwconfig.Errorf("cluster", "needs ingest.kafka.brokers: the internal topics live on them"))
		}
		if c.Store.ClickHouse == nil {
			// A task that moves to another replica (a rebalance, a replica stopped or
			// lost) carries on from the baselines and open incidents of the store: an
			// embedded store is the replica's own, and the new owner would neither
			// know the keys' history nor the incidents already paged.
			errs = append(errs, gwconfig.Errorf("cluster", "needs store.clickhouse: the replicas share its baselines and open incidents, so that a task moving between them carries on; the embedded store is one replica's own"))
		}
		if err := cluster.CheckDetectors(c.Detectors); err != nil {
			errs = append(errs, gwconfig.Errorf("cluster", "%s", strings.TrimPrefix(err.Error(), "cluster: ")))
		}
	}
	return errors.Join(errs...)
}

// loadConfigFile reads and validates a config file; an empty name gives the defaults.
func loadConfigFile(name string) (*config, error) {
	if name == "" {
		cfg := defaultConfig()
		return &cfg, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return loadConfig(name, b)
}

// loadConfig decodes b strictly over the defaults and validates it. It reports every
// error of the file at once, in file order, each a *config.Error that names the file,
// line and column of the key to fix and its key path; a YAML syntax error stops the
// decoding and is reported alone, at the line where the parser found it.
func loadConfig(name string, b []byte) (*config, error) {
	cfg := defaultConfig()
	cfg.file, cfg.root = name, &yaml.Node{}
	if err := yaml.Unmarshal(b, cfg.root); err != nil {
		return nil, syntaxError(name, b, err)
	}
	var errs []*gwconfig.Error
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
		if te, ok := errors.AsType[*yaml.TypeError](err); ok {
			msgs = te.Errors
		}
		for _, msg := range msgs {
			errs = append(errs, decodeError(name, cfg.root, msg))
		}
	}
	for _, e := range gwconfig.WholeNumbers(cfg.root, &cfg) {
		e.File = name
		errs = append(errs, e)
	}
	// What decoded is checked too, so that one run shows every error: a setting
	// that did not decode keeps its default, which is valid.
	cfg.applyDefaults()
	errs = append(errs, cfg.place(cfg.validate())...)
	if len(errs) > 0 {
		return nil, joinPlaced(errs)
	}
	cfg.Alerting.ReplayCommand = replayCommand(cfg.Alerting.ReplayCommand, name, &cfg)
	return &cfg, nil
}

// replayCommand fills in what the replay command shown with each alert knows from the
// config: {config} (this file, absolute), {brokers} and {topics} (ingest.kafka's), so
// that the command runs as printed on the host that runs gatewatch. The receivers fill
// in {from} and {to} per alert.
func replayCommand(tmpl, name string, cfg *config) string {
	if abs, err := filepath.Abs(name); err == nil {
		name = abs
	}
	topics := make([]string, len(cfg.Ingest.Kafka.Topics))
	for i, t := range cfg.Ingest.Kafka.Topics {
		topics[i] = t.Name
	}
	return strings.NewReplacer("{config}", name, "{brokers}", strings.Join(cfg.Ingest.Kafka.Brokers, ","),
		"{topics}", strings.Join(topics, ",")).Replace(tmpl)
}

// joinPlaced joins errors in file order.
func joinPlaced(es []*gwconfig.Error) error {
	slices.SortStableFunc(es, func(a, b *gwconfig.Error) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return errors.Join(out...)
}

// place gives each error of err the file and the position of its key (or of the
// nearest enclosing key the file has: a missing key's parent).
func (c *config) place(err error) []*gwconfig.Error {
	es := gwconfig.Errors(err)
	for i, e := range es {
		p := *e
		p.File = c.file
		if p.Line == 0 && c.root != nil {
			p.Line, p.Column = position(c.root, p.Path)
		}
		es[i] = &p
	}
	return es
}

var (
	yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	// What a decode error says about the node it is about: an unknown field's name, a
	// key defined twice, or a value (yaml quotes it in backquotes, shortened beyond
	// ten characters to seven and "..."; leaf types in double quotes after "got").
	unknownFieldRE = regexp.MustCompile(`^field (\S+) not found in type`)
	duplicateKeyRE = regexp.MustCompile(`^mapping key "(.*)" already defined`)
	valueRE        = regexp.MustCompile("`([^`]*)`|got \"([^\"]*)\"")
)

// decodeError turns one of yaml's "line N: message" decode errors into an error at the
// setting it is about: "file:N:col: key.path: message". Several settings may share a
// line (a flow mapping such as {window: 10m, max_device: 2}); what the message quotes
// picks the one.
func decodeError(name string, root *yaml.Node, msg string) *gwconfig.Error {
	e := &gwconfig.Error{File: name, Msg: msg}
	m := yamlLineRE.FindStringSubmatch(msg)
	if m == nil {
		return e
	}
	e.Line, _ = strconv.Atoi(m[1])
	e.Msg = m[2]
	if strings.Contains(e.Msg, "time.Duration") {
		e.Msg += " (durations look like 90s, 10m, 720h)"
	}
	var match func(k, v *yaml.Node) bool
	switch {
	case unknownFieldRE.MatchString(e.Msg), duplicateKeyRE.MatchString(e.Msg):
		f := unknownFieldRE.FindStringSubmatch(e.Msg)
		if f == nil {
			f = duplicateKeyRE.FindStringSubmatch(e.Msg)
		}
		match = func(k, _ *yaml.Node) bool { return k != nil && k.Value == f[1] }
	case valueRE.MatchString(e.Msg):
		f := valueRE.FindStringSubmatch(e.Msg)
		want := f[1] + f[2]
		match = func(_, v *yaml.Node) bool {
			if v.Kind != yaml.ScalarNode {
				return false
			}
			if short, ok := strings.CutSuffix(want, "..."); ok && len(v.Value) > 10 {
				return strings.HasPrefix(v.Value, short)
			}
			return v.Value == want
		}
	case strings.Contains(e.Msg, "!!seq"), strings.Contains(e.Msg, "!!map"):
		kind := yaml.SequenceNode
		if strings.Contains(e.Msg, "!!map") {
			kind = yaml.MappingNode
		}
		match = func(_, v *yaml.Node) bool { return v.Kind == kind }
	}
	if match != nil {
		e.Path, e.Column = settingAt(root, e.Line, match)
	}
	if e.Path == "" {
		e.Path, e.Column = settingAt(root, e.Line, func(_, _ *yaml.Node) bool { return true })
	}
	if f := unknownFieldRE.FindStringSubmatch(e.Msg); f != nil {
		// yaml names the Go type; say what to fix instead.
		e.Msg = "unknown key " + f[1]
		if near := nearKey(e.Path, f[1]); near != "" {
			e.Msg += "; did you mean " + near + "?"
		}
	}
	return e
}

// defaultKeys is the default config as a YAML tree: the keys each section knows (but
// those empty by default, such as overrides).
var defaultKeys = sync.OnceValue(func() *yaml.Node {
	var doc yaml.Node
	if err := doc.Encode(defaultConfig()); err != nil {
		return nil
	}
	return &doc
})

// nearKey returns the key of path's section (path's last element is the unknown key
// name) that name most likely misspells: one at most two edits away, or the same but
// for case; "" when none is.
func nearKey(path, name string) string {
	n := defaultKeys()
	parts := strings.Split(path, ".")
	for _, part := range parts[:len(parts)-1] {
		if n == nil || n.Kind != yaml.MappingNode {
			return ""
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				next = n.Content[i+1]
			}
		}
		n = next
	}
	if n == nil || n.Kind != yaml.MappingNode {
		return ""
	}
	best, bestD := "", 3
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i].Value
		d := editDistance(strings.ToLower(k), strings.ToLower(name))
		if d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, by bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// settingAt returns the key path and column of the first setting on line, in file
// order, for which match(key, value) holds: a mapping entry whose key or scalar value
// is on line (at the column of its key), or a sequence item on line (key nil; at the
// column of the item).
func settingAt(root *yaml.Node, line int, match func(k, v *yaml.Node) bool) (string, int) {
	var walk func(n *yaml.Node, path string) (string, int, bool)
	walk = func(n *yaml.Node, path string) (string, int, bool) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if p, col, ok := walk(c, path); ok {
					return p, col, true
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				kp := gwconfig.Join(path, k.Value)
				if (k.Line == line || (v.Kind == yaml.ScalarNode && v.Line == line)) && match(k, v) {
					return kp, k.Column, true
				}
				if p, col, ok := walk(v, kp); ok {
					return p, col, true
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				ip := path + "[" + strconv.Itoa(i) + "]"
				if c.Line == line && match(nil, c) {
					return ip, c.Column, true
				}
				if p, col, ok := walk(c, ip); ok {
					return p, col, true
				}
			}
		}
		return "", 0, false
	}
	p, col, _ := walk(root, "")
	return p, col
}

// syntaxError reports a YAML syntax error at the line where the parser found it. yaml
// names the line where the construct it was parsing began, counted from 0, so the
// line is found again here: the first prefix of the file that fails the same way.
func syntaxError(name string, b []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	m := yamlLineRE.FindStringSubmatch(msg)
	if m == nil {
		return &gwconfig.Error{File: name, Msg: "invalid YAML: " + msg}
	}
	e := &gwconfig.Error{File: name, Msg: "invalid YAML: " + m[2]}
	e.Line, _ = strconv.Atoi(m[1])
	if e.Line == 0 {
		e.Line = 1
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) > maxSyntaxSearch {
		return e
	}
	for n := 1; n <= len(lines); n++ {
		var root yaml.Node
		perr := yaml.Unmarshal(bytes.Join(lines[:n], nil), &root)
		if perr != nil && perr.Error() == err.Error() {
			e.Line = n
			break
		}
	}
	return e
}

// maxSyntaxSearch bounds the lines syntaxError parses again (quadratic in them).
const maxSyntaxSearch = 5000

// position finds the node of a key path such as "ingest.kafka.topics[1].format" and
// returns its line and column, or the deepest ancestor's when the key is not in the file.
func position(root *yaml.Node, path string) (line, col int) {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for part := range strings.SplitSeq(path, ".") {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			name = part[:i]
			if v, err := strconv.Atoi(part[i+1 : len(part)-1]); err == nil {
				idx = v
			}
		}
		next := mappingValue(n, name)
		if next == nil {
			return line, col
		}
		line, col = next.key.Line, next.key.Column
		n = next.value
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line, col
			}
			n = n.Content[idx]
			line, col = n.Line, n.Column
		}
	}
	return line, col
}

type keyValue struct{ key, value *yaml.Node }

func mappingValue(n *yaml.Node, key string) *keyValue {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return &keyValue{n.Content[i], n.Content[i+1]}
		}
	}
	return nil
}

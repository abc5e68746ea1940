package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/internal/pipeline"
	"github.com/gatewatch/gatewatch/store"
)

// config is gatewatch.yaml: each part's section, decoded over its defaults.
type config struct {
	Ingest    ingest.Config        `yaml:"ingest"`
	Detectors detectors.Config     `yaml:"detectors"`
	Store     store.Config         `yaml:"store"`
	Alerting  alerting.Config      `yaml:"alerting"`
	Admin     pipeline.AdminConfig `yaml:"admin"`
}

func defaultConfig() config {
	return config{
		Ingest:    ingest.DefaultConfig(),
		Detectors: detectors.DefaultConfig(),
		Store:     store.DefaultConfig(),
		Alerting:  alerting.DefaultConfig(),
	}
}

// keyError is what each part's Validate reports per setting: a dotted key path below
// the part's section.
type keyError interface {
	error
	Key() string
}

// validate checks every section, prefixing each error's key with its section.
func (c *config) validate() error {
	var errs []error
	add := func(section string, err error) {
		for _, e := range flatten(err) {
			errs = append(errs, &sectionError{section: section, err: e})
		}
	}
	add("ingest", c.Ingest.Validate())
	add("detectors", c.Detectors.Validate())
	add("store", c.Store.Validate())
	add("alerting", c.Alerting.Validate())
	return errors.Join(errs...)
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// sectionError is a part's validation error placed in the whole file.
type sectionError struct {
	section string
	err     error
}

func (e *sectionError) key() string {
	var ke keyError
	var ce *ingest.ConfigError
	switch {
	case errors.As(e.err, &ce):
		return e.section + "." + ce.Key
	case errors.As(e.err, &ke):
		return e.section + "." + ke.Key()
	}
	return e.section
}

func (e *sectionError) Error() string {
	var ce *ingest.ConfigError
	if errors.As(e.err, &ce) {
		return e.section + "." + ce.Key + ": " + ce.Msg
	}
	var ke keyError
	if errors.As(e.err, &ke) && !strings.HasPrefix(ke.Error(), ke.Key()) {
		return e.section + "." + ke.Key() + ": " + ke.Error()
	}
	return e.section + "." + e.err.Error()
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

// loadConfig decodes b strictly over the defaults and validates it. Every error names
// the file, line and column of the key to fix.
func loadConfig(name string, b []byte) (*config, error) {
	var root yaml.Node // kept only to turn key paths into line:column
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cfg := defaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, decodeError(name, &root, err)
	}
	if err := cfg.validate(); err != nil {
		return nil, withPositions(name, &root, err)
	}
	return &cfg, nil
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// decodeError rewrites yaml's "line N: message" errors as "file:N:col: key.path: message",
// so an operator sees which setting to fix, not only where.
func decodeError(name string, root *yaml.Node, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %w", name, err)
	}
	var out []error
	for _, msg := range te.Errors {
		m := yamlLineRE.FindStringSubmatch(msg)
		if m == nil {
			out = append(out, fmt.Errorf("%s: %s", name, msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		text := m[2]
		if strings.Contains(text, "time.Duration") {
			text += " (durations look like 90s, 10m, 720h)"
		}
		if path, col := keyAtLine(root, line); path != "" {
			out = append(out, fmt.Errorf("%s:%d:%d: %s: %s", name, line, col, path, text))
		} else {
			out = append(out, fmt.Errorf("%s:%d: %s", name, line, text))
		}
	}
	return errors.Join(out...)
}

// keyAtLine returns the dotted path and column of the mapping key on line, or of the
// value on line for a sequence item.
func keyAtLine(root *yaml.Node, line int) (string, int) {
	var walk func(n *yaml.Node, path string) (string, int)
	walk = func(n *yaml.Node, path string) (string, int) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if p, col := walk(c, path); p != "" {
					return p, col
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				kp := k.Value
				if path != "" {
					kp = path + "." + k.Value
				}
				if k.Line == line && (v.Kind == yaml.ScalarNode || v.Line != line) {
					return kp, k.Column
				}
				if p, col := walk(v, kp); p != "" {
					return p, col
				}
			}
			if n.Line == line && path != "" {
				return path, n.Column
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				if p, col := walk(c, fmt.Sprintf("%s[%d]", path, i)); p != "" {
					return p, col
				}
			}
		case yaml.ScalarNode:
			if n.Line == line {
				return path, n.Column
			}
		}
		return "", 0
	}
	return walk(root, "")
}

// withPositions prefixes each validation error with file:line:col of its key (or of
// the nearest enclosing key that the file has: a missing key's parent).
func withPositions(name string, root *yaml.Node, err error) error {
	var out []error
	for _, e := range flatten(err) {
		var se *sectionError
		if !errors.As(e, &se) {
			out = append(out, fmt.Errorf("%s: %w", name, e))
			continue
		}
		line, col := position(root, se.key())
		if line == 0 {
			out = append(out, fmt.Errorf("%s: %w", name, e))
			continue
		}
		out = append(out, fmt.Errorf("%s:%d:%d: %w", name, line, col, e))
	}
	return errors.Join(out...)
}

// position finds the node of a key path such as "ingest.kafka.topics[1].format" and
// returns its line and column, or the deepest ancestor's when the key is not in the file.
func position(root *yaml.Node, path string) (line, col int) {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for _, part := range strings.Split(path, ".") {
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

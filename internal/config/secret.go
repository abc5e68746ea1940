package config

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// redacted is how a Secret prints, in every form.
const redacted = "<redacted>"

// A Secret is a credential once loaded: a token, a password, a webhook URL, an HMAC
// key. It prints as <redacted> in every form (fmt verbs, slog, JSON, YAML, text), so
// it cannot reach a log, an error or a config dump by accident; Reveal hands the value
// to the one place that sends it.
type Secret string

// Reveal returns the value.
func (s Secret) Reveal() string { return string(s) }

func (Secret) String() string                        { return redacted }
func (Secret) GoString() string                      { return redacted }
func (Secret) Format(f fmt.State, _ rune)            { _, _ = io.WriteString(f, redacted) }
func (Secret) LogValue() slog.Value                  { return slog.StringValue(redacted) }
func (Secret) MarshalJSON() ([]byte, error)          { return []byte(`"` + redacted + `"`), nil }
func (Secret) MarshalYAML() (any, error)             { return redacted, nil }
func (Secret) MarshalText() ([]byte, error)          { return []byte(redacted), nil }
func (s Secret) AppendText(b []byte) ([]byte, error) { return append(b, redacted...), nil }

// A SecretRef says where a secret comes from, as the config file says it: a file,
// named by the setting <Key>_file, whose content is the secret (trailing CR and LF
// trimmed), or an environment variable, named by <Key>_env. Secrets are never written
// inline in the file. Key is the settings' common stem as a key path
// ("kafka.sasl.password"), so that errors name the setting to fix.
type SecretRef struct {
	Key  string
	File string
	Env  string
}

// IsSet reports whether the reference names a file or a variable.
func (r SecretRef) IsSet() bool { return r.File != "" || r.Env != "" }

// Validate checks the reference without reading anything: it names at most one
// source, and exactly one when required.
func (r SecretRef) Validate(required bool) error {
	switch {
	case r.File != "" && r.Env != "":
		return Errorf(r.Key+"_file", "set %s_file or %s_env, not both", last(r.Key), last(r.Key))
	case required && !r.IsSet():
		return Errorf(r.Key+"_file", "needs %s_file or %s_env", last(r.Key), last(r.Key))
	}
	return nil
}

// Load reads the secret and checks that it has at least minLen bytes (and at least
// one). Its errors say what is wrong (the file missing, unreadable or empty, the
// variable unset, the value too short), at the setting that names the source, and
// never what the value is.
func (r SecretRef) Load(minLen int) (Secret, error) {
	if err := r.Validate(true); err != nil {
		return "", err
	}
	minLen = max(minLen, 1)
	var v, key, from string
	if r.File != "" {
		key, from = r.Key+"_file", r.File
		b, err := os.ReadFile(r.File)
		if err != nil {
			return "", Errorf(key, "%v", err) // *PathError: the operation, the path and why
		}
		v = strings.TrimRight(string(b), "\r\n")
	} else {
		key, from = r.Key+"_env", "environment variable "+r.Env
		var ok bool
		if v, ok = os.LookupEnv(r.Env); !ok {
			return "", Errorf(key, "environment variable %s is not set", r.Env)
		}
	}
	switch {
	case v == "":
		return "", Errorf(key, "%s is empty", from)
	case len(v) < minLen:
		return "", Errorf(key, "%s holds %d bytes, want at least %d", from, len(v), minLen)
	}
	return Secret(v), nil
}

// last returns the last element of a key path: what the file calls the setting.
func last(path string) string {
	return path[strings.LastIndexByte(path, '.')+1:]
}

package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"slices"
)

// TLS is the tls block of every client gatewatch runs: the Kafka source and the kafka
// receiver, ClickHouse, Splunk HEC, webhooks and syslog. Paths are files; nothing
// secret is inline.
//
// The one rule: the block turns TLS on when it says enabled: true or sets anything
// else (a CA, a client certificate, a server name, insecure_skip_verify), because a
// setting that is silently ignored is worse than none. A transport that asks for TLS
// itself (an https:// URL, syslog's network: tls) has it whatever the block says, with
// the block's settings; a block that turns TLS on for a transport that cannot carry it
// (http://, udp) is an error of that receiver's config.
type TLS struct {
	Enabled            bool   `yaml:"enabled"`
	CAFile             string `yaml:"ca_file"`   // PEM; replaces the system roots
	CertFile           string `yaml:"cert_file"` // PEM client certificate, with key_file: mutual TLS
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`          // default: the host dialled
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"` // for test rigs only
}

// On reports whether the block turns TLS on.
func (t *TLS) On() bool {
	return t.Enabled || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// Validate checks the block without reading its files; keys are relative to it.
func (t *TLS) Validate() error {
	if (t.CertFile == "") != (t.KeyFile == "") {
		return Errorf("cert_file", "cert_file and key_file go together")
	}
	return nil
}

// Client returns the client TLS settings when TLS is on, by the block or because the
// transport asks for it (transport), and nil otherwise: TLS 1.2 at least, the CA file
// (else the system roots), the client certificate, the server name. It reads the files
// now; its errors are *Errors keyed relative to the block, and name files, never
// their content.
func (t *TLS) Client(transport bool) (*tls.Config, error) {
	if !transport && !t.On() {
		return nil, nil
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // the operator's explicit choice, off by default
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, Errorf("ca_file", "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, Errorf("ca_file", "%s holds no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, Errorf("cert_file", "loading the client certificate %s and its key %s: %v", t.CertFile, t.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// SASLMechanisms are the SASL mechanisms gatewatch speaks to Kafka.
var SASLMechanisms = []string{"plain", "scram-sha-256", "scram-sha-512"}

// SASL authenticates to Kafka; the password comes from a file or the environment.
type SASL struct {
	Mechanism    string `yaml:"mechanism"` // plain, scram-sha-256 or scram-sha-512; empty: no SASL
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
}

// Password is where the password comes from.
func (s *SASL) Password() SecretRef {
	return SecretRef{Key: "password", File: s.PasswordFile, Env: s.PasswordEnv}
}

// Validate checks the block without reading the password; keys are relative to it.
func (s *SASL) Validate() error {
	if s.Mechanism == "" {
		if s.Username != "" || s.Password().IsSet() {
			return Errorf("mechanism", "must be set (%s) when a username or password is", joinOr(SASLMechanisms))
		}
		return nil
	}
	var errs []error
	if !slices.Contains(SASLMechanisms, s.Mechanism) {
		errs = append(errs, Errorf("mechanism", "must be %s, got %q", joinOr(SASLMechanisms), s.Mechanism))
	}
	if s.Username == "" {
		errs = append(errs, Errorf("username", "must be set for SASL"))
	}
	errs = append(errs, s.Password().Validate(true))
	return errors.Join(errs...)
}

// joinOr returns "a, b or c".
func joinOr(s []string) string {
	if len(s) == 0 {
		return ""
	}
	out := s[0]
	for i, x := range s[1:] {
		if i == len(s)-2 {
			out += " or " + x
		} else {
			out += ", " + x
		}
	}
	return out
}

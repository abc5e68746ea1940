package kafka

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// security is what every connection to the brokers needs: TLS and SASL, built once from
// the config and shared by the reader and the writers.
type security struct {
	tls  *tls.Config    // nil: plaintext
	sasl sasl.Mechanism // nil: no authentication
}

func newSecurity(cfg ingest.KafkaConfig) (security, error) {
	var s security
	var err error
	if s.tls, err = tlsConfig(cfg.TLS); err != nil {
		return s, err
	}
	if s.sasl, err = saslMechanism(cfg.SASL); err != nil {
		return s, err
	}
	return s, nil
}

// dialer is what the consumer group reader connects with.
func (s security) dialer(cfg ingest.KafkaConfig) *kafkago.Dialer {
	return &kafkago.Dialer{
		ClientID:      cfg.ClientID,
		Timeout:       cfg.Timeout,
		DualStack:     true,
		KeepAlive:     30 * time.Second,
		TLS:           s.tls,
		SASLMechanism: s.sasl,
	}
}

// transport is what writers connect with.
func (s security) transport(cfg ingest.KafkaConfig) *kafkago.Transport {
	return &kafkago.Transport{
		ClientID:    cfg.ClientID,
		DialTimeout: cfg.Timeout,
		TLS:         s.tls,
		SASL:        s.sasl,
	}
}

// tlsConfig builds the client TLS config: the CA file (else the system roots), an
// optional client certificate for mutual TLS, and TLS 1.2 at least. Naming any file turns
// TLS on even without enabled: true, since a CA that is silently ignored is worse than none.
func tlsConfig(c ingest.TLSConfig) (*tls.Config, error) {
	if !c.Enabled && c.CAFile == "" && c.CertFile == "" && c.KeyFile == "" {
		return nil, nil
	}
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec // an explicit, documented operator choice
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka: tls: read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka: tls: ca_file %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" || c.KeyFile != "" {
		if c.CertFile == "" || c.KeyFile == "" {
			return nil, fmt.Errorf("kafka: tls: cert_file and key_file go together")
		}
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka: tls: load client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// saslMechanism builds the SASL mechanism. The password is read here, once, from its file
// or environment variable; it lives only inside the mechanism and no error quotes it.
func saslMechanism(c ingest.SASLConfig) (sasl.Mechanism, error) {
	if c.Mechanism == "" {
		return nil, nil
	}
	if c.Username == "" {
		return nil, fmt.Errorf("kafka: sasl %s needs a username", c.Mechanism)
	}
	password, err := loadPassword(c)
	if err != nil {
		return nil, err
	}
	switch c.Mechanism {
	case "plain":
		return plain.Mechanism{Username: c.Username, Password: password}, nil
	case "scram-sha-256":
		m, err := scram.Mechanism(scram.SHA256, c.Username, password)
		if err != nil {
			return nil, fmt.Errorf("kafka: sasl scram-sha-256: %w", err)
		}
		return m, nil
	case "scram-sha-512":
		m, err := scram.Mechanism(scram.SHA512, c.Username, password)
		if err != nil {
			return nil, fmt.Errorf("kafka: sasl scram-sha-512: %w", err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("kafka: sasl mechanism %q is not plain, scram-sha-256 or scram-sha-512", c.Mechanism)
}

// loadPassword reads the SASL password from password_file (trailing newlines trimmed) or
// else from the environment variable password_env.
func loadPassword(c ingest.SASLConfig) (string, error) {
	switch {
	case c.PasswordFile != "":
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("kafka: sasl: read password_file: %w", err)
		}
		b = bytes.TrimRight(b, "\r\n")
		if len(b) == 0 {
			return "", fmt.Errorf("kafka: sasl: password_file %s is empty", c.PasswordFile)
		}
		return string(b), nil
	case c.PasswordEnv != "":
		v, ok := os.LookupEnv(c.PasswordEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("kafka: sasl: environment variable %s is not set", c.PasswordEnv)
		}
		return v, nil
	}
	return "", fmt.Errorf("kafka: sasl needs password_file or password_env")
}

// clientLogger adapts kafka-go's printf logging to slog. kafka-go formats its own
// messages, so the text goes into the detail attribute under a constant message.
func clientLogger(log *slog.Logger, level slog.Level, msg string) kafkago.LoggerFunc {
	return func(format string, args ...any) {
		log.Log(context.Background(), level, msg, "detail", fmt.Sprintf(format, args...))
	}
}

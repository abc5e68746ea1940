package kafka

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/kafkasasl"
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
	if s.tls, err = cfg.TLS.Client(false); err != nil {
		return s, fmt.Errorf("kafka: %w", config.Prefix("tls", err))
	}
	if s.sasl, err = kafkasasl.Mechanism(cfg.SASL); err != nil {
		return s, fmt.Errorf("kafka: %w", config.Prefix("sasl", err))
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

// clientLogger adapts kafka-go's printf logging to slog. kafka-go formats its own
// messages, so the text goes into the detail attribute under a constant message.
func clientLogger(log *slog.Logger, level slog.Level, msg string) kafkago.LoggerFunc {
	return func(format string, args ...any) {
		log.Log(context.Background(), level, msg, "detail", fmt.Sprintf(format, args...))
	}
}

// NewDialer returns a dialer for cfg's brokers with its TLS and SASL settings, as the
// consumer group connects: replay reads topic partitions by time with it.
func NewDialer(cfg ingest.KafkaConfig) (*kafkago.Dialer, error) {
	sec, err := newSecurity(cfg)
	if err != nil {
		return nil, err
	}
	return sec.dialer(WithDefaults(cfg)), nil
}

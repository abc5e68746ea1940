package kafka

import (
	"github.com/gatewatch/gatewatch/ingest"
	kafkago "github.com/segmentio/kafka-go"
)

// NewTransport returns a transport for cfg's brokers with its TLS and SASL settings, as
// the source's admin requests and the dead-letter writer connect: scale-out writes and
// administers its internal topics with it.
func NewTransport(cfg ingest.KafkaConfig) (*kafkago.Transport, error) {
	sec, err := newSecurity(cfg)
	if err != nil {
		return nil, err
	}
	return sec.transport(WithDefaults(cfg)), nil
}

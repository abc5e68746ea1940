package kafka

import (
	"github.com/gatewatch/gatewatch/ingest"
	kafkago "github.com/segmentio/kafka-go"
)

// Connect returns what other clients of the same brokers connect with, with the
// source's TLS and SASL settings: a dialer for readers and consumer groups and a
// transport for writers and admin requests. Scale-out's internal topics use them.
func Connect(cfg ingest.KafkaConfig) (*kafkago.Dialer, *kafkago.Transport, error) {
	cfg = WithDefaults(cfg)
	sec, err := newSecurity(cfg)
	if err != nil {
		return nil, nil, err
	}
	return sec.dialer(cfg), sec.transport(cfg), nil
}

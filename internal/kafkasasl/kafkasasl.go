// Package kafkasasl builds the SASL mechanism of a kafka-go client from config.SASL:
// the one builder the Kafka source and the kafka receiver share.
package kafkasasl

import (
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/gatewatch/gatewatch/internal/config"
)

// Mechanism checks c and builds its mechanism, reading the password once; it lives
// only inside the mechanism, and no error quotes it. No mechanism configured: nil,
// nil. Errors are *config.Errors keyed relative to the sasl block.
func Mechanism(c config.SASL) (sasl.Mechanism, error) {
	if c.Mechanism == "" {
		return nil, c.Validate()
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	password, err := c.Password().Load(1)
	if err != nil {
		return nil, err
	}
	algo := scram.SHA256
	switch c.Mechanism {
	case "plain":
		return plain.Mechanism{Username: c.Username, Password: password.Reveal()}, nil
	case "scram-sha-512":
		algo = scram.SHA512
	}
	m, err := scram.Mechanism(algo, c.Username, password.Reveal())
	if err != nil {
		return nil, config.Errorf("mechanism", "%s: %v", c.Mechanism, err)
	}
	return m, nil
}

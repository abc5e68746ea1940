package kafka

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/gatewatch/gatewatch/ingest"
	kafkago "github.com/segmentio/kafka-go"
)

// MaxDeadLetterBytes caps one dead-letter message (key and JSON value), below the
// broker's default message.max.bytes (1048588). A dead letter whose record would not fit
// keeps the record's first bytes and says so in its error field, so an oversized record
// is still reported instead of blocking the source.
const MaxDeadLetterBytes = 1_000_000

// DeadLetterWriter is an ingest.DeadLetters that writes each dead letter as one JSON
// message (ingest.DeadLetter's fields) to a Kafka topic, keyed by the source topic, so the
// letters of one topic stay in order on one partition. Put is synchronous: it returns once
// every in-sync replica has the messages (acks=all). Put may be called concurrently.
type DeadLetterWriter struct {
	w       *kafkago.Writer
	topic   string
	timeout time.Duration
}

// NewDeadLetterWriter returns a writer to topic on cfg's brokers, with cfg's TLS, SASL,
// client id and timeout (zero fields take ingest.DefaultConfig's values). It connects
// on the first Put. The topic must exist: the writer does not create it.
func NewDeadLetterWriter(cfg ingest.KafkaConfig, topic string) (*DeadLetterWriter, error) {
	cfg = WithDefaults(cfg)
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafka: dead-letter writer: no brokers")
	}
	if topic == "" {
		return nil, errors.New("kafka: dead-letter writer: no topic")
	}
	sec, err := newSecurity(cfg)
	if err != nil {
		return nil, err
	}
	return &DeadLetterWriter{
		topic:   topic,
		timeout: cfg.Timeout,
		w: &kafkago.Writer{
			Addr:         kafkago.TCP(cfg.Brokers...),
			Topic:        topic,
			Balancer:     &kafkago.Hash{},
			RequiredAcks: kafkago.RequireAll,
			BatchSize:    1000,
			BatchBytes:   MaxDeadLetterBytes,
			BatchTimeout: time.Millisecond, // Put waits for its own messages only
			ReadTimeout:  cfg.Timeout,
			WriteTimeout: cfg.Timeout,
			Transport:    sec.transport(cfg),
		},
	}, nil
}

// Put writes letters, one message each, and returns when all are stored.
func (d *DeadLetterWriter) Put(ctx context.Context, letters []ingest.DeadLetter) error {
	if len(letters) == 0 {
		return nil
	}
	msgs := make([]kafkago.Message, len(letters))
	for i := range letters {
		l := &letters[i]
		key := []byte(l.Source)
		v, err := encodeDeadLetter(l, MaxDeadLetterBytes-len(key)-messageOverhead)
		if err != nil {
			return fmt.Errorf("kafka: encode dead letter of %s/%d@%d: %w", l.Source, l.Partition, l.Offset, err)
		}
		msgs[i] = kafkago.Message{Key: key, Value: v, Time: l.Time}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, d.timeout, errDeadLetterTimeout)
	defer cancel()
	if err := d.w.WriteMessages(ctx, msgs...); err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, context.Cause(ctx))
		}
		return fmt.Errorf("kafka: write %d dead letters to %s: %w", len(msgs), d.topic, err)
	}
	return nil
}

// Close flushes and closes the writer.
func (d *DeadLetterWriter) Close() error {
	if err := d.w.Close(); err != nil {
		return fmt.Errorf("kafka: close dead-letter writer: %w", err)
	}
	return nil
}

var errDeadLetterTimeout = errors.New("kafka: dead-letter write timed out (kafka.timeout)")

// messageOverhead is what kafka-go counts in a message's size beyond key and value.
const messageOverhead = 64

// encodeDeadLetter encodes l as one line of JSON of at most limit bytes, cutting the
// record (at a UTF-8 boundary) when it would not fit and noting the cut in the error.
func encodeDeadLetter(l *ingest.DeadLetter, limit int) ([]byte, error) {
	v, err := marshalDeadLetter(l)
	if err != nil || len(v) <= limit {
		return v, err
	}
	cut := *l
	note := func(keep int) string {
		return fmt.Sprintf("%s (record cut from %d to %d bytes to fit the dead-letter topic)", l.Error, len(l.Record), keep)
	}
	cut.Record, cut.Error = "", note(len(l.Record)) // the longest note
	empty, err := marshalDeadLetter(&cut)
	if err != nil {
		return nil, err
	}
	budget := limit - len(empty)
	for budget > 0 {
		keep := jsonPrefix(l.Record, budget)
		cut.Record, cut.Error = l.Record[:keep], note(keep)
		if v, err = marshalDeadLetter(&cut); err != nil || len(v) <= limit {
			return v, err
		}
		budget -= len(v) - limit // jsonPrefix misjudged an escape; try with less
	}
	return nil, fmt.Errorf("dead letter does not fit in %d bytes even without its record", limit)
}

// jsonPrefix returns the length of the longest prefix of s, ending at a UTF-8 boundary,
// that encoding/json writes (without HTML escaping) in at most budget bytes.
func jsonPrefix(s string, budget int) int {
	n := 0
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		w := size
		switch {
		case r == utf8.RuneError && size == 1:
			w = len(`\ufffd`)
		case r == '"' || r == '\\' || r == '\n' || r == '\r' || r == '\t':
			w = 2
		case r < 0x20 || r == '\u2028' || r == '\u2029':
			w = len(`\u0000`)
		}
		if n+w > budget {
			return i
		}
		n += w
		i += size
	}
	return len(s)
}

// marshalDeadLetter is json.Marshal without HTML escaping, so records read back as logged.
func marshalDeadLetter(l *ingest.DeadLetter) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(l); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

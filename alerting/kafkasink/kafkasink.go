// Package kafkasink writes gatewatch alerts as JSON to a Kafka topic with
// github.com/segmentio/kafka-go, for a SIEM or data lake that reads Kafka.
//
// Each alert is one message whose key is the alert id, so every version of an
// incident lands on the same partition and is read in the order it was raised. The
// writer waits for all in-sync replicas (acks=all) before Notify returns. The value is,
// with format gatewatch (the default), the alert's JSON as DESIGN.md defines it with a
// schema_version in front, or, with format ocsf, an OCSF 1.3.0 Detection Finding (see
// OCSFVersion): activity Create for the first version of an incident, Update for the
// later ones and for reminders.
//
// TLS and SASL (plain, scram-sha-256, scram-sha-512) work as for the ingest consumer;
// the SASL password is read once and never appears in an error or a log.
package kafkasink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/kafkasasl"
)

// The formats of the message value.
const (
	FormatGatewatch = "gatewatch"
	FormatOCSF      = "ocsf"
)

// SchemaVersion is the version of the gatewatch format's payload, its schema_version.
const SchemaVersion = "1"

// incidentRetention is how long, in event time, the receiver remembers an incident it
// wrote, to tell an Update from a Create; detectors close an incident well within it.
const incidentRetention = 7 * 24 * time.Hour

// Options carries what a Receiver needs besides its configuration.
type Options struct {
	// Logger gets the client's errors and state changes; nil discards.
	Logger *slog.Logger
	// Version is gatewatch's version, written as the OCSF product version; empty: the
	// module version from the build info, else "dev".
	Version string
	// Transport connects to the brokers; nil: one built from the TLS and SASL settings.
	Transport *kafka.Transport
}

// Receiver writes alerts to a topic; it is safe for concurrent use. Close it when done.
type Receiver struct {
	name    string
	topic   string
	ocsf    bool
	version string
	w       *kafka.Writer
	log     *slog.Logger

	// firsts remembers, per alert id, the last_seen of the first version this process
	// wrote, so that a retried first version is still a Create and a later one is an
	// Update. After a restart the first version seen again is written as a Create:
	// OCSF consumers key findings by finding_info.uid, so that is an upsert.
	mu     sync.Mutex
	firsts map[string]time.Time
	newest time.Time
}

var _ alerting.Receiver = (*Receiver)(nil)

// New builds the receiver called name from cfg, reading the SASL password if any. It
// connects to nothing until the first Notify.
func New(name string, cfg alerting.KafkaConfig, o Options) (*Receiver, error) {
	if name == "" {
		return nil, errors.New("kafkasink: receiver needs a name")
	}
	if len(cfg.Brokers) == 0 || cfg.Topic == "" {
		return nil, fmt.Errorf("kafkasink: receiver %s: needs brokers and a topic", name)
	}
	r := &Receiver{name: name, topic: cfg.Topic, version: o.Version, firsts: map[string]time.Time{}}
	switch cfg.Format {
	case "", FormatGatewatch:
	case FormatOCSF:
		r.ocsf = true
	default:
		return nil, fmt.Errorf("kafkasink: receiver %s: format must be gatewatch or ocsf, got %q", name, cfg.Format)
	}
	if r.version == "" {
		r.version = "dev"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			r.version = bi.Main.Version
		}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r.log = log.With("component", "alerting", "receiver", name, "topic", cfg.Topic)

	tr := o.Transport
	if tr == nil {
		tr = &kafka.Transport{ClientID: "gatewatch-alerts"}
		var err error
		if tr.TLS, err = cfg.TLS.Client(false); err != nil {
			return nil, fmt.Errorf("kafkasink: receiver %s: %w", name, config.Prefix("tls", err))
		}
		if tr.SASL, err = kafkasasl.Mechanism(cfg.SASL); err != nil {
			return nil, fmt.Errorf("kafkasink: receiver %s: %w", name, config.Prefix("sasl", err))
		}
	}
	r.w = &kafka.Writer{
		Addr:  kafka.TCP(cfg.Brokers...),
		Topic: cfg.Topic,
		// Murmur2 on the key is the Java client's default partitioner: every version of
		// an incident goes to one partition, the same one any other Kafka tool would pick.
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    1000,
		BatchTimeout: time.Millisecond, // Notify waits for its own messages only
		// A couple of quick attempts ride out a leader election; longer outages are the
		// outbox's to retry, with its backoff.
		MaxAttempts: 3,
		Transport:   tr,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			r.log.Debug("kafka client error", "detail", fmt.Sprintf(msg, args...))
		}),
	}
	return r, nil
}

// Name returns the receiver's name from the configuration.
func (r *Receiver) Name() string { return r.name }

// Notify writes one message per alert and returns once the brokers have them all
// (acks=all). Messages of one call that fail are retried as a whole by the outbox, so
// a consumer may see a version twice; (id, last_seen) identifies it.
func (r *Receiver) Notify(ctx context.Context, alerts []detectors.Alert) (bool, error) {
	if len(alerts) == 0 {
		return false, nil
	}
	msgs := make([]kafka.Message, len(alerts))
	for i := range alerts {
		a := &alerts[i]
		v, err := r.encode(a)
		if err != nil {
			return false, fmt.Errorf("kafkasink: receiver %s: encode alert %s: %w", r.name, a.ID, err)
		}
		// No Time: the writer stamps the wall clock, so topic retention (which
		// counts from message timestamps) keeps a replayed old alert as long as a
		// new one.
		msgs[i] = kafka.Message{Key: []byte(a.ID), Value: v}
	}
	if err := r.w.WriteMessages(ctx, msgs...); err != nil {
		return retriable(err), fmt.Errorf("kafkasink: receiver %s: write %d alerts to %s: %w", r.name, len(msgs), r.topic, describe(err))
	}
	return false, nil
}

// encode builds the message value in the configured format.
func (r *Receiver) encode(a *detectors.Alert) ([]byte, error) {
	if r.ocsf {
		return encodeOCSF(a, r.isUpdate(a), r.version)
	}
	b, err := a.MarshalJSON()
	if err != nil {
		return nil, err
	}
	return append([]byte(`{"schema_version":"`+SchemaVersion+`",`), b[1:]...), nil
}

// isUpdate reports whether a is a later version of an incident this receiver already
// wrote (or tried to write) a first version of, or a reminder (alerting.ReminderLabel)
// of one, and remembers a's id otherwise.
func (r *Receiver) isUpdate(a *detectors.Alert) bool {
	reminder := a.Labels[alerting.ReminderLabel] != ""
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.LastSeen.After(r.newest) {
		r.newest = a.LastSeen
	}
	first, ok := r.firsts[a.ID]
	if !ok {
		r.firsts[a.ID] = a.LastSeen
		r.forget()
		return reminder
	}
	return reminder || a.LastSeen.After(first)
}

// forget drops the incidents whose first version is older than the retention, keeping
// the map as small as the set of recent incidents; r.mu is held.
func (r *Receiver) forget() {
	if len(r.firsts)%1024 != 0 {
		return // an occasional sweep is enough
	}
	cutoff := r.newest.Add(-incidentRetention)
	for id, t := range r.firsts {
		if t.Before(cutoff) {
			delete(r.firsts, id)
		}
	}
}

// retriable says whether writing again can help: a broker's error that Kafka marks
// retriable (leader election, not enough replicas, unknown topic while it is created,
// timeouts), a network error or a deadline. Authorization, an oversized message and a
// failed SASL login are final.
func retriable(err error) bool {
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		for _, e := range werrs {
			if e != nil && retriable(e) {
				return true
			}
		}
		return false
	}
	var ke kafka.Error
	if errors.As(err, &ke) {
		return ke.Temporary()
	}
	return true
}

// describe replaces a WriteErrors, whose text is only a count, with its first error.
func describe(err error) error {
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		for _, e := range werrs {
			if e != nil {
				return fmt.Errorf("%d of %d failed, the first with: %w", werrs.Count(), len(werrs), e)
			}
		}
	}
	return err
}

// Close flushes nothing (Notify is synchronous) and closes the connections.
func (r *Receiver) Close() error {
	if err := r.w.Close(); err != nil {
		return fmt.Errorf("kafkasink: receiver %s: close: %w", r.name, err)
	}
	return nil
}

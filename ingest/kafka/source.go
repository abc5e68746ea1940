package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"
)

// ErrClosed is returned by Next once the source is closed, and by Ack for a batch
// acknowledged after Close (its records are delivered again to the partition's next owner).
var ErrClosed = errors.New("kafka: source closed")

// Defaults for the zero fields of Options.
const (
	DefaultMinBytes          = 1
	DefaultMaxWait           = 500 * time.Millisecond
	DefaultHeartbeatInterval = 3 * time.Second
	DefaultSessionTimeout    = 30 * time.Second
	DefaultRebalanceTimeout  = 30 * time.Second
	DefaultJoinGroupBackoff  = 5 * time.Second
)

// Options carries what a Source needs besides its config. Every zero field except
// DeadLetters has a documented default.
type Options struct {
	// Parser returns a parser for one topic's records. It is called for as many
	// parsers as partitions of the topic are read at once (each partition reader uses
	// its own, and hands it on when its partition is revoked). nil: ingest.NewParser
	// with the topic's format and ParserOptions.
	Parser        func(topic ingest.TopicConfig) (ingest.Parser, error)
	ParserOptions ingest.ParserOptions
	// Offsets sets Batch.Offsets, each event's record offset: scale-out's first stage
	// names every record by its partition and offset.
	Offsets bool

	DeadLetters ingest.DeadLetters    // required: rejected records are stored here before their batch is handed out
	Registerer  prometheus.Registerer // required: the ingest metrics (ingest.NewMetrics)
	Logger      *slog.Logger          // nil: discard
	Now         func() time.Time      // nil: time.Now; stamps dead letters

	// Fetching. Each partition is fetched in requests of at most KafkaConfig.MaxBytes;
	// the broker answers once MinBytes are ready or MaxWait passed.
	MinBytes      int           // 0: DefaultMinBytes
	MaxWait       time.Duration // 0: DefaultMaxWait
	QueueCapacity int           // records kafka-go fetches ahead of the source; 0: KafkaConfig.BatchSize

	// Group membership, as in kafka-go's ReaderConfig.
	HeartbeatInterval time.Duration // 0: DefaultHeartbeatInterval
	SessionTimeout    time.Duration // 0: DefaultSessionTimeout
	RebalanceTimeout  time.Duration // 0: DefaultRebalanceTimeout
	JoinGroupBackoff  time.Duration // 0: DefaultJoinGroupBackoff; how long after a failed join the member tries again
}

// A Source is one member of a Kafka consumer group that reads the configured topics and
// hands out their records as batches of events. See the package documentation for what
// is committed when.
//
// Once started by the first Next, a source runs a reader for each partition assigned,
// which fetches and parses its records, and a fetching goroutine, which merges them by
// event time and cuts them into batches. Batches are prepared while the previous ones
// are processed. Next must be called from one goroutine at a time
// (calls are serialised); Batch.Ack and Close may be called from any goroutine.
type Source struct {
	cfg    ingest.KafkaConfig
	rcfg   kafkago.ReaderConfig // what each partition reader is built from
	gcfg   kafkago.ConsumerGroupConfig
	dl     ingest.DeadLetters
	log    *slog.Logger
	now    func() time.Time
	topics map[string]*topic
	order  []*topic           // topics in config order
	admin  *kafkago.Client    // for metadata
	conns  *kafkago.Transport // the admin client's

	offsets bool // Options.Offsets

	wake    chan struct{} // a partition reader queued a record
	activeV atomic.Uint64 // bumped when active changes
	active  []*partition  // the partitions assigned now, guarded by mu

	// Owned by the fetching goroutine.
	seq     uint64       // batches cut
	hint    int          // capacity for the next batch's records
	reading []*partition // its copy of active
	seenV   uint64       // activeV when copied
	picks   uint64       // records taken

	ready chan *batch // batches cut, in order; closed when fetching ends

	nextMu  sync.Mutex // held by Next
	pending *batch     // a batch taken from ready and not handed out yet (Next's ctx ended, or the sink failed)

	mu       sync.Mutex // guards the fields below and the commit state of every partition
	group    *kafkago.ConsumerGroup
	closed   bool
	stop     context.CancelFunc // ends the goroutines
	gen      *generation        // the current generation; nil between generations
	genSeq   uint64
	parts    map[partKey]*partition // the partitions assigned in the current or last generation
	dirty    map[*partition]struct{}
	opened   []ingest.Partition // since the last batch handed out
	ended    []ingest.Partition
	groupErr error // why the group cannot be joined, while that lasts

	running sync.WaitGroup // the group and fetching goroutines

	commitMu sync.Mutex // serialises commits, so each partition's offsets reach the broker in order
	toCommit []commitRef

	redelivered atomic.Int64 // records fetched again after a rebalance and dropped
}

// topic is one configured topic with its parsers and metric series.
type topic struct {
	name, format string
	newParser    func() (ingest.Parser, error)
	parsersMu    sync.Mutex
	parsers      []ingest.Parser // of readers that ended, for the next ones
	records      prometheus.Counter
	events       prometheus.Counter
	dead         *prometheus.CounterVec
	deadBy       map[string]prometheus.Counter

	lag *prometheus.GaugeVec

	nRecords, nEvents int // of the batch being cut; owned by the fetching goroutine
}

// parser returns a parser of t's format for one partition reader.
func (t *topic) parser() (ingest.Parser, error) {
	t.parsersMu.Lock()
	defer t.parsersMu.Unlock()
	if n := len(t.parsers); n > 0 {
		p := t.parsers[n-1]
		t.parsers = t.parsers[:n-1]
		return p, nil
	}
	return t.newParser()
}

// putParser keeps p, which its reader no longer uses, for the next reader.
func (t *topic) putParser(p ingest.Parser) {
	t.parsersMu.Lock()
	defer t.parsersMu.Unlock()
	t.parsers = append(t.parsers, p)
}

type partKey struct {
	topic     string
	partition int
}

func (k partKey) Compare(o partKey) int {
	if c := strings.Compare(k.topic, o.topic); c != 0 {
		return c
	}
	return k.partition - o.partition
}

// NewSource checks cfg and o, fills defaults, builds the parsers of each topic and the
// TLS and SASL settings, and starts nothing: the group is joined by the first Next.
func NewSource(cfg ingest.KafkaConfig, o Options) (*Source, error) {
	cfg = WithDefaults(cfg)
	var errs []error
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("kafka: no brokers"))
	}
	if cfg.Group == "" {
		errs = append(errs, errors.New("kafka: no consumer group"))
	}
	if len(cfg.Topics) == 0 {
		errs = append(errs, errors.New("kafka: no topics"))
	}
	if cfg.BatchSize < 1 {
		errs = append(errs, fmt.Errorf("kafka: batch_size must be positive, got %d", cfg.BatchSize))
	}
	if cfg.BatchWait <= 0 {
		errs = append(errs, fmt.Errorf("kafka: batch_wait must be positive, got %s", cfg.BatchWait))
	}
	if cfg.StartOffset != "earliest" && cfg.StartOffset != "latest" {
		errs = append(errs, fmt.Errorf("kafka: start_offset must be earliest or latest, got %q", cfg.StartOffset))
	}
	if o.DeadLetters == nil {
		errs = append(errs, errors.New("kafka: Options.DeadLetters is required"))
	}
	sec, err := newSecurity(cfg)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	s := &Source{
		cfg:    cfg,
		dl:     o.DeadLetters,
		log:    o.Logger,
		now:    o.Now,
		topics: make(map[string]*topic, len(cfg.Topics)),
		parts:  make(map[partKey]*partition),
		dirty:  make(map[*partition]struct{}),
		hint:   min(cfg.BatchSize, 64),
		ready:  make(chan *batch, prefetch),

		offsets: o.Offsets,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "ingest")
	if s.now == nil {
		s.now = time.Now
	}
	if o.Registerer == nil {
		return nil, errors.New("kafka: Options.Registerer is required")
	}
	m := ingest.NewMetrics(o.Registerer)
	newParser := o.Parser
	if newParser == nil {
		newParser = func(t ingest.TopicConfig) (ingest.Parser, error) { return ingest.NewParser(t.Format, o.ParserOptions) }
	}
	names := make([]string, 0, len(cfg.Topics))
	for _, tc := range cfg.Topics {
		if tc.Name == "" {
			return nil, errors.New("kafka: a topic has no name")
		}
		if _, dup := s.topics[tc.Name]; dup {
			return nil, fmt.Errorf("kafka: topic %s is listed twice", tc.Name)
		}
		first, err := newParser(tc) // the config is checked now, not when a partition is assigned
		if err != nil {
			return nil, fmt.Errorf("kafka: parser for topic %s (format %s): %w", tc.Name, tc.Format, err)
		}
		m.Init(tc.Name, tc.Format)
		t := &topic{
			name:      tc.Name,
			format:    tc.Format,
			newParser: func() (ingest.Parser, error) { return newParser(tc) },
			parsers:   []ingest.Parser{first},
			records:   m.Records.WithLabelValues(tc.Name, tc.Format),
			lag:       m.ConsumerLag,
			events:    m.Events.WithLabelValues(tc.Name, tc.Format),
			dead:      m.DeadLetters,
			deadBy:    make(map[string]prometheus.Counter, len(ingest.Reasons)),
		}
		for _, r := range ingest.Reasons {
			t.deadBy[r] = m.DeadLetters.WithLabelValues(tc.Name, r)
		}
		s.topics[tc.Name] = t
		s.order = append(s.order, t)
		names = append(names, tc.Name)
	}

	start := kafkago.FirstOffset
	if cfg.StartOffset == "latest" {
		start = kafkago.LastOffset
	}
	dialer := sec.dialer(cfg)
	s.rcfg = kafkago.ReaderConfig{
		Brokers:         cfg.Brokers,
		Topic:           names[0], // each partition reader sets its own; this one is validated
		Dialer:          dialer,
		QueueCapacity:   orDefault(o.QueueCapacity, cfg.BatchSize),
		MinBytes:        orDefault(o.MinBytes, DefaultMinBytes),
		MaxBytes:        cfg.MaxBytes,
		MaxWait:         orDefault(o.MaxWait, DefaultMaxWait),
		ReadLagInterval: -1, // lag comes from each record's high-water mark
		StartOffset:     start,
		ErrorLogger:     clientLogger(s.log, slog.LevelWarn, "kafka client error"),
	}
	s.gcfg = kafkago.ConsumerGroupConfig{
		ID:                    cfg.Group,
		Brokers:               cfg.Brokers,
		Dialer:                dialer,
		Topics:                names,
		HeartbeatInterval:     orDefault(o.HeartbeatInterval, DefaultHeartbeatInterval),
		SessionTimeout:        orDefault(o.SessionTimeout, DefaultSessionTimeout),
		RebalanceTimeout:      orDefault(o.RebalanceTimeout, DefaultRebalanceTimeout),
		JoinGroupBackoff:      orDefault(o.JoinGroupBackoff, DefaultJoinGroupBackoff),
		WatchPartitionChanges: true,
		StartOffset:           start,
		Timeout:               cfg.Timeout,
		ErrorLogger:           s.rcfg.ErrorLogger,
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.rcfg.Logger = clientLogger(s.log, slog.LevelDebug, "kafka client")
		s.gcfg.Logger = s.rcfg.Logger
	}
	if s.rcfg.MinBytes > s.rcfg.MaxBytes {
		return nil, fmt.Errorf("kafka: MinBytes %d exceeds max_bytes %d", s.rcfg.MinBytes, s.rcfg.MaxBytes)
	}
	if err := s.rcfg.Validate(); err != nil {
		return nil, fmt.Errorf("kafka: reader config: %w", err)
	}
	if err := s.gcfg.Validate(); err != nil {
		return nil, fmt.Errorf("kafka: consumer group config: %w", err)
	}
	s.wake = make(chan struct{}, 1)
	s.conns = sec.transport(cfg)
	s.admin = &kafkago.Client{Addr: kafkago.TCP(cfg.Brokers...), Timeout: cfg.Timeout, Transport: s.conns}
	return s, nil
}

// WithDefaults fills the zero fields of cfg from ingest.DefaultConfig, as NewSource
// does: for other clients of the same brokers (scale-out's internal topics).
func WithDefaults(cfg ingest.KafkaConfig) ingest.KafkaConfig {
	d := ingest.DefaultConfig().Kafka
	cfg.Group = orDefault(cfg.Group, d.Group)
	cfg.ClientID = orDefault(cfg.ClientID, d.ClientID)
	cfg.StartOffset = orDefault(cfg.StartOffset, d.StartOffset)
	cfg.BatchSize = orDefault(cfg.BatchSize, d.BatchSize)
	cfg.BatchWait = orDefault(cfg.BatchWait, d.BatchWait)
	cfg.MaxBytes = orDefault(cfg.MaxBytes, d.MaxBytes)
	cfg.Timeout = orDefault(cfg.Timeout, d.Timeout)
	return cfg
}

// orDefault returns v, or def when v is the zero value.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// prefetch is how many batches a source prepares ahead of Next.
const prefetch = 4

// Next returns the next batch: the events of up to KafkaConfig.BatchSize records, or
// of what arrived within KafkaConfig.BatchWait of the first one. It blocks until at
// least one record is there or ctx ends, and returns ctx.Err() then.
//
// Records a parser rejects are stored in the dead-letter sink and counted before Next
// returns; a batch whose records were all rejected is acknowledged by the source itself
// and Next goes on waiting. If the sink fails, Next returns the error and keeps the
// batch; the next call stores its dead letters again before handing it out, so nothing
// is skipped.
//
// After Close, Next returns ErrClosed. Any other error (the sink's, or kafka-go's when
// it cannot fetch or join the group) leaves the source as it was: calling Next again
// tries again.
func (s *Source) Next(ctx context.Context) (*ingest.Batch, error) {
	s.nextMu.Lock()
	defer s.nextMu.Unlock()
	if err := s.start(); err != nil {
		return nil, err
	}
	for {
		b := s.pending
		if b == nil {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case next, ok := <-s.ready:
				if !ok {
					return nil, ErrClosed
				}
				if next.err != nil {
					return nil, next.err
				}
				b, s.pending = next, next
			}
		}
		if err := s.storeDeadLetters(ctx, b); err != nil {
			return nil, err
		}
		s.pending = nil
		if len(b.events) > 0 {
			nb := ingest.NewBatch(b.events, s.ack(b))
			nb.Runs, nb.Offsets = b.runs, b.offsets
			nb.Opened, nb.Ended = s.lifecycle()
			return nb, nil
		}
		if err := s.release(ctx, b.spans); err != nil {
			s.log.Warn("kafka commit after a batch of only dead letters failed", "err", err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// Ping reports whether the brokers answer and have every topic, and whether the group
// could be joined: the pipeline is ready only while they do.
func (s *Source) Ping(ctx context.Context) error {
	if err := s.checkTopics(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.groupErr
}

// start starts the goroutines on first use: the fetching goroutine joins the group
// once every topic exists.
func (s *Source) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.stop != nil {
		return nil
	}
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.running.Add(1)
	go s.fetch(ctx)
	return nil
}

// join creates the consumer group membership and its goroutine, unless the source was
// closed meanwhile.
func (s *Source) join(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	g, err := kafkago.NewConsumerGroup(s.gcfg) // gcfg was validated by NewSource
	if err != nil {
		return fmt.Errorf("kafka: consumer group: %w", err)
	}
	s.group = g
	s.running.Add(1)
	go s.runGroup(ctx, g)
	s.log.Info("kafka source joining group", "group", s.cfg.Group, "topics", s.gcfg.Topics)
	return nil
}

// storeDeadLetters puts b's dead letters into the sink and counts them; it does nothing
// once they are stored.
func (s *Source) storeDeadLetters(ctx context.Context, b *batch) error {
	if len(b.dead) == 0 {
		return nil
	}
	if err := s.dl.Put(ctx, b.dead); err != nil {
		return fmt.Errorf("kafka: store %d dead letters: %w", len(b.dead), err)
	}
	for i := range b.dead {
		d := &b.dead[i]
		t := s.topics[d.Source]
		if t == nil {
			continue
		}
		if c, ok := t.deadBy[d.Reason]; ok {
			c.Inc()
		} else {
			t.dead.WithLabelValues(d.Source, d.Reason).Inc()
		}
	}
	b.dead = nil
	return nil
}

// Close commits what was acknowledged, stops fetching and leaves the group, and waits
// for the source's goroutines to end. Batches acknowledged afterwards return ErrClosed
// from Ack; their records, like those of batches prepared but not handed out, are
// delivered again to the partition's next owner. Close does not close the dead-letter
// sink, which the caller owns.
func (s *Source) Close() error {
	s.mu.Lock()
	group, stop, already := s.group, s.stop, s.closed
	s.closed = true
	s.mu.Unlock()
	if stop == nil || already {
		return nil
	}
	var err error
	if group != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		err = s.commit(ctx, nil, true)
		cancel()
	}
	stop()
	if group != nil {
		group.Close() // ends the generation, whose readers then return, and leaves the group
	}
	s.running.Wait()
	s.conns.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("kafka: final commit: %w", err)
	}
	s.log.Info("kafka source left group", "group", s.cfg.Group)
	return nil
}

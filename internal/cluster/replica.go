package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafka"
)

// TasksGroupSuffix is appended to ingest.kafka.group to name the tasks' consumer group;
// stage one reads the raw topics in ingest.kafka.group itself.
const TasksGroupSuffix = "-tasks"

// Options are what a replica runs with besides its Config.
type Options struct {
	Kafka         ingest.KafkaConfig // the brokers, security, raw topics and stage one's group
	ParserOptions ingest.ParserOptions
	DeadLetters   ingest.DeadLetters // required: stage one's rejected records
	Detectors     detectors.Config   // every task runs the detectors of its topic's kind
	// Baselines and Incidents are the store the tasks share; each task keeps its open
	// incidents under its own scope (group/topic/partition).
	Baselines      detectors.BaselineStore
	Incidents      detectors.IncidentStore
	RunbookBaseURL string
	Sink           detectors.AlertSink // required: every task's alerts
	// Handover, when set, is called each time this replica gives its tasks up (a
	// rebalance, or leaving the group), after they have stopped and before it rejoins or
	// leaves: the pipeline delivers what they raised there. A Slack post cannot be made
	// twice safely by two replicas at once, so the next owner of a task, which may raise
	// its incidents' next versions at once, must not start while the last owner still
	// delivers the previous ones. Its context ends after handoverTimeout.
	Handover func(context.Context) error
	// WrapSource, when set, wraps stage one's source of raw batches (the pipeline
	// archives their events and holds their acknowledgement until the archive has them).
	// The wrapper must keep Batch.Runs, Offsets, Opened and Ended.
	WrapSource func(detectors.EventSource) detectors.EventSource
	Registerer prometheus.Registerer // required
	Logger     *slog.Logger          // nil: discard
	Now        func() time.Time      // nil: time.Now; idle partitions
}

// A Replica is one instance of a scaled-out gatewatch: it runs both stages, each a
// member of its own consumer group. Scaling is adding replicas.
type Replica struct {
	cfg  Config
	o    Options
	log  *slog.Logger
	m    *metrics
	s1   *stage1
	s2   *stage2
	p    *purger
	src  *kafka.Source
	w    *kafkago.Writer
	conn *kafkago.Transport

	tasksMu sync.Mutex // guards tasks: newTask and a reload come from different goroutines
	tasks   taskEngines

	// loads lets one task at a time load its baselines: each load reads the store's
	// whole snapshot and keeps its partition's share, and the tasks of a replica start
	// (and refresh) together, so their snapshots at once were most of its peak memory.
	loads chan struct{}
}

// New checks cfg and o and builds both stages; it connects to nothing.
func New(cfg Config, o Options) (*Replica, error) {
	var errs []error
	errs = append(errs, cfg.Validate(), CheckDetectors(o.Detectors))
	if o.Sink == nil {
		errs = append(errs, errors.New("cluster: Options.Sink is required"))
	}
	if o.Registerer == nil {
		errs = append(errs, errors.New("cluster: Options.Registerer is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger.With("component", "cluster")
	src, err := kafka.NewSource(o.Kafka, kafka.Options{
		ParserOptions: o.ParserOptions,
		DeadLetters:   o.DeadLetters,
		Offsets:       true,
		Registerer:    o.Registerer,
		Logger:        o.Logger,
		Now:           o.Now,
	})
	if err != nil {
		return nil, err
	}
	dialer, err := kafka.NewDialer(o.Kafka)
	if err != nil {
		return nil, err
	}
	transport, err := kafka.NewTransport(o.Kafka)
	if err != nil {
		return nil, err
	}
	kc := kafka.WithDefaults(o.Kafka)
	r := &Replica{cfg: cfg, o: o, log: log, m: newMetrics(o.Registerer), src: src, conn: transport,
		tasks: taskEngines{start: o.Detectors, current: o.Detectors, live: map[*detectors.Engine]Kind{}},
		loads: make(chan struct{}, 1)}
	r.w = &kafkago.Writer{
		Addr:         kafkago.TCP(kc.Brokers...),
		Balancer:     byPartition{},
		RequiredAcks: kafkago.RequireAll,
		// Per write, a task's records spread over the partitions: 256 a partition is
		// room enough, and kafka-go allocates a batch's capacity whole, so that a
		// larger one (it was 1,000) made most of stage one's garbage.
		BatchSize:    256,
		BatchBytes:   16 << 20,
		BatchTimeout: time.Millisecond, // a write waits for its own records only
		ReadTimeout:  kc.Timeout,
		WriteTimeout: kc.Timeout,
		Compression:  kafkago.Zstd,
		Transport:    transport,
	}
	var s1src detectors.EventSource = src
	if o.WrapSource != nil {
		s1src = o.WrapSource(src)
	}
	r.s1 = &stage1{
		cfg:      cfg,
		src:      s1src,
		w:        r.w,
		lateness: o.Detectors.AllowedLateness.Milliseconds(),
		idle:     o.Detectors.IdleTimeout,
		now:      o.Now,
		log:      log,
		m:        r.m,
		parts:    map[ingest.Partition]*srcPart{},
		dirty:    map[ingest.Partition]struct{}{},
	}
	client := &kafkago.Client{Addr: kafkago.TCP(kc.Brokers...), Timeout: kc.Timeout, Transport: transport}
	r.p = newPurger(client, log, r.m)
	r.s2 = &stage2{
		cfg:      cfg,
		group:    kc.Group + TasksGroupSuffix,
		brokers:  kc.Brokers,
		dialer:   dialer,
		client:   client,
		timeout:  kc.Timeout,
		batch:    kc.BatchSize,
		wait:     kc.BatchWait,
		raw:      rawTopics(o.Kafka),
		idle:     o.Detectors.IdleTimeout,
		now:      o.Now,
		newTask:  r.newTask,
		purge:    r.p,
		sink:     o.Sink,
		handover: o.Handover,
		log:      log,
		m:        r.m,
	}
	return r, nil
}

func rawTopics(k ingest.KafkaConfig) []string {
	out := make([]string, len(k.Topics))
	for i, t := range k.Topics {
		out[i] = t.Name
	}
	return out
}

// Run creates the internal topics when missing, then runs both stages, and purges the
// internal partitions below its tasks' commits, until ctx ends or a stage fails. It
// returns nil after a stop asked for through ctx. Close the replica after Run returns.
func (r *Replica) Run(ctx context.Context) error {
	if err := r.ensureTopics(ctx); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.s1.run(gctx) })
	g.Go(func() error { return r.s2.run(gctx) })
	g.Go(func() error { r.p.run(gctx); return nil })
	err := g.Wait()
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// Close commits what stage one acknowledged, leaves the raw topics' group (its
// partitions go to the other replicas) and closes the clients. A wrapper of stage one's
// source that acknowledges later (WrapSource) must be done before.
func (r *Replica) Close() error {
	defer r.conn.CloseIdleConnections()
	return errors.Join(r.src.Close(), r.w.Close())
}

// ensureTopics creates the internal topics that do not exist with cluster.partitions
// partitions, and refuses topics that exist with another count: the partition of a key
// is fixed for the life of a deployment.
func (r *Replica) ensureTopics(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := r.s2.client
	names := make([]string, numKinds)
	for k := range numKinds {
		names[k] = r.cfg.Topic(k)
	}
	md, err := c.Metadata(ctx, &kafkago.MetadataRequest{Topics: names})
	if err != nil {
		return fmt.Errorf("cluster: read the internal topics' metadata: %w", err)
	}
	have := map[string]int{}
	for _, t := range md.Topics {
		if t.Error == nil {
			have[t.Name] = len(t.Partitions)
		}
	}
	var create []kafkago.TopicConfig
	for _, name := range names {
		n, ok := have[name]
		switch {
		case !ok:
			create = append(create, kafkago.TopicConfig{Topic: name, NumPartitions: r.cfg.Partitions, ReplicationFactor: -1})
		case n != r.cfg.Partitions:
			return fmt.Errorf("cluster: internal topic %s has %d partitions, cluster.partitions is %d: the count is fixed for the life of a deployment (a new internal_topic_prefix starts over)", name, n, r.cfg.Partitions)
		}
	}
	if len(create) == 0 {
		return nil
	}
	resp, err := c.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: create})
	if err != nil {
		return fmt.Errorf("cluster: create the internal topics: %w", err)
	}
	for name, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
			return fmt.Errorf("cluster: create internal topic %s: %w", name, err)
		}
	}
	r.log.Info("internal topics created", "topics", len(create), "partitions", r.cfg.Partitions)
	return nil
}

// newTask builds the engine of one task: the detectors of kind k, its open incidents
// under a scope of its own, its metrics labelled with the task. The returned function
// releases the metrics.
func (r *Replica) newTask(k Kind, partition int) (*detectors.Engine, func(), error) {
	topic := r.cfg.Topic(k)
	reg := &taskRegisterer{reg: prometheus.WrapRegistererWith(prometheus.Labels{"task": topic + "/" + strconv.Itoa(partition)}, r.o.Registerer)}
	var baselines detectors.BaselineStore
	if r.o.Baselines != nil {
		baselines = taskBaselines{BaselineStore: r.o.Baselines, kind: k, partition: partition, n: r.cfg.Partitions, loads: r.loads}
	}
	// Built and registered under tasksMu, so that a reload reaches it or it is built
	// with the reloaded config.
	r.tasksMu.Lock()
	defer r.tasksMu.Unlock()
	eng, err := detectors.NewEngine(taskEngineConfig(r.tasks.current, k, r.cfg.Partitions), detectors.Options{
		Baselines:      baselines,
		Incidents:      r.o.Incidents,
		Scope:          r.s2.group + "/" + topic + "/" + strconv.Itoa(partition),
		Registerer:     reg,
		Logger:         r.o.Logger.With("task", topic+"/"+strconv.Itoa(partition)),
		RunbookBaseURL: r.o.RunbookBaseURL,
		Now:            r.o.Now,
	})
	if err != nil {
		reg.unregisterAll()
		return nil, nil, err
	}
	r.m.tasks.Inc()
	r.tasks.live[eng] = k
	return eng, func() {
		r.tasksMu.Lock()
		delete(r.tasks.live, eng)
		r.tasksMu.Unlock()
		r.m.tasks.Dec()
		reg.unregisterAll()
	}, nil
}

// Ping reports whether the brokers answer and have every raw topic, and whether stage
// one could join its group: the replica is ready only while they do.
func (r *Replica) Ping(ctx context.Context) error { return r.src.Ping(ctx) }

package pipeline

import (
	"context"
	"errors"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/internal/cluster"
	"github.com/gatewatch/gatewatch/store"
)

// runCluster is the detection part of Run with a cluster section: a cluster.Replica,
// whose first stage reads the raw topics and whose tasks raise the alerts into the
// router, in place of the Kafka source and the one engine. It runs until ctx ends.
func (p *Pipeline) runCluster(ctx context.Context, cfg *Config, st store.Store, dl ingest.DeadLetters) error {
	popts, err := cfg.Ingest.ParserOptions(false)
	if err != nil {
		return err
	}
	// Stage one's batches are archived, and their raw offsets committed once the archive
	// has them, as Run does for the engine's.
	acks := newAcker(st, p.log, p.m)
	r, err := cluster.New(*cfg.Cluster, cluster.Options{
		Kafka:          cfg.Ingest.Kafka,
		ParserOptions:  popts,
		DeadLetters:    dl,
		Detectors:      cfg.Detectors,
		Baselines:      st,
		Incidents:      st,
		RunbookBaseURL: cfg.Alerting.RunbookBaseURL,
		Sink:           p.alerts,
		Handover:       p.alerts.flush,
		Registerer:     p.reg,
		Logger:         p.log,
		Now:            p.opts.Now,
		WrapSource: func(src detectors.EventSource) detectors.EventSource {
			return &archiving{p: p, src: src, acks: acks, archive: cfg.Store.Archive}
		},
	})
	if err != nil {
		return err
	}
	p.setDetection(r.PrepareReload)
	acksDone := goRun(func() error { return acks.run(ctx) })
	p.ready.set(st, r)
	readyCtx, stopReady := context.WithCancel(ctx)
	readyDone := goRun(func() error { p.ready.run(readyCtx, p.log); return nil })
	p.log.Info("gatewatch running as a cluster replica", "topics", len(cfg.Ingest.Kafka.Topics), "group", cfg.Ingest.Kafka.Group,
		"internal_topic_prefix", cfg.Cluster.InternalTopicPrefix, "partitions", cfg.Cluster.Partitions, "admin", cfg.Admin.Listen)
	err = r.Run(ctx)
	acks.close() // stage one stopped: what it acknowledged is committed, then the acker ends
	<-acksDone
	err = errors.Join(err, r.Close())
	stopReady()
	<-readyDone
	p.ready.stopping()
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

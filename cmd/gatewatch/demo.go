package main

import (
	"context"
	_ "embed"
	"fmt"
	"io"
	"log/slog"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafka"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/replay"
)

//go:embed demo.yaml
var demoConfig []byte

const demoTopic = "waf-logs"

// runDemo is gatewatch on its embedded default: a Kafka-protocol broker in the process
// (kfake), two hours of synthetic AWS WAF traffic with one attack of each kind produced
// to it, and the pipeline consuming it as a consumer group member would: Kafka source,
// parser, detectors. The alerts go to stdout as JSON lines; stderr gets what was
// injected and whether each attack was caught.
func runDemo(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "demo", "demo [--duration D] [--rate R] [--seed N]")
	duration := fs.Duration("duration", 2*time.Hour, "event time of synthetic traffic to generate")
	rate := fs.Float64("rate", 10, "background requests per second of event time")
	seed := fs.Uint64("seed", 1, "random seed of the traffic")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *duration < time.Hour {
		fmt.Fprintln(env.stderr, "demo: --duration must be at least 1h: the detectors learn for the first 30 minutes")
		return errUsage
	}
	cfg, err := loadConfig("demo.yaml (embedded)", demoConfig)
	if err != nil {
		return err
	}
	reqs, injected, err := synth.Generate(synth.Config{Duration: *duration, Rate: *rate, Seed: *seed, Attacks: synth.Attacks})
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "demo: %d AWS WAF records over %s of event time, %d attacks injected\n", len(reqs), *duration, len(injected))

	// One partition keeps the records in event-time order, as one gateway's log stream is.
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, demoTopic))
	if err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	defer broker.Close()
	addrs := broker.ListenAddrs()
	fmt.Fprintf(env.stderr, "demo: Kafka-protocol broker on %s, topic %s\n", addrs[0], demoTopic)

	popts, err := cfg.Ingest.ParserOptions(true)
	if err != nil {
		return err
	}
	kcfg := cfg.Ingest.Kafka
	kcfg.Brokers, kcfg.Group = addrs, "gatewatch-demo"
	kcfg.Topics = []ingest.TopicConfig{{Name: demoTopic, Format: ingest.FormatAWSWAF}}
	dead := &countingDeadLetters{next: &ingest.ReportDeadLetters{W: env.stderr}}
	src, err := kafka.NewSource(kcfg, kafka.Options{
		ParserOptions: popts,
		DeadLetters:   dead,
		Logger:        slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	defer src.Close()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return produce(gctx, addrs, reqs) })
	var sum *replay.Summary
	g.Go(func() error {
		var err error
		sum, err = replay.Run(gctx, replay.Options{
			Source:      &untilCount{src: src, want: len(reqs), dead: dead},
			Detectors:   cfg.Detectors,
			RunbookBase: cfg.Alerting.RunbookBaseURL,
			Out:         env.stdout,
		})
		return err
	})
	if err := g.Wait(); err != nil {
		return err
	}
	sum.WriteSummary(env.stderr, "demo")
	fmt.Fprintln(env.stderr, "demo: attacks injected, and the incidents raised for them:")
	missed := 0
	for _, inj := range injected {
		n := sum.Incidents[inj.Kind]
		verdict := "caught"
		if n == 0 {
			verdict, missed = "MISSED", missed+1
		}
		fmt.Fprintf(env.stderr, "  %-22s %s  %-8s %s  (%d requests from %s)\n", inj.Kind, inj.Start.Format("15:04:05"), verdict, inj.Route, inj.Count, inj.Client)
	}
	if missed > 0 {
		return fmt.Errorf("%d of %d attacks raised no alert", missed, len(injected))
	}
	return nil
}

// produce writes the generated records to the demo topic, as the gateway's log shipper would.
func produce(ctx context.Context, addrs []string, reqs []synth.Request) error {
	w := &kafkago.Writer{
		Addr:         kafkago.TCP(addrs...),
		Topic:        demoTopic,
		RequiredAcks: kafkago.RequireAll,
		BatchSize:    2000,
		BatchBytes:   900_000,
		BatchTimeout: 5 * time.Millisecond,
		Compression:  compress.Lz4,
	}
	defer w.Close()
	msgs := make([]kafkago.Message, 0, 2000)
	for i := range reqs {
		v, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &reqs[i])
		if err != nil {
			return err
		}
		msgs = append(msgs, kafkago.Message{Value: v})
		if len(msgs) == cap(msgs) || i == len(reqs)-1 {
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				return fmt.Errorf("produce: %w", err)
			}
			msgs = msgs[:0]
		}
	}
	return nil
}

// untilCount ends the demo's unbounded Kafka source once every produced record has
// come through, as events or as dead letters.
type untilCount struct {
	src  *kafka.Source
	want int
	got  int
	dead *countingDeadLetters
}

func (u *untilCount) Next(ctx context.Context) (*ingest.Batch, error) {
	if u.got+u.dead.n-u.dead.kept >= u.want {
		return nil, io.EOF
	}
	b, err := u.src.Next(ctx)
	if err != nil {
		return nil, err
	}
	u.got += len(b.Events)
	return b, nil
}

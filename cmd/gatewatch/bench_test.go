package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafka"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/internal/cluster"
	"github.com/gatewatch/gatewatch/internal/pipeline"
	"github.com/gatewatch/gatewatch/internal/promtest"
	"github.com/gatewatch/gatewatch/store"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// benchEvents is how many AWS WAF records (about 1.3 KB each) each iteration of
// BenchmarkRun consumes from a loopback kfake topic of four partitions.
const benchEvents = 100_000

// benchWAF fills a topic with benchEvents synthetic AWS WAF records, each stamped with
// its event time, and returns the cluster.
func benchWAF(b *testing.B) *kafkatest.Cluster {
	b.Helper()
	c := kafkatest.Start(b, kafkatest.Options{Topics: []string{"waf-logs"}, Partitions: 4})
	// The rate is a day's average and these two hours are early morning: ask for a
	// quarter more, then take benchEvents.
	reqs, _, err := synth.Generate(synth.Config{Duration: 2 * time.Hour, Rate: 1.25 * benchEvents / 7200, Seed: 5, Attacks: synth.Attacks})
	if err != nil {
		b.Fatal(err)
	}
	if len(reqs) < benchEvents {
		b.Fatalf("generated %d records, want at least %d", len(reqs), benchEvents)
	}
	reqs = reqs[:benchEvents]
	msgs := make([]kafkago.Message, len(reqs))
	for i := range reqs {
		v, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &reqs[i])
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = kafkago.Message{Value: v, Time: reqs[i].Time}
	}
	for chunk := range slices.Chunk(msgs, 5000) {
		c.Produce(b, "waf-logs", chunk...)
	}
	return c
}

// benchPipelineConfig is run's config for the benchmarks: the topic, a dead-letter
// file, the embedded store (or ClickHouse at chAddr) under dir, no receiver.
func benchPipelineConfig(b *testing.B, c *kafkatest.Cluster, group, dir, chAddr string, archive bool) pipeline.Config {
	b.Helper()
	cfg := defaultConfig()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte(demoSecret), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg.Ingest.Kafka.Brokers, cfg.Ingest.Kafka.Group = c.Addrs, group
	cfg.Ingest.Kafka.Topics = []ingest.TopicConfig{{Name: "waf-logs", Format: ingest.FormatAWSWAF}}
	cfg.Ingest.TokenSecretFile = secret
	cfg.Ingest.DeadLetter.File = filepath.Join(dir, "dlq.jsonl")
	cfg.Store.DataDir, cfg.Store.Archive = filepath.Join(dir, "data"), archive
	if chAddr != "" {
		cfg.Store.ClickHouse = &store.ClickHouseConfig{Addr: []string{chAddr}, Database: clickhousetest.NewDatabase(b, chAddr)}
	}
	return pipelineConfig(&cfg)
}

// BenchmarkRun measures run's pipeline end to end, from the loopback broker to the
// router: Kafka source, parsing, the detectors, baselines and open incidents in the
// store, the outbox; with the archive off, in the embedded store, and in the local
// clickhouse-server; and as one replica with a cluster section (stage one, the hop
// through four internal partitions, the tasks), with the archive off and in
// ClickHouse. The source sub-benchmark is the baseline of the same run: the
// Kafka source alone, parsing and committing, on the same records. events/s is taken
// from the first batch to the last, for a replica to the moment its tasks have taken
// every event (start-up and shutdown are in ns/op, not in it).
//
//	go test ./cmd/gatewatch -run '^$' -bench 'BenchmarkRun$' -benchtime 3x -count 3
func BenchmarkRun(b *testing.B) {
	c := benchWAF(b)
	group := 0
	b.Run("source", func(b *testing.B) {
		b.ReportAllocs()
		var steady, cpu time.Duration
		for b.Loop() {
			group++
			dir := b.TempDir()
			cfg := benchPipelineConfig(b, c, fmt.Sprintf("bench-%d", group), dir, "", false)
			popts, err := cfg.Ingest.ParserOptions(false)
			if err != nil {
				b.Fatal(err)
			}
			src, err := kafka.NewSource(cfg.Ingest.Kafka, kafka.Options{ParserOptions: popts, DeadLetters: &ingest.ReportDeadLetters{W: io.Discard},
				Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			var first time.Time
			var firstCPU time.Duration
			for n := 0; n < benchEvents; {
				bt, err := src.Next(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if first.IsZero() {
					first, firstCPU = time.Now(), processCPU(b)
				}
				n += len(bt.Events)
				if err := bt.Ack(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			steady += time.Since(first)
			cpu += processCPU(b) - firstCPU
			b.StopTimer()
			src.Close()
			b.StartTimer()
		}
		reportSteady(b, steady, cpu)
	})
	for _, mode := range []struct {
		name    string
		archive bool
		ch      bool
		cluster bool
	}{
		{"archive-off", false, false, false}, {"archive-embedded", true, false, false}, {"archive-clickhouse", true, true, false},
		{"cluster-archive-off", false, false, true}, {"cluster-archive-clickhouse", true, true, true},
	} {
		b.Run(mode.name, func(b *testing.B) {
			chAddr := ""
			if mode.ch {
				chAddr = clickhousetest.Require(b)
			}
			b.ReportAllocs()
			var steady, cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				group++
				cfg := benchPipelineConfig(b, c, fmt.Sprintf("bench-%d", group), b.TempDir(), chAddr, mode.archive)
				if mode.cluster {
					b.StartTimer()
					s, used := benchCluster(b, c, cfg, fmt.Sprintf("gwb-%d", group))
					steady, cpu = steady+s, cpu+used
					continue
				}
				reg := prometheus.NewRegistry()
				var until *cpuMarks
				p, err := pipeline.New(cfg, pipeline.Options{
					Receivers: func(alerting.Config, pipeline.ReceiverEnv, *slog.Logger) (map[string]alerting.Receiver, io.Closer, error) {
						return map[string]alerting.Receiver{}, io.NopCloser(nil), nil
					},
					Registry: reg,
					WrapSource: func(src detectors.EventSource) detectors.EventSource {
						until = &cpuMarks{untilConsumed: &untilConsumed{src: src, want: benchEvents, reg: reg}, tb: b}
						return until
					},
				})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := p.Run(context.Background()); err != nil {
					b.Fatal(err)
				}
				steady += until.last.Sub(until.first)
				cpu += until.lastCPU - until.firstCPU
			}
			reportSteady(b, steady, cpu)
		})
	}
}

// reportSteady reports the events/s of BenchmarkRun's steady phase, which took steady
// over all iterations, and the process's CPU time an event and cores in use over it.
// On this machine the source and the pipeline both keep its two cores busy, so the
// ratio of their events/s is about the inverse ratio of their CPU time an event, which
// a busy neighbour moves less.
func reportSteady(b *testing.B, steady, cpu time.Duration) {
	events := float64(benchEvents * b.N)
	b.ReportMetric(events/steady.Seconds(), "events/s")
	b.ReportMetric(cpu.Seconds()*1e6/events, "cpu-µs/event")
	b.ReportMetric(cpu.Seconds()/steady.Seconds(), "cores")
}

// cpuMarks is untilConsumed noting the process's CPU time where it notes the wall
// clock: when the first events came and when the last did.
type cpuMarks struct {
	*untilConsumed
	tb                testing.TB
	firstCPU, lastCPU time.Duration
}

func (m *cpuMarks) Next(ctx context.Context) (*ingest.Batch, error) {
	b, err := m.untilConsumed.Next(ctx)
	if m.firstCPU == 0 && !m.first.IsZero() {
		m.firstCPU = processCPU(m.tb)
	}
	if m.lastCPU == 0 && !m.last.IsZero() {
		m.lastCPU = processCPU(m.tb)
	}
	return b, err
}

// processCPU returns the user and system CPU time the process has used.
func processCPU(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchCluster runs cfg with a cluster section of internal topic prefix, one replica,
// until its tasks have taken every event of the topic, and returns how long that took
// from stage one's first events, and the CPU time the process used meanwhile. The
// events are counted from the metrics, polled.
func benchCluster(b *testing.B, c *kafkatest.Cluster, cfg pipeline.Config, prefix string) (steady, cpu time.Duration) {
	b.Helper()
	cfg.Cluster = &cluster.Config{InternalTopicPrefix: prefix, Partitions: 4}
	reg := prometheus.NewRegistry()
	p, err := pipeline.New(cfg, pipeline.Options{
		Receivers: func(alerting.Config, pipeline.ReceiverEnv, *slog.Logger) (map[string]alerting.Receiver, io.Closer, error) {
			return map[string]alerting.Receiver{}, io.NopCloser(nil), nil
		},
		Registry: reg,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	// The metrics are gathered once a poll, and polled at a tenth of a second: gathering
	// them all costs, and more often it took a visible share of the replica's CPU.
	var first time.Time
	var firstCPU time.Duration
	for {
		select {
		case err := <-done:
			b.Fatalf("run stopped: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		mfs, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		snap := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return mfs, nil })
		events := promtest.Sum(b, "gatewatch_ingest_events_total", snap)
		if first.IsZero() && events > 0 {
			first, firstCPU = time.Now(), processCPU(b)
		}
		if events >= benchEvents && promtest.Sum(b, "gatewatch_cluster_task_lag_records", snap) == 0 &&
			promtest.Sum(b, "gatewatch_cluster_task_offset", snap) == internalEnds(b, c, prefix) {
			break
		}
	}
	steady, cpu = time.Since(first), processCPU(b)-firstCPU
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return steady, cpu
}

// BenchmarkAlertLatency measures how long an alert takes to reach Slack once the
// record that decides it has arrived: traffic at 20,000 events/s stamped with the wall
// clock at produce, among it a burst of 403s from a new client every quarter second.
// A burst's window closes when the watermark passes its end, that is when a record
// stamped window_end + allowed_lateness has been produced on every partition; the
// latency is the Slack server's receive time minus that. It reports the 50th and 99th
// percentiles over the run's alerts.
//
//	go test ./cmd/gatewatch -run '^$' -bench AlertLatency -benchtime 1x -count 3
func BenchmarkAlertLatency(b *testing.B) {
	const (
		rate     = 20_000
		runFor   = 30 * time.Second
		lateness = 5 * time.Second
	)
	for b.Loop() {
		b.StopTimer()
		c := kafkatest.Start(b, kafkatest.Options{Topics: []string{"waf-logs"}, Partitions: 4})
		slack := slacktest.New(b, slacktest.Options{})
		dir := b.TempDir()
		cfg := benchPipelineConfig(b, c, "latency", dir, "", true)
		cfg.Detectors.AllowedLateness = lateness
		cfg.Detectors.QuietEndpointSpike.Enabled = false // learning would need hours of traffic
		cfg.Detectors.NewCountry.Enabled = false
		token := filepath.Join(dir, "slack-token")
		if err := os.WriteFile(token, []byte(slacktest.DefaultToken), 0o600); err != nil {
			b.Fatal(err)
		}
		alertsFile := filepath.Join(dir, "alerts.jsonl")
		cfg.Alerting.Receivers = []alerting.ReceiverConfig{
			{Name: "slack", Slack: &alerting.SlackConfig{TokenFile: token, Channel: "#soc-alerts", APIURL: slack.URL}},
			{Name: "file", File: &alerting.FileConfig{Path: alertsFile}},
		}
		p, err := pipeline.New(cfg, pipeline.Options{Receivers: buildReceivers, Registry: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		time.Sleep(2 * time.Second) // joined the group
		b.StartTimer()
		produceLive(b, c, rate, runFor)
		time.Sleep(lateness + 5*time.Second) // the last windows close
		b.StopTimer()
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		lat := alertLatencies(b, alertsFile, slack.Messages(), lateness)
		if len(lat) < 50 {
			b.Fatalf("%d alerts measured, want at least 50", len(lat))
		}
		slices.Sort(lat)
		b.ReportMetric(lat[len(lat)/2].Seconds()*1000, "p50-ms")
		b.ReportMetric(lat[len(lat)*99/100].Seconds()*1000, "p99-ms")
		b.ReportMetric(float64(len(lat)), "alerts")
		b.StartTimer() // b.Loop wants it running
	}
}

// produceLive produces rate AWS WAF records a second for d, stamped now, spread over
// the partitions; every quarter second a new client gets 25 403s within half a second.
func produceLive(b *testing.B, c *kafkatest.Cluster, rate int, d time.Duration) {
	b.Helper()
	w := &kafkago.Writer{Addr: kafkago.TCP(c.Addrs...), Topic: "waf-logs", Balancer: &kafkago.RoundRobin{},
		BatchSize: 1000, BatchTimeout: 10 * time.Millisecond, Async: false, RequiredAcks: kafkago.RequireOne}
	defer w.Close()
	const tickEvery = 10 * time.Millisecond
	perTick := rate * int(tickEvery) / int(time.Second)
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Value
	attacker := 0
	for tick := time.NewTicker(tickEvery); time.Since(start) < d; <-tick.C {
		now := time.Now().UTC()
		msgs := make([]kafkago.Message, 0, perTick+25)
		for i := range perTick {
			r := synth.Request{Time: now, ClientIP: fmt.Sprintf("10.0.%d.%d", i%200, i%250), Country: "US", Method: "GET",
				Host: "api.example.com", Path: fmt.Sprintf("/v1/items/%d", i), Route: "/v1/items/{id}", Status: 200, Action: "ALLOW",
				UserAgent: "bench", APIKey: fmt.Sprintf("key-%d", i%500), RequestID: fmt.Sprintf("r-%d-%d", now.UnixNano(), i)}
			msgs = append(msgs, benchRecord(b, &r))
		}
		if since := time.Since(start); since/(250*time.Millisecond) >= time.Duration(attacker) && since < d-2*time.Second {
			attacker++
			for k := range 25 {
				r := synth.Request{Time: now.Add(time.Duration(k) * 20 * time.Millisecond), ClientIP: "203.0.113.9", Country: "US", Method: "GET",
					Host: "api.example.com", Path: "/v1/admin", Route: "/v1/admin", Status: 403, Action: "BLOCK",
					UserAgent: "bench", APIKey: fmt.Sprintf("attacker-%d", attacker), RequestID: fmt.Sprintf("req-attack-%06d-%02d", attacker, k)}
				msgs = append(msgs, benchRecord(b, &r))
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.WriteMessages(context.Background(), msgs...); err != nil {
				failed.Store(err)
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}

func benchRecord(b *testing.B, r *synth.Request) kafkago.Message {
	v, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, r)
	if err != nil {
		b.Fatal(err)
	}
	return kafkago.Message{Value: v, Time: r.Time}
}

// alertLatencies joins the alerts the file receiver got with the Slack messages (by
// key) and returns, per incident, Slack's receive time minus the time the deciding
// record was produced: the window's end plus the allowed lateness.
func alertLatencies(b *testing.B, alertsFile string, posts []slacktest.Message, lateness time.Duration) []time.Duration {
	b.Helper()
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		b.Fatal(err)
	}
	first := map[string]detectors.Alert{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var a detectors.Alert
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			b.Fatal(err)
		}
		if _, ok := first[a.ID]; !ok && a.Detector == detectors.ForbiddenBurst {
			first[a.ID] = a
		}
	}
	var out []time.Duration
	for _, a := range first {
		end, err := time.Parse(time.RFC3339, a.Evidence.WindowEnd)
		if err != nil {
			continue
		}
		for _, m := range posts {
			if m.ThreadTS == "" && strings.Contains(m.Text, a.Key) {
				out = append(out, m.Posted.Sub(end.Add(lateness)))
				break
			}
		}
	}
	return out
}

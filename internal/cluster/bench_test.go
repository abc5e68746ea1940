package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// handoffs records the events sources hand to their engines (an engine observes a
// batch as soon as Next returns it: Engine.Run): of the events whose time is within
// [from, to), how many counting sources handed out, when the last was, and, when from
// is set, how long after its time each was.
type handoffs struct {
	mu       sync.Mutex
	from, to time.Time
	lat      []time.Duration // hand-out time minus event time
	counted  int
	last     time.Time
}

// wrap returns src, its hand-outs recorded in h, counted if counting.
func (h *handoffs) wrap(src detectors.EventSource, counting bool) detectors.EventSource {
	return timedSource{src: src, h: h, counting: counting}
}

// wrapAll wraps src as a counting source.
func (h *handoffs) wrapAll(src detectors.EventSource) detectors.EventSource { return h.wrap(src, true) }

type timedSource struct {
	src      detectors.EventSource
	h        *handoffs
	counting bool
}

func (s timedSource) Next(ctx context.Context) (*ingest.Batch, error) {
	b, err := s.src.Next(ctx)
	if b == nil || len(b.Events) == 0 {
		return b, err
	}
	now := time.Now()
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range b.Events {
		t := b.Events[i].Time
		if t.Before(h.from) || !t.Before(h.to) {
			continue
		}
		if !h.from.IsZero() {
			h.lat = append(h.lat, now.Sub(t))
		}
		if s.counting {
			h.counted++
			h.last = now
		}
	}
	return b, err
}

func (h *handoffs) snapshot() (counted int, last time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counted, h.last
}

// discardAlerts is a sink that keeps nothing: the benchmarks time the hand-outs.
type discardAlerts struct{}

func (discardAlerts) Put(context.Context, []detectors.Alert) error { return nil }

// startReplicas starts n replicas of cfg over the raw topic, stage one in group, and
// returns a function that stops them (once, however often it is called). Each task's
// source is wrapped in h, counting when counting says so of its topic's kind.
func startReplicas(b *testing.B, c *kafkatest.Cluster, n int, cfg Config, group, topic string, h *handoffs, counting func(Kind) bool) (stop func()) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, n)
	for i := range n {
		r, err := New(cfg, Options{
			Kafka:         testKafka(c, group, topic),
			ParserOptions: testParserOptions(b),
			DeadLetters:   noDeadLetters{b},
			Detectors:     testDetectors(),
			Sink:          discardAlerts{},
			Registerer:    prometheus.NewRegistry(),
			Logger:        testLog(b, fmt.Sprintf("%s replica %d", group, i)),
		})
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		r.s2.wrapTask = func(k Kind, src detectors.EventSource) detectors.EventSource { return h.wrap(src, counting(k)) }
		go func() { done <- errors.Join(r.Run(ctx), r.Close()) }()
	}
	return sync.OnceFunc(func() {
		cancel()
		for range n {
			if err := <-done; err != nil {
				b.Errorf("%s replica: %v", group, err)
			}
		}
	})
}

// waitFor polls cond every 20 ms until it holds, failing the benchmark after d.
func waitFor(b *testing.B, d time.Duration, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("%s: not done after %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Hop latency: each rate of hopRates for hopRunFor; the events of the first hopWarmup
// (connections, first fetches) and of the last hopTail (the last records of a source
// partition wait in a task's merge for the other partitions' next) are not timed.
var hopRates = []int{5_000, 10_000}

const (
	hopRunFor = 15 * time.Second
	hopWarmup = 3 * time.Second
	hopTail   = 2 * time.Second
)

// BenchmarkHopLatency measures what the hop adds to the time from a raw record's
// produce to an engine observing its event: synthetic AWS WAF traffic stamped with the
// wall clock at produce, at each rate of hopRates round robin over six raw partitions,
// first through one plain engine behind a Kafka source (the baseline: gatewatch without
// a cluster section), then through one replica (four internal partitions to each of
// the four internal topics: sixteen tasks), each over a fresh in-process broker, both
// reading with batch_wait 20 ms. The latency of an event is the time its source handed
// it to an engine minus its event time; through the replica an event reaches a task of
// each kind it has a key of (client, token, route, IP), and each counts. It reports
// the 50th and 99th percentiles of both and the replica's 99th minus the plain
// engine's.
//
//	go test ./internal/cluster -run '^$' -bench HopLatency -benchtime 1x -count 3
func BenchmarkHopLatency(b *testing.B) {
	reqs := benchRequests(b, slices.Max(hopRates)*int(hopRunFor/time.Second))
	for _, rate := range hopRates {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			b.ReportAllocs() // of the whole process: the broker and the producer too
			var plain, hop []time.Duration
			for b.Loop() {
				plain = append(plain, hopRun(b, reqs, rate, false)...)
				hop = append(hop, hopRun(b, reqs, rate, true)...)
			}
			p := func(lat []time.Duration, q int) float64 {
				slices.Sort(lat)
				return float64(lat[(len(lat)-1)*q/100]) / float64(time.Millisecond)
			}
			b.ReportMetric(p(plain, 50), "plain-p50-ms")
			b.ReportMetric(p(plain, 99), "plain-p99-ms")
			b.ReportMetric(p(hop, 50), "hop-p50-ms")
			b.ReportMetric(p(hop, 99), "hop-p99-ms")
			b.ReportMetric(p(hop, 99)-p(plain, 99), "added-p99-ms")
		})
	}
}

// hopRun produces reqs at rate through a plain engine or a replica and returns the
// latencies of the events timed.
func hopRun(b *testing.B, reqs []synth.Request, rate int, cluster bool) []time.Duration {
	b.Helper()
	c := kafkatest.Start(b, kafkatest.Options{Topics: []string{"waf-logs"}, Partitions: rawPartitions})
	defer c.Fake.Close()
	h := &handoffs{}
	var stop func()
	if cluster {
		cfg := Config{InternalTopicPrefix: "gwi-hop", Partitions: internalPartitions()}
		// The client topic carries every event once (its key is the client key, else
		// the client IP): its tasks count.
		stop = startReplicas(b, c, 1, cfg, "gw-hop", "waf-logs", h, func(k Kind) bool { return k == Client })
		c.WaitGroup(b, "gw-hop", "waf-logs", 1)
		c.WaitGroup(b, "gw-hop"+TasksGroupSuffix, cfg.Topic(Client), 1)
	} else {
		_, stop = startPlain(b, c, 1, "gw-plain", "waf-logs", discardAlerts{}, h.wrapAll)
		c.WaitGroup(b, "gw-plain", "waf-logs", 1)
	}
	defer stop()
	start := time.Now()
	h.mu.Lock()
	h.from, h.to = start.Add(hopWarmup), start.Add(hopRunFor-hopTail)
	h.mu.Unlock()
	timed := produceSteady(b, c, "waf-logs", reqs, start, rate, hopRunFor, h.from, h.to)
	what := "plain engine"
	if cluster {
		what = "replica"
	}
	waitFor(b, time.Minute, what+": the timed events observed", func() bool {
		counted, _ := h.snapshot()
		return counted >= timed
	})
	stop()
	return h.lat
}

// benchRequests returns n requests of seeded synthetic traffic with every attack.
func benchRequests(b *testing.B, n int) []synth.Request {
	b.Helper()
	// The rate is a day's average and these two hours are early morning: ask for a
	// half more, then take n.
	reqs, _, err := synth.Generate(synth.Config{Duration: 2 * time.Hour, Rate: 1.5 * float64(n) / 7200, Seed: 5, Attacks: synth.Attacks})
	if err != nil {
		b.Fatal(err)
	}
	if len(reqs) < n {
		b.Fatalf("generated %d requests, want %d", len(reqs), n)
	}
	return reqs[:n]
}

// produceSteady produces reqs to topic, round robin over its partitions, rate a second
// from start for d, each stamped with the wall clock as it is produced, every 10 ms a
// batch; it returns how many were stamped within [from, to).
func produceSteady(b *testing.B, c *kafkatest.Cluster, topic string, reqs []synth.Request, start time.Time, rate int, d time.Duration, from, to time.Time) int {
	b.Helper()
	w := &kafkago.Writer{Addr: kafkago.TCP(c.Addrs...), Topic: topic, Balancer: &kafkago.RoundRobin{},
		BatchSize: 1000, BatchTimeout: 10 * time.Millisecond, RequiredAcks: kafkago.RequireOne}
	defer w.Close()
	const every = 10 * time.Millisecond
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	timed, next := 0, 0
	tick := time.NewTicker(every)
	defer tick.Stop()
	for ; next < len(reqs); <-tick.C {
		// Whole milliseconds, as the records carry them.
		now := time.Now().Truncate(time.Millisecond)
		if now.Sub(start) >= d {
			break
		}
		// As many as are due by the end of this tick, so a late tick catches up.
		due := min(len(reqs), int((now.Sub(start)+every)*time.Duration(rate)/time.Second))
		msgs := make([]kafkago.Message, 0, due-next)
		for ; next < due; next++ {
			r := reqs[next]
			r.Time = now.UTC()
			v, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &r)
			if err != nil {
				b.Fatal(err)
			}
			msgs = append(msgs, kafkago.Message{Value: v, Time: r.Time})
		}
		if !now.Before(from) && now.Before(to) {
			timed += len(msgs)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.WriteMessages(context.Background(), msgs...); err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	return timed
}

// throughputEvents is how many pre-produced AWS WAF records BenchmarkReplicasThroughput
// drains in each configuration.
const throughputEvents = 100_000

// BenchmarkReplicasThroughput measures events/s through one replica and through two,
// each started over the same throughputEvents pre-produced records (six raw partitions,
// four internal partitions a topic) and timed from their start to the last event
// handed to a task's engine (every event at every task of its kinds); and, as the
// baseline of the same run, through one plain engine behind a Kafka source and through
// a plain consumer group of two (gatewatch without a cluster section, which splits
// attacks). It reports each, the ratios two/one, and one replica against one plain
// engine (the hop's cost). Start-up (joining the groups, a rebalance for the second
// member) is inside the time, as when a replica is added. It also reports the CPU time
// the process spent per event (the broker's included) with one plain engine and with
// one replica: against events/s, it says whether a configuration waits or computes.
//
//	go test ./internal/cluster -run '^$' -bench ReplicasThroughput -benchtime 1x -count 3
func BenchmarkReplicasThroughput(b *testing.B) {
	reqs := benchRequests(b, throughputEvents)
	raw := make([][]byte, len(reqs))
	parts := make([]int, len(reqs))
	for i := range reqs {
		var err error
		if raw[i], err = synth.AppendRecord(nil, ingest.FormatAWSWAF, &reqs[i]); err != nil {
			b.Fatal(err)
		}
		parts[i] = i % rawPartitions
	}
	// Through the replicas, each event reaches one task of each kind that has its key.
	want := 0
	var addr keyBuf
	for _, ev := range parseAll(b, raw) {
		for k := range numKinds {
			if kinds[k].key(&ev, &addr) != "" {
				want++
			}
		}
	}
	// Then one record on each raw partition, a minute after the traffic and not
	// counted, lets the tasks' merges hand out every event of the traffic: a task holds
	// a partition's last events until every other partition has passed them (or goes
	// idle, after idle_timeout).
	end := reqs[len(reqs)-1].Time.Add(time.Minute)
	for p := range rawPartitions {
		r := reqs[p]
		r.Time = end
		v, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &r)
		if err != nil {
			b.Fatal(err)
		}
		raw, parts = append(raw, v), append(parts, p)
	}
	all := func(Kind) bool { return true }
	b.ReportAllocs()          // of the whole process: the broker too
	var rates, cpu [4]float64 // plain one, plain two, replica one, replica two: events/s and CPU seconds summed over iterations
	run := 0
	for b.Loop() {
		c := kafkatest.Start(b, kafkatest.Options{Topics: []string{"waf-logs"}, Partitions: rawPartitions})
		produceRaw(b, c, "waf-logs", raw, parts)
		for i, n := range []int{1, 2, 1, 2} {
			run++
			h := &handoffs{to: end}
			group := fmt.Sprintf("gw-%d", run)
			expect := len(reqs)
			start, cpu0 := time.Now(), cpuTime(b)
			var stop func()
			if i < 2 {
				_, stop = startPlain(b, c, n, group, "waf-logs", discardAlerts{}, h.wrapAll)
			} else {
				expect = want
				cfg := Config{InternalTopicPrefix: fmt.Sprintf("gwi-%d", run), Partitions: internalPartitions()}
				stop = startReplicas(b, c, n, cfg, group, "waf-logs", h, all)
			}
			waitFor(b, 5*time.Minute, fmt.Sprintf("%s: every event observed", group), func() bool {
				counted, _ := h.snapshot()
				return counted >= expect
			})
			_, last := h.snapshot()
			cpu[i] += (cpuTime(b) - cpu0).Seconds()
			stop()
			rates[i] += float64(len(reqs)) / last.Sub(start).Seconds()
		}
		c.Fake.Close()
	}
	iters := float64(run / 4)
	b.ReportMetric(rates[0]/iters, "plain1-events/s")
	b.ReportMetric(rates[1]/iters, "plain2-events/s")
	b.ReportMetric(rates[1]/rates[0], "plain-2/1")
	b.ReportMetric(rates[2]/iters, "hop1-events/s")
	b.ReportMetric(rates[3]/iters, "hop2-events/s")
	b.ReportMetric(rates[3]/rates[2], "hop-2/1")
	b.ReportMetric(rates[2]/rates[0], "hop1/plain1")
	perEvent := func(s float64) float64 { return s * 1e6 / iters / float64(len(reqs)) }
	b.ReportMetric(perEvent(cpu[0]), "plain1-cpu-µs/event")
	b.ReportMetric(perEvent(cpu[2]), "hop1-cpu-µs/event")
}

// cpuTime returns the user and system CPU time the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

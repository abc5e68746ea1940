package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafka"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/internal/promtest"
)

// rawPartitions is how many partitions the raw topics of the tests have.
const rawPartitions = 6

// internalPartitions is how many partitions the tests give each internal topic: fewer
// under -short, where every task costs the race detector, but one for each of three
// replicas.
func internalPartitions() int {
	if testing.Short() {
		return 3
	}
	return 4
}

// TestReplicasRaiseTheSameAlerts: the same seeded traffic, produced unkeyed round robin
// to four partitions (so every attack is spread over all of them), through one replica,
// through three, and (without -short) through three of which one leaves halfway, and
// through one joined by two at a third and left by the first at two thirds (1 → 3 → 2):
// the same alerts, ids and bytes. A plain consumer group of three engines without the
// hop (the negative control) misses attacks that were split. TestScheduleProperty runs
// random schedules over other seeds.
func TestReplicasRaiseTheSameAlerts(t *testing.T) {
	reqs, injected, raw := traffic(t, 7)
	parts := spread(reqs, injected)
	c := startKafka(t, []string{"one", "three", "leave", "join"}, "waf-plain")

	one := runReplicas(t, c, "one", fixed(1), raw, parts)
	if len(one) < len(injected) {
		t.Fatalf("one replica raised %d alert versions for %d attacks:\n%s", len(one), len(injected), strings.Join(one, "\n"))
	}
	kcatReadsInternalTopics(t, c, Config{InternalTopicPrefix: "gwi-one", Partitions: internalPartitions()})
	three := runReplicas(t, c, "three", fixed(3), raw, parts)
	if !slices.Equal(one, three) {
		t.Errorf("three replicas raised alerts one did not, or not those it did:\n%s", diffSets(three, one))
	}
	byDetector := func(alerts []string) map[string][]string {
		m := map[string][]string{}
		for _, a := range alerts {
			det, id := field(a, "detector"), field(a, "id")
			if !slices.Contains(m[det], id) {
				m[det] = append(m[det], id)
			}
		}
		return m
	}
	if !testing.Short() {
		// Replicas that leave: the others take over their source partitions and
		// tasks, rebuilt from their commits and the store (open incidents, those that
		// ended while their events may be read again, and baselines). Replicas that
		// join take partitions and tasks over the same way, mid-stream.
		for _, run := range []struct {
			name string
			s    schedule
		}{
			{"leave", schedule{start: 3, changes: []change{{at: len(raw) / 2, replicas: 2, pick: 2}}}},
			{"join", schedule{start: 1, changes: []change{{at: len(raw) / 3, replicas: 3}, {at: 2 * len(raw) / 3, replicas: 2}}}},
		} {
			got := runReplicas(t, c, run.name, run.s, raw, parts)
			if !slices.Equal(one, got) {
				t.Errorf("replicas %v raised alerts one did not, or not those it did:\n%s", run.s, diffSets(got, one))
			}
		}
	}
	for _, inj := range injected {
		if len(byDetector(one)[inj.Kind]) == 0 {
			t.Errorf("the replicas raised no %s alert for the injected attack %+v", inj.Kind, inj)
		}
	}

	plain := byDetector(runPlainGroup(t, c, 3, raw, parts))
	var missed []string
	for det, ids := range byDetector(one) {
		for _, id := range ids {
			if !slices.Contains(plain[det], id) {
				missed = append(missed, det+" "+id)
			}
		}
	}
	if len(missed) == 0 {
		t.Errorf("a plain group of three raised every alert the replicas raised (%v): the test does not split attacks", plain)
	}
	t.Logf("a plain group of three missed %d of the replicas' alerts: %s", len(missed), strings.Join(missed, ", "))
}

// field returns the string value of a top-level field of an alert's JSON.
func field(alert, name string) string {
	_, rest, ok := strings.Cut(alert, `"`+name+`":"`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// spread returns the raw partition of each request: round robin, as gateways' shippers
// that key nothing write, and each attack's requests round robin among themselves, so
// that every attack is split evenly over all partitions.
func spread(reqs []synth.Request, injected []synth.Injected) []int {
	parts := make([]int, len(reqs))
	next := make([]int, len(injected))
	for i := range reqs {
		parts[i] = i % rawPartitions
		for k, inj := range injected {
			if reqs[i].Consumer == inj.Client && !reqs[i].Time.Before(inj.Start) && !reqs[i].Time.After(inj.End) {
				parts[i] = next[k] % rawPartitions
				next[k]++
				break
			}
		}
	}
	return parts
}

// startKafka starts a broker with, for each name, the raw topic waf-<name> and the
// internal topics of prefix gwi-<name>, and the topics of extra. The internal topics
// exist before the replicas start (as after a first run), so that the test's own
// clients see them at once; TestRunCluster (cmd/gatewatch) and TestInternalTopics see
// the replicas create them.
func startKafka(t *testing.T, names []string, extra ...string) *kafkatest.Cluster {
	t.Helper()
	topics := slices.Clone(extra)
	var internal []string
	for _, name := range names {
		topics = append(topics, "waf-"+name)
		for k := range numKinds {
			internal = append(internal, Config{InternalTopicPrefix: "gwi-" + name}.Topic(k))
		}
	}
	return kafkatest.Start(t, kafkatest.Options{Topics: topics, Partitions: rawPartitions,
		Kfake: []kfake.Opt{kfake.SeedTopics(int32(internalPartitions()), internal...)}})
}

// produceRaw writes raw to the partitions of topic partOf says, stamped with their
// event times.
func produceRaw(t testing.TB, c *kafkatest.Cluster, topic string, raw [][]byte, partOf []int) {
	t.Helper()
	evTimes := eventTimes(t, raw)
	parts := make([][]kafkago.Message, rawPartitions)
	for i, r := range raw {
		parts[partOf[i]] = append(parts[partOf[i]], kafkago.Message{Value: r, Time: evTimes[i]})
	}
	for p, msgs := range parts {
		if len(msgs) > 0 { // a schedule's stretch of traffic may miss a partition
			c.ProduceTo(t, topic, p, msgs...)
		}
	}
}

// testLog collects a component's log, shown when the test fails.
func testLog(t testing.TB, name string) *slog.Logger {
	var mu sync.Mutex
	var buf bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			t.Logf("%s's log:\n%s", name, buf.String())
			mu.Unlock()
		}
	})
	return slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// noDeadLetters fails the test for any rejected record: the synthetic records all parse.
type noDeadLetters struct{ t testing.TB }

func (d noDeadLetters) Put(_ context.Context, letters []ingest.DeadLetter) error {
	d.t.Errorf("%d records rejected, the first: %+v", len(letters), letters[0])
	return nil
}

func testKafka(c *kafkatest.Cluster, group, topic string) ingest.KafkaConfig {
	return ingest.KafkaConfig{
		Brokers:     c.Addrs,
		Group:       group,
		StartOffset: "earliest",
		BatchWait:   20 * time.Millisecond,
		Topics:      []ingest.TopicConfig{{Name: topic, Format: ingest.FormatAWSWAF}},
	}
}

// eventTimes returns the event time of each raw record.
func eventTimes(t testing.TB, raw [][]byte) []time.Time {
	evs := parseAll(t, raw)
	out := make([]time.Time, len(evs))
	for i := range evs {
		out[i] = evs[i].Time
	}
	return out
}

// A schedule says how many replicas run over the traffic and when that changes: start
// of them from the first raw record, then each change in turn.
type schedule struct {
	start   int
	changes []change
}

// A change sets how many replicas run once stage one committed at least at raw records
// (exactly at, when replicas join): new ones start, or running ones stop, the pick-th
// (modulo how many run) first.
type change struct {
	at, replicas, pick int
}

// fixed returns n replicas from start to end.
func fixed(n int) schedule { return schedule{start: n} }

// String writes s as its counts, their points and the replicas (numbered as they
// start) that leave, "1 → 3 at 6863 → 2 at 13726 (0 leave)", as a failing case is
// reported.
func (s schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d", s.start)
	running := make([]int, s.start)
	for i := range running {
		running[i] = i
	}
	started := s.start
	for _, ch := range s.changes {
		fmt.Fprintf(&b, " → %d at %d", ch.replicas, ch.at)
		var left []string
		for ; len(running) < ch.replicas; started++ {
			running = append(running, started)
		}
		for len(running) > ch.replicas {
			i := ch.pick % len(running)
			left = append(left, strconv.Itoa(running[i]))
			running = slices.Delete(running, i, i+1)
		}
		if len(left) > 0 {
			fmt.Fprintf(&b, " (%s leave)", strings.Join(left, ", "))
		}
	}
	return b.String()
}

// runReplicas runs replicas (prefix and groups named for name) over the raw topic
// waf-<name> as s says, and returns the distinct alert versions they raised, sorted.
// Once s.start replicas are members of both groups it produces raw to the topic, up to
// the point of the first change that adds replicas; it applies each change once stage
// one committed its point, and produces on to the next such point; then it waits until
// every raw record is committed and every internal record observed. The replicas that
// stay take over the partitions and tasks of those that leave, and those that join take
// theirs over, rebuilt from the commits and the store.
func runReplicas(t *testing.T, c *kafkatest.Cluster, name string, s schedule, raw [][]byte, partOf []int) []string {
	t.Helper()
	topic, group := "waf-"+name, "gw-"+name
	cfg := Config{InternalTopicPrefix: "gwi-" + name, Partitions: internalPartitions()}
	sink := newAlertSet()
	stores := sharedStores()
	type replica struct {
		id   int
		reg  *prometheus.Registry
		stop context.CancelFunc
		done chan error
	}
	var all, running []*replica
	defer func() {
		for _, r := range all {
			r.stop()
		}
	}()
	start := func() {
		rep := &replica{id: len(all), reg: prometheus.NewRegistry(), done: make(chan error, 1)}
		r, err := New(cfg, stores.options(t, c, group, topic, sink, rep.reg, name+" replica "+strconv.Itoa(rep.id)))
		if err != nil {
			t.Fatal(err)
		}
		var ctx context.Context
		ctx, rep.stop = context.WithCancel(context.Background())
		go func() { rep.done <- errors.Join(r.Run(ctx), r.Close()) }()
		all = append(all, rep)
		running = append(running, rep)
	}
	joined := func() {
		c.WaitGroup(t, group, topic, len(running))
		c.WaitGroup(t, group+TasksGroupSuffix, cfg.Topic(Client), len(running))
	}
	// wait polls until done says so, failing the test with what done last said after 3
	// minutes, or when a running replica stops.
	wait := func(done func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for {
			ok, state := done()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not done after 3 minutes: %s", name, state)
			}
			for _, r := range running {
				select {
				case err := <-r.done:
					t.Fatalf("%s: replica %d stopped: %v", name, r.id, err)
				default:
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	for range s.start {
		start()
	}
	joined()
	// The traffic is produced up to the next point at which replicas join and no
	// further, so that the joiners are members of both groups, and take partitions and
	// tasks over, before the records after it, however fast the machine. Replicas leave
	// while it flows, once stage one committed their point, as a replica is stopped
	// under load.
	produced := 0
	joins := make([]bool, len(s.changes))
	for i, prev := 0, s.start; i < len(s.changes); i++ {
		joins[i], prev = s.changes[i].replicas > prev, s.changes[i].replicas
	}
	for i, ch := range s.changes {
		to := len(raw)
		if j := slices.Index(joins[i:], true); j >= 0 {
			to = s.changes[i+j].at
		}
		if to > produced {
			produceRaw(t, c, topic, raw[produced:to], partOf[produced:to])
			produced = to
		}
		var committed int64
		wait(func() (bool, string) {
			committed = sum(c.Committed(t, group, topic))
			return committed >= int64(ch.at), fmt.Sprintf("stage one committed %d of %d raw records", committed, ch.at)
		})
		if joins[i] {
			for len(running) < ch.replicas {
				start()
			}
			joined()
		}
		for len(running) > ch.replicas {
			k := ch.pick % len(running)
			r := running[k]
			running = slices.Delete(running, k, k+1)
			r.stop()
			if err := <-r.done; err != nil {
				t.Errorf("%s: replica %d stopped with %v", name, r.id, err)
			}
		}
		ids := make([]int, len(running))
		for k, r := range running {
			ids[k] = r.id
		}
		t.Logf("%s: replicas %v run after %d raw records were committed", name, ids, committed)
	}
	produceRaw(t, c, topic, raw[produced:], partOf[produced:])
	regs := func(rs []*replica) []prometheus.Gatherer {
		var out []prometheus.Gatherer
		for _, r := range rs {
			out = append(out, r.reg)
		}
		return out
	}
	wait(func() (bool, string) {
		committed, ends := c.Committed(t, group, topic), c.EndOffsets(t, topic)
		internal := internalEnds(t, c, cfg)
		position := promtest.Sum(t, "gatewatch_cluster_task_offset", regs(running)...)
		return maps.Equal(committed, ends) && position == internal,
			fmt.Sprintf("raw committed %v of %v, tasks at %v of %v", committed, ends, position, internal)
	})
	rawBytes := 0
	for _, r := range raw {
		rawBytes += len(r)
	}
	t.Logf("%s: stage one wrote %.0f bytes a raw record (events and marks, before compression) for %.0f bytes of raw record",
		name, promtest.Sum(t, "gatewatch_cluster_written_bytes_total", regs(all)...)/float64(len(raw)), float64(rawBytes)/float64(len(raw)))
	if dups := promtest.Sum(t, "gatewatch_cluster_task_duplicates_total", regs(all)...); dups != 0 && len(s.changes) == 0 {
		t.Errorf("%s: %v records dropped as duplicates in a run without crashes", name, dups)
	}
	for _, r := range running {
		r.stop()
		if err := <-r.done; err != nil {
			t.Errorf("%s: replica %d: %v", name, r.id, err)
		}
	}
	return sink.sorted()
}

func sum(offsets map[int]int64) int64 {
	n := int64(0)
	for _, o := range offsets {
		n += o
	}
	return n
}

// stores are what the replicas of a test share, as replicas share ClickHouse: a task
// that moves finds its baselines and open incidents where it left them.
type stores struct {
	baselines *detectors.MemoryBaselines
	incidents *lockedIncidents
}

// options are the Options of a test replica reading topic in group: the synthetic
// records' parser and detectors, s for its stores, its alerts into sink, its metrics in
// reg, its log shown under name when the test fails.
func (s stores) options(t testing.TB, c *kafkatest.Cluster, group, topic string, sink detectors.AlertSink, reg prometheus.Registerer, name string) Options {
	return Options{
		Kafka:         testKafka(c, group, topic),
		ParserOptions: testParserOptions(t),
		DeadLetters:   noDeadLetters{t},
		Detectors:     testDetectors(),
		Baselines:     s.baselines,
		Incidents:     s.incidents,
		Sink:          sink,
		Registerer:    reg,
		Logger:        testLog(t, name),
	}
}

func sharedStores() stores {
	return stores{baselines: detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines), incidents: &lockedIncidents{m: detectors.NewMemoryIncidents()}}
}

// lockedIncidents is a MemoryIncidents many tasks may use at once.
type lockedIncidents struct {
	mu sync.Mutex
	m  *detectors.MemoryIncidents
}

func (l *lockedIncidents) LoadIncidents(ctx context.Context, scope string) ([]detectors.IncidentState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m.LoadIncidents(ctx, scope)
}

func (l *lockedIncidents) SaveIncidents(ctx context.Context, scope string, open []detectors.IncidentState, closed []detectors.IncidentRef) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m.SaveIncidents(ctx, scope, open, closed)
}

// runPlainGroup runs n engines, each behind its own Kafka source in one consumer group
// over the raw topic waf-plain, as n instances of gatewatch without a cluster section
// would, until they observed every record, and returns the alerts they raised.
func runPlainGroup(t *testing.T, c *kafkatest.Cluster, n int, raw [][]byte, partOf []int) []string {
	t.Helper()
	sink := newAlertSet()
	regs, stop := startPlain(t, c, n, "gw-plain", "waf-plain", sink, nil)
	defer stop()
	// The sources join on their first Next, which Run calls.
	c.WaitGroup(t, "gw-plain", "waf-plain", n)
	produceRaw(t, c, "waf-plain", raw, partOf)
	deadline := time.Now().Add(3 * time.Minute)
	for promtest.Sum(t, "gatewatch_detectors_events_total", regs...) < float64(len(raw)) {
		if time.Now().After(deadline) {
			t.Fatalf("plain group: %v of %d events observed after 3 minutes", promtest.Sum(t, "gatewatch_detectors_events_total", regs...), len(raw))
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	return sink.sorted()
}

// startPlain starts n engines, each behind its own Kafka source in group over topic, as
// n instances of gatewatch without a cluster section would, each source wrapped by wrap
// when set, and returns their registries and a function that stops them (once, however
// often it is called).
func startPlain(t testing.TB, c *kafkatest.Cluster, n int, group, topic string, sink detectors.AlertSink, wrap func(detectors.EventSource) detectors.EventSource) ([]prometheus.Gatherer, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var regs []prometheus.Gatherer
	done := make(chan error, n)
	for i := range n {
		reg := prometheus.NewRegistry()
		regs = append(regs, reg)
		src, err := kafka.NewSource(testKafka(c, group, topic), kafka.Options{
			ParserOptions: testParserOptions(t),
			DeadLetters:   noDeadLetters{t},
			Registerer:    reg,
			Logger:        testLog(t, fmt.Sprintf("%s member %d", group, i)),
		})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		eng, err := detectors.NewEngine(testDetectors(), detectors.Options{Registerer: reg, Now: time.Now})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		var es detectors.EventSource = src
		if wrap != nil {
			es = wrap(src)
		}
		go func() {
			err := eng.Run(ctx, es, sink)
			if ctx.Err() != nil {
				err = nil
			}
			done <- errors.Join(err, src.Close())
		}()
	}
	return regs, sync.OnceFunc(func() {
		cancel()
		for range n {
			if err := <-done; err != nil {
				t.Errorf("%s member: %v", group, err)
			}
		}
	})
}

// kcatReadsInternalTopics: kcat (librdkafka), an independent client, reads every
// internal record kept (zstd batches included), and each decodes.
func kcatReadsInternalTopics(t *testing.T, c *kafkatest.Cluster, cfg Config) {
	t.Helper()
	if testing.Short() {
		return
	}
	bin := kafkatest.Require(t, "kcat")
	for k := range numKinds {
		topic := cfg.Topic(k)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		// Each record as its size, a colon and its bytes: the values are binary.
		out, err := exec.CommandContext(ctx, bin, "-b", c.Addrs[0], "-t", topic, "-C", "-e", "-o", "beginning", "-q", "-f", "%S:%s").Output()
		cancel()
		if err != nil {
			t.Fatalf("kcat -t %s: %v", topic, err)
		}
		n := 0
		var rec record
		for len(out) > 0 {
			size, rest, ok := bytes.Cut(out, []byte(":"))
			v, err := strconv.Atoi(string(size))
			if !ok || err != nil || v > len(rest) {
				t.Fatalf("%s: kcat printed %q", topic, out[:min(len(out), 40)])
			}
			if err := decodeRecord(&rec, rest[:v]); err != nil {
				t.Fatalf("%s: a record kcat read does not decode: %v", topic, err)
			}
			out = rest[v:]
			n++
		}
		// The replicas purged what their tasks committed: kcat reads from the first
		// record kept.
		want := int(sum(c.EndOffsets(t, topic)) - sum(c.StartOffsets(t, topic)))
		if n != want || n == 0 {
			t.Errorf("kcat read %d records of %s, want %d", n, topic, want)
		}
		t.Logf("kcat read and decoded the %d records of %s", n, topic)
	}
}

// diffSets lists what got has and want lacks (+) and what want has and got lacks (-).
func diffSets(got, want []string) string {
	var b strings.Builder
	for _, g := range got {
		if !slices.Contains(want, g) {
			fmt.Fprintf(&b, "+ %s\n", g)
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			fmt.Fprintf(&b, "- %s\n", w)
		}
	}
	return b.String()
}

// TestInternalTopics: a replica creates the internal topics that are missing, with
// cluster.partitions partitions, and refuses to run over one whose count differs (the
// partition of a key is fixed for the life of a deployment).
func TestInternalTopics(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf", "gwi-bad-token"}, Partitions: 2})
	run := func(prefix string) error {
		r, err := New(Config{InternalTopicPrefix: prefix, Partitions: 3}, Options{
			Kafka: testKafka(c, "gw-"+prefix, "waf"), ParserOptions: testParserOptions(t), DeadLetters: noDeadLetters{t},
			Detectors: testDetectors(), Sink: newAlertSet(), Registerer: prometheus.NewPedanticRegistry(),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if err := r.ensureTopics(ctx); err != nil {
			return errors.Join(err, r.Close())
		}
		return r.Close()
	}
	if err := run("gwi-new"); err != nil {
		t.Fatalf("creating the internal topics: %v", err)
	}
	var names []string
	for k := range numKinds {
		names = append(names, Config{InternalTopicPrefix: "gwi-new"}.Topic(k))
	}
	client := &kafkago.Client{Addr: kafkago.TCP(c.Addrs...)}
	md, err := client.Metadata(context.Background(), &kafkago.MetadataRequest{Topics: names})
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range md.Topics {
		if tp.Error != nil || len(tp.Partitions) != 3 {
			t.Errorf("topic %s: %d partitions (%v), want 3", tp.Name, len(tp.Partitions), tp.Error)
		}
	}
	if len(md.Topics) != int(numKinds) {
		t.Errorf("%d internal topics, want %d", len(md.Topics), numKinds)
	}
	if err := run("gwi-new"); err != nil {
		t.Errorf("a second replica over the topics the first created: %v", err)
	}
	err = run("gwi-bad")
	if err == nil || !strings.Contains(err.Error(), "gwi-bad-token has 2 partitions, cluster.partitions is 3") {
		t.Errorf("over an internal topic of 2 partitions with cluster.partitions 3: %v, want a refusal that names both", err)
	}
}

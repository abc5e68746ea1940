package main

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/internal/cluster"
	"github.com/gatewatch/gatewatch/store"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// TestMain lets the tests run gatewatch itself as a subprocess: the test binary, with
// GATEWATCH_TEST_MAIN=1, is gatewatch. With GATEWATCH_TEST_KILL=STEP:N as well, it
// kills itself (SIGKILL) the Nth time it reaches that step of the cluster hop
// (cluster.Failpoint).
func TestMain(m *testing.M) {
	if os.Getenv("GATEWATCH_TEST_MAIN") == "1" {
		if kill := os.Getenv("GATEWATCH_TEST_KILL"); kill != "" {
			step, n, _ := strings.Cut(kill, ":")
			nth, err := strconv.Atoi(n)
			if err != nil {
				fmt.Fprintf(os.Stderr, "GATEWATCH_TEST_KILL=%s: want STEP:N\n", kill)
				os.Exit(2)
			}
			var hits atomic.Int64
			cluster.Failpoint = func(s string) {
				if s == step && hits.Add(1) == int64(nth) {
					fmt.Fprintf(os.Stderr, "killed at %s (hit %d)\n", s, nth)
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {} // the signal is on its way
				}
			}
		}
		main()
		return
	}
	os.Exit(m.Run())
}

// runProcess is `gatewatch run` as a subprocess.
type runProcess struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan error
}

func (p *runProcess) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.Write(b)
}

func (p *runProcess) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

func startRun(t *testing.T, config string, env ...string) *runProcess {
	t.Helper()
	p := &runProcess{t: t, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], "run", "--config", config, "--log-level", "info")
	p.cmd.Env = append(append(os.Environ(), "GATEWATCH_TEST_MAIN=1"), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("gatewatch run's log:\n%s", p.log())
		}
	})
	return p
}

// alive fails the test when the process has exited.
func (p *runProcess) alive() {
	p.t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		p.t.Fatalf("gatewatch run exited: %v", err)
	default:
	}
}

// stop sends sig and returns the exit code.
func (p *runProcess) stop(sig os.Signal, timeout time.Duration) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	return p.wait(sig, timeout)
}

// wait waits for the process, signalled sig, to exit, and returns its exit code.
func (p *runProcess) wait(sig os.Signal, timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("gatewatch run did not stop within %s of %s", timeout, sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func writeFile(t testing.TB, path, body string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// e2e is one end-to-end setting: a broker, a Slack-like server, a config.
type e2e struct {
	partitions int
	store      string // extra lines of the store section
	kafka      *kafkatest.Cluster
	slack      *slacktest.Server
	dir        string
	config     string
	admin      string
	// stampNow leaves the Kafka timestamps to the producer's clock, as a shipper
	// sending a backlog does; else each record is stamped with its event time.
	stampNow bool
}

func newE2E(t *testing.T, topics ...string) *e2e {
	t.Helper()
	e := &e2e{
		partitions: 4,
		kafka:      kafkatest.Start(t, kafkatest.Options{Topics: topics, Partitions: 4}),
		slack:      slacktest.New(t, slacktest.Options{}),
		dir:        t.TempDir(),
		admin:      freeAddr(t),
	}
	return e
}

// writeConfig writes the config run reads; detectors is appended to the detectors
// section, e.store (when set) replaces the embedded store's block.
func (e *e2e) writeConfig(t *testing.T, topics map[string]string, detectors string) {
	t.Helper()
	secret := writeFile(t, filepath.Join(e.dir, "token-secret"), "0123456789abcdef0123456789abcdef")
	slackToken := writeFile(t, filepath.Join(e.dir, "slack-token"), slacktest.DefaultToken)
	var tl strings.Builder
	for name, format := range topics {
		fmt.Fprintf(&tl, "      - {name: %s, format: %s}\n", name, format)
	}
	e.config = writeFile(t, filepath.Join(e.dir, "gatewatch.yaml"), fmt.Sprintf(`ingest:
  kafka:
    brokers: [%s]
    group: gatewatch-e2e
    batch_wait: 50ms
    topics:
%s  token_secret_file: %s
  dead_letter: {file: %s}
detectors:
  allowed_lateness: 30s
  new_country: {learning_period: 30m, min_events: 20}
  quiet_endpoint_spike: {learning_period: 30m}
  object_enumeration: {learning_period: 30m}
  privilege_anomaly: {learning_period: 30m}
  client_volume_spike: {learning_period: 30m}
%s
store:
  data_dir: %s
%s
alerting:
  runbook_base_url: https://runbooks.example.com/gatewatch
  receivers:
    - {name: soc-slack, slack: {token_file: %s, channel: "#soc-alerts", api_url: %q}}
admin:
  listen: %s
`, strings.Join(e.kafka.Addrs, ", "), tl.String(), secret, filepath.Join(e.dir, "dlq.jsonl"), detectors,
		filepath.Join(e.dir, "data"), e.store, slackToken, e.slack.URL, e.admin))
}

// produce writes reqs to topic in format as the gateways' shippers would, all at once
// (a backlog the partitions' readers take at their own pace): in time order, a chunk at
// a time to every partition, record i to partition partOf(i) (round robin when nil),
// stamped with the time it was logged plus lag[p] for a shipper lag[p] behind.
func (e *e2e) produce(t *testing.T, topic, format string, reqs []synth.Request, partOf func(i int) int, lag map[int]time.Duration) {
	t.Helper()
	for lo := 0; lo < len(reqs); lo += 2000 {
		parts := map[int][]kafkago.Message{}
		for i := lo; i < min(lo+2000, len(reqs)); i++ {
			v, err := synth.AppendRecord(nil, format, &reqs[i])
			if err != nil {
				t.Fatal(err)
			}
			p := i % e.partitions
			if partOf != nil {
				p = partOf(i)
			}
			ts := reqs[i].Time.Add(lag[p])
			if e.stampNow {
				ts = time.Time{}
			}
			parts[p] = append(parts[p], kafkago.Message{Value: v, Time: ts})
		}
		for _, p := range slices.Sorted(maps.Keys(parts)) {
			e.kafka.ProduceTo(t, topic, p, parts[p]...)
		}
	}
}

// metric returns the sum of the series of /metrics that have labels (name, value
// pairs), or -1 when there is none.
func (e *e2e) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mf := scrape(t, e.admin)[name]
	if mf == nil {
		return -1
	}
	sum, found := 0.0, false
	for _, m := range mf.GetMetric() {
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			has := false
			for _, lp := range m.GetLabel() {
				has = has || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
			}
			match = match && has
		}
		if !match {
			continue
		}
		found = true
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		}
	}
	if !found {
		return -1
	}
	return sum
}

// waitMetric waits until a metric reaches at least want.
func (e *e2e) waitMetric(t *testing.T, p *runProcess, want float64, timeout time.Duration, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if e.metric(t, name, labels...) >= want {
			return
		}
		p.alive()
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s%v = %v after %s, want %v", name, labels, e.metric(t, name, labels...), timeout, want)
}

// posts returns the top-level Slack messages (one per incident).
func (e *e2e) posts() []slacktest.Message {
	var out []slacktest.Message
	for _, m := range e.slack.Messages() {
		if m.ThreadTS == "" {
			out = append(out, m)
		}
	}
	return out
}

// waitPosts waits until Slack has at least n incidents.
func (e *e2e) waitPosts(t *testing.T, p *runProcess, n int, timeout time.Duration) []slacktest.Message {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if got := e.posts(); len(got) >= n {
			return got
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("gatewatch run exited (%v) before Slack had %d incidents", err, n)
		case <-time.After(200 * time.Millisecond):
		}
	}
	for _, m := range e.posts() {
		t.Logf("posted: %s", m.Text)
	}
	_, metrics := httpGet(t, "http://"+e.admin+"/metrics")
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "gatewatch_detectors") || strings.HasPrefix(l, "gatewatch_ingest") || strings.HasPrefix(l, "gatewatch_pipeline") {
			t.Log(l)
		}
	}
	t.Fatalf("Slack has %d incidents after %s, want %d", len(e.posts()), timeout, n)
	return nil
}

// scrape returns the metric families on the /metrics of the admin address admin, nil
// when it does not answer 200.
func scrape(t testing.TB, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, "http://"+admin+"/metrics")
	if code != http.StatusOK {
		return nil
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return mfs
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// TestRunEndToEnd: gatewatch run reads AWS WAF records from a topic of four
// partitions, shipped as a backlog stamped when it was sent, raises every injected
// attack with no event late, posts each to Slack once; SIGTERM stops it with exit 0
// and a restart posts nothing again.
func TestRunEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch as a subprocess for a while")
	}
	e := newE2E(t, "waf-logs")
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "")
	reqs, injected := liveTraffic(t, 7)
	p := startRun(t, e.config)
	// Two hours of history shipped at once, stamped when sent, partition after
	// partition: Kafka timestamps that say nothing of when the requests happened.
	e.stampNow = true
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
	posts := e.waitPosts(t, p, len(injected), 5*time.Minute)
	e.waitMetric(t, p, float64(len(reqs)), time.Minute, "gatewatch_ingest_events_total")
	if n := e.metric(t, "gatewatch_detectors_late_events_total"); n != 0 {
		t.Errorf("%v events late, want none", n)
	}
	if code, body := httpGet(t, "http://"+e.admin+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %q, want 200", code, body)
	}
	code, metrics := httpGet(t, "http://"+e.admin+"/metrics")
	if code != http.StatusOK || !strings.Contains(metrics, "gatewatch_detectors_alerts_total") || !strings.Contains(metrics, "gatewatch_alerting_") {
		t.Errorf("/metrics = %d, missing the detectors' or alerting's metrics", code)
	}
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d, want 0", code)
	}
	if len(posts) != len(injected) {
		t.Errorf("%d incidents posted, want one per injected attack (%d)", len(posts), len(injected))
	}

	// A restart reads on from the committed offsets and pages nobody again.
	p2 := startRun(t, e.config)
	time.Sleep(3 * time.Second)
	if got := e.posts(); len(got) != len(posts) {
		t.Errorf("after a restart %d incidents posted, want still %d", len(got), len(posts))
	}
	if code := p2.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("second SIGTERM: exit %d, want 0", code)
	}
}

// alertHistory returns the alert history of the store cfg names, every alert recorded
// up to an hour from now, with its deliveries.
func alertHistory(t *testing.T, cfg store.Config) []store.AlertRecord {
	t.Helper()
	st, err := store.Open(cfg, store.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	recs, err := st.Alerts(context.Background(), time.Time{}, time.Now().Add(time.Hour), "")
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// liveTraffic is two hours of traffic ending now, with one attack of each kind: the
// wall clock and event time agree as they do in production, whatever today's date.
// The traffic is generated for a fixed stretch of the synthetic day and moved to end
// now: its records follow the hour of day (synth's daily rhythm), and generated for
// the hours before now they changed with the time the test ran. One stretch of them
// made TestRunLaggingPartitionAndFutureRecord fail every run for ten minutes, its
// record from the future landing in the partition read behind the burst's.
func liveTraffic(t *testing.T, seed uint64) ([]synth.Request, []synth.Injected) {
	t.Helper()
	base := time.Date(2026, 11, 2, 19, 0, 0, 0, time.UTC)
	reqs, injected, err := synth.Generate(synth.Config{Start: base, Duration: 2 * time.Hour, Rate: 3, Seed: seed, Attacks: synth.Attacks})
	if err != nil {
		t.Fatal(err)
	}
	shift := time.Now().Add(-2 * time.Hour).Truncate(time.Second).Sub(base)
	for i := range reqs {
		reqs[i].Time = reqs[i].Time.Add(shift)
	}
	for i := range injected {
		injected[i].Start, injected[i].End = injected[i].Start.Add(shift), injected[i].End.Add(shift)
	}
	return reqs, injected
}

// attackOf returns the index of the injected attack request i belongs to, or -1.
func attackOf(r *synth.Request, injected []synth.Injected) int {
	for k, inj := range injected {
		if r.Consumer == inj.Client && !r.Time.Before(inj.Start) && !r.Time.After(inj.End) {
			return k
		}
	}
	return -1
}

// TestRunLaggingPartitionAndFutureRecord: one partition's shipper runs two minutes
// behind the others and carries the 403 burst; the others hold records stamped twenty
// hours ahead. Every attack is still caught, nothing is late, and each record from the
// future counts once as ahead of its stream.
func TestRunLaggingPartitionAndFutureRecord(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch as a subprocess")
	}
	e := newE2E(t, "waf-logs")
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "")
	// Full batches of the backlog below, each of several minutes of event time at
	// this rate.
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, e.config, strings.Replace(string(cfg), "batch_wait: 50ms", "batch_wait: 2s", 1))
	reqs, injected := liveTraffic(t, 11)
	burst := -1
	for k, inj := range injected {
		if inj.Kind == synth.AttackForbidden {
			burst = k
		}
	}
	// Four records stamped twenty hours ahead, each in its place, at points that fall
	// at different places in the batches.
	const futures = 4
	for k := futures; k > 0; k-- {
		i := k * len(reqs) / (futures + 1)
		future := reqs[i]
		future.Time = future.Time.Add(20 * time.Hour)
		future.RequestID = fmt.Sprintf("req-from-the-future-%d", k)
		reqs = slices.Insert(reqs, i+1, future)
	}
	partOf := func(i int) int {
		if attackOf(&reqs[i], injected) == burst {
			return 3
		}
		return i % 3 // partition 3 carries only the burst, two minutes late
	}
	// Produced before gatewatch starts, the records are a backlog it reads in full
	// batches: a record from the future must not hold back the records of its
	// partition after it in its batch (ordered at its own time, it did, and at this
	// rate they were minutes behind the other partitions' and late).
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, partOf, map[int]time.Duration{3: 2 * time.Minute})
	p := startRun(t, e.config)
	e.waitPosts(t, p, len(injected), 5*time.Minute)
	e.waitMetric(t, p, float64(len(reqs)), time.Minute, "gatewatch_ingest_events_total")
	e.waitMetric(t, p, futures, 30*time.Second, "gatewatch_detectors_ahead_events_total") // counted at the next report
	if n := e.metric(t, "gatewatch_detectors_ahead_events_total"); n != futures {
		t.Errorf("%v records ahead of their stream, want the %d from the future", n, futures)
	}
	if n := e.metric(t, "gatewatch_detectors_late_events_total"); n != 0 {
		t.Errorf("%v records late, want none", n)
	}
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	if got := len(e.posts()); got != len(injected) {
		t.Errorf("%d incidents posted, want %d", got, len(injected))
	}
}

// TestRunCrashRecovery: gatewatch is killed (SIGKILL) in the middle of an attack and
// again right after it posted, before it could commit; each restart reads on from the
// committed offsets. Every attack reaches Slack, each incident exactly once, and the
// alert history holds one id per attack.
func TestRunCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch as a subprocess")
	}
	e := newE2E(t, "waf-logs")
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "")
	reqs, injected := liveTraffic(t, 13)
	var reuse synth.Injected
	for _, inj := range injected {
		if inj.Kind == synth.AttackTokenReuse {
			reuse = inj
		}
	}
	mid := reuse.Start.Add(reuse.End.Sub(reuse.Start) / 2)
	cut, _ := slices.BinarySearchFunc(reqs, mid, func(r synth.Request, t time.Time) int { return r.Time.Compare(t) })

	// The first half, up to the middle of the token reuse: consumed, then killed.
	p := startRun(t, e.config)
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs[:cut], nil, nil)
	e.waitMetric(t, p, float64(cut), time.Minute, "gatewatch_ingest_events_total")
	time.Sleep(500 * time.Millisecond) // let some batches commit, not necessarily all
	before := len(e.posts())
	p.stop(syscall.SIGKILL, 10*time.Second)

	// The rest; killed again as soon as a new incident reached Slack.
	p = startRun(t, e.config)
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs[cut:], func(i int) int { return (cut + i) % e.partitions }, nil)
	e.waitPosts(t, p, before+1, 5*time.Minute)
	p.stop(syscall.SIGKILL, 10*time.Second)

	p = startRun(t, e.config)
	e.waitPosts(t, p, len(injected), 5*time.Minute)
	time.Sleep(2 * time.Second) // a duplicate would come now
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	if got := len(e.posts()); got != len(injected) {
		for _, m := range e.posts() {
			t.Logf("posted: %s", m.Text)
		}
		t.Fatalf("%d incidents posted across two crashes, want one per attack (%d)", got, len(injected))
	}
	recs := alertHistory(t, store.Config{DataDir: filepath.Join(e.dir, "data")})
	per := map[string]int{}
	for _, r := range recs {
		per[r.Alert.Detector]++
	}
	for _, inj := range injected {
		if per[inj.Kind] > 1 {
			t.Errorf("alert history holds %d %s incidents, want 1: %v", per[inj.Kind], inj.Kind, per)
		} else if per[inj.Kind] == 0 {
			t.Errorf("alert history holds no %s incident: %v", inj.Kind, per)
		}
	}
}

// TestRunReload: SIGHUP puts a changed alerting section in force (a new receiver gets
// the next alerts) without a restart; a config that does not load is refused with its
// file:line:col error, the running config goes on, and the reload metric says so.
func TestRunReload(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch as a subprocess")
	}
	e := newE2E(t, "waf-logs")
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "")
	reqs, injected := liveTraffic(t, 17)
	p := startRun(t, e.config)
	e.waitMetric(t, p, 1, time.Minute, "gatewatch_config_last_reload_successful")

	// A broken file: refused, with the key and its position.
	good, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, e.config, strings.Replace(string(good), "allowed_lateness: 30s", "allowed_lateness: soon", 1))
	p.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(20 * time.Second)
	for e.metric(t, "gatewatch_config_last_reload_successful") != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if e.metric(t, "gatewatch_config_last_reload_successful") != 0 || !strings.Contains(p.log(), "detectors.allowed_lateness") {
		t.Fatalf("a config that does not load was not refused by name:\n%s", p.log())
	}

	// The good file with a file receiver added: the alerts of the traffic reach it.
	archive := filepath.Join(e.dir, "alerts.jsonl")
	writeFile(t, e.config, strings.Replace(string(good), "  receivers:\n", fmt.Sprintf("  receivers:\n    - {name: archive, file: {path: %s}}\n", archive), 1))
	p.cmd.Process.Signal(syscall.SIGHUP)
	e.waitMetric(t, p, 1, 20*time.Second, "gatewatch_config_reloads_total", "result", "success")
	if e.metric(t, "gatewatch_config_last_reload_successful") != 1 {
		t.Fatal("the reload metric still says the last reload failed")
	}
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
	e.waitPosts(t, p, len(injected), 5*time.Minute)
	deadline = time.Now().Add(30 * time.Second)
	for len(countLines(t, archive)) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if len(countLines(t, archive)) == 0 {
		t.Error("the receiver added by the reload got no alert")
	}
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
}

// TestRunReloadDetectors: a SIGHUP lowers forbidden_burst's threshold while a 403
// burst is under way; the same process (no restart) then raises the burst, counting the
// 403s from before the reload (the window straddles it: half the burst alone is below
// either threshold). A changed window is refused, by name, with the metric at 0, and
// the config in force (the lowered threshold, not the refused file's) keeps running.
func TestRunReloadDetectors(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch as a subprocess")
	}
	e := newE2E(t, "waf-logs")
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "  forbidden_burst: {threshold: 20, window: 1m}")
	good, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	p := startRun(t, e.config)
	pid := p.cmd.Process.Pid
	e.waitMetric(t, p, 1, time.Minute, "gatewatch_config_last_reload_successful")

	// Event time an hour back (any will do), round robin over the four partitions: each
	// phase ends with one request to each, so that every partition's stream advances.
	start := time.Now().Add(-time.Hour).Truncate(time.Minute)
	produced := 0
	phase := func(client string, n int, from, until time.Duration) {
		t.Helper()
		var reqs []synth.Request
		for i := range n {
			reqs = append(reqs, synth.Request{Time: start.Add(from + time.Duration(i)*time.Second), ClientIP: "198.51.100.7",
				Country: "DE", Method: "GET", Host: "api.example.com", Path: fmt.Sprintf("/v1/orders/%d", i), Route: "/v1/orders/{id}",
				Status: 403, Action: "ALLOW", UserAgent: "curl/8.5", APIKey: "key-" + client, RequestID: fmt.Sprintf("req-%024x", produced+len(reqs))})
		}
		for range e.partitions {
			reqs = append(reqs, synth.Request{Time: start.Add(until), ClientIP: "192.0.2.10", Country: "DE", Method: "GET",
				Host: "api.example.com", Path: "/v1/health", Route: "/v1/health", Status: 200, Action: "ALLOW", UserAgent: "probe/1",
				APIKey: "key-probe", RequestID: fmt.Sprintf("req-%024x", produced+len(reqs))})
		}
		e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
		produced += len(reqs)
		e.waitMetric(t, p, float64(produced), time.Minute, "gatewatch_ingest_events_total")
	}
	reload := func(config string, result string, n float64) {
		t.Helper()
		writeFile(t, e.config, config)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		e.waitMetric(t, p, n, 20*time.Second, "gatewatch_config_reloads_total", "result", result)
	}

	// Six 403s of the burst, its window still open: nothing fires under threshold 20.
	phase("a", 6, 0, 5*time.Second)
	lowered := strings.Replace(string(good), "threshold: 20", "threshold: 10", 1)
	reload(lowered, "success", 1)
	// Six more, then the windows close. The first to hold 10 ends with the 5s bucket
	// of the eleventh 403: six of its eleven came before the reload.
	phase("a", 6, 10*time.Second, 5*time.Minute)
	posts := e.waitPosts(t, p, 1, time.Minute)
	if !strings.Contains(posts[0].Text, "received 11 responses with status 403") {
		t.Errorf("the burst's alert does not count the 403s from before the reload:\n%s", posts[0].Text)
	}

	// A changed window (and, refused with it, a raised threshold): the old config runs.
	refused := strings.Replace(lowered, "threshold: 10, window: 1m", "threshold: 30, window: 2m", 1)
	reload(refused, "failure", 1)
	if n := e.metric(t, "gatewatch_config_last_reload_successful"); n != 0 {
		t.Errorf("gatewatch_config_last_reload_successful = %v after a refused reload, want 0", n)
	}
	if !strings.Contains(p.log(), "detectors.forbidden_burst.window: takes effect only after a restart") {
		t.Errorf("the refusal does not name detectors.forbidden_burst.window:\n%s", p.log())
	}
	phase("b", 12, 6*time.Minute, 10*time.Minute)
	e.waitPosts(t, p, 2, time.Minute)
	time.Sleep(2 * time.Second) // an alert nobody expects would come now
	if got := len(e.posts()); got != 2 {
		t.Errorf("%d incidents posted, want 2", got)
	}
	p.alive()
	if p.cmd.Process.Pid != pid {
		t.Fatal("gatewatch restarted")
	}
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
}

// TestRunClickHouseAndKcat: the store is a real clickhouse-server. Two gateways' logs
// (AWS WAF and Kong, each client behind one of them) come as a backlog produced with
// kafka-go; then, once that is consumed, Kong records arrive live through kcat, an
// independent client, with an attack of their own. Every attack reaches Slack, and
// nothing else; the archive, the baselines and the alert history are in ClickHouse.
func TestRunClickHouseAndKcat(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch as a subprocess")
	}
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	kcat := kafkatest.Require(t, "kcat")
	e := newE2E(t, "waf-logs", "kong-logs")
	e.store = fmt.Sprintf("  clickhouse: {addr: [%s], database: %s}", addr, db)
	// The partitions go quiet once their backlog is read: soon idle, they stop holding
	// the watermark back for the live Kong traffic.
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF, "kong-logs": ingest.FormatKong}, "  idle_timeout: 3s")
	reqs, injected := liveTraffic(t, 19)
	byGateway := splitByGateway(reqs, injected) // the demo's split over its three gateways
	waf := byGateway["waf-logs"]
	kong := slices.Concat(byGateway["kong-logs"], byGateway["nginx-logs"])
	slices.SortStableFunc(kong, func(a, b synth.Request) int { return a.Time.Compare(b.Time) })
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, waf, nil, nil)
	e.produce(t, "kong-logs", ingest.FormatKong, kong, nil, nil)
	p := startRun(t, e.config)
	e.waitPosts(t, p, len(injected), 5*time.Minute)

	// Live Kong traffic from now on (a gateway's clock may run a few minutes ahead;
	// max_ahead is 10m), a 403 burst among it, through kcat.
	live, burst, err := synth.Generate(synth.Config{Start: time.Now(), Duration: 6 * time.Minute, Rate: 5, Seed: 23,
		Attacks: []string{synth.AttackForbidden}})
	if err != nil {
		t.Fatal(err)
	}
	// Each client goes through one gateway: the live Kong traffic is that of the
	// clients the backlog had on Kong (a decoy's daily admin work on its own gateway
	// is its history there), and the burst.
	onKong := map[string]bool{}
	for _, r := range kong {
		onKong[r.Consumer] = true
	}
	live = slices.DeleteFunc(live, func(r synth.Request) bool { return !onKong[r.Consumer] && attackOf(&r, burst) < 0 })
	var lines strings.Builder
	for i := range live {
		v, err := synth.AppendRecord(nil, ingest.FormatKong, &live[i])
		if err != nil {
			t.Fatal(err)
		}
		lines.Write(v)
		lines.WriteByte('\n')
	}
	cmd := exec.Command(kcat, "-P", "-b", e.kafka.Addrs[0], "-t", "kong-logs")
	cmd.Stdin = strings.NewReader(lines.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat: %v\n%s", err, out)
	}
	e.waitPosts(t, p, len(injected)+len(burst), 5*time.Minute)
	e.waitMetric(t, p, float64(len(reqs)+len(live)), time.Minute, "gatewatch_ingest_events_total")
	time.Sleep(2 * time.Second) // an alert nobody expects would come now
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	if got := len(e.posts()); got != len(injected)+len(burst) {
		t.Errorf("%d incidents posted, want %d", got, len(injected)+len(burst))
	}

	conn := clickhousetest.Conn(t, addr, db)
	count := func(q string) uint64 {
		t.Helper()
		var n uint64
		if err := conn.QueryRow(context.Background(), q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	if n := count("SELECT uniqExact(request_id) FROM events"); n != uint64(len(reqs)+len(live)) {
		t.Errorf("the archive holds %d events, want every one of %d", n, len(reqs)+len(live))
	}
	if n := count("SELECT uniqExact(id) FROM alerts"); n != uint64(len(injected)+len(burst)) {
		t.Errorf("the alert history holds %d alerts, want %d", n, len(injected)+len(burst))
		rows, err := conn.Query(context.Background(), "SELECT id, detector, key, summary FROM alerts FINAL ORDER BY first_seen")
		if err == nil {
			for rows.Next() {
				var id, d, k, sum string
				rows.Scan(&id, &d, &k, &sum)
				t.Logf("%s %s %s %s", id[:8], d, k, sum)
			}
			rows.Close()
		}
	}
	if n := count("SELECT uniqExact(id) FROM alert_deliveries WHERE state = 'delivered'"); n != uint64(len(injected)+len(burst)) {
		t.Errorf("the alert history holds %d delivered alerts, want %d", n, len(injected)+len(burst))
	}
	if n := count("SELECT uniqExact(key) FROM key_stats"); n == 0 {
		t.Error("no baseline in ClickHouse")
	}
}

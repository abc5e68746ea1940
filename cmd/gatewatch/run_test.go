package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// TestMain lets the tests run gatewatch itself as a subprocess: the test binary, with
// GATEWATCH_TEST_MAIN=1, is gatewatch.
func TestMain(m *testing.M) {
	if os.Getenv("GATEWATCH_TEST_MAIN") == "1" {
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

func startRun(t *testing.T, config string) *runProcess {
	t.Helper()
	p := &runProcess{t: t, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], "run", "--config", config, "--log-level", "info")
	p.cmd.Env = append(os.Environ(), "GATEWATCH_TEST_MAIN=1")
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

// stop sends sig and returns the exit code.
func (p *runProcess) stop(sig os.Signal, timeout time.Duration) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("gatewatch run did not stop within %s of %s", timeout, sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func writeFile(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// e2e is one end-to-end setting: a broker, a Slack-like server, a config.
type e2e struct {
	kafka  *kafkatest.Cluster
	slack  *slacktest.Server
	dir    string
	config string
	admin  string
}

func newE2E(t *testing.T, topics ...string) *e2e {
	t.Helper()
	e := &e2e{
		kafka: kafkatest.Start(t, kafkatest.Options{Topics: topics, Partitions: 4}),
		slack: slacktest.New(t, slacktest.Options{}),
		dir:   t.TempDir(),
		admin: freeAddr(t),
	}
	return e
}

// writeConfig writes the config run reads; extra is appended to the detectors section.
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
%s
store:
  data_dir: %s
alerting:
  runbook_base_url: https://runbooks.example.com/gatewatch
  receivers:
    - {name: soc-slack, slack: {token_file: %s, channel: "#soc-alerts", api_url: %q}}
admin:
  listen: %s
`, strings.Join(e.kafka.Addrs, ", "), tl.String(), secret, filepath.Join(e.dir, "dlq.jsonl"), detectors,
		filepath.Join(e.dir, "data"), slackToken, e.slack.URL, e.admin))
}

// produce writes reqs to topic in format, round robin over its partitions, all at once
// (a backlog the partitions' readers take at their own pace).
func (e *e2e) produce(t *testing.T, topic, format string, reqs []synth.Request) {
	t.Helper()
	msgs := make([]kafkago.Message, 0, len(reqs))
	for i := range reqs {
		v, err := synth.AppendRecord(nil, format, &reqs[i])
		if err != nil {
			t.Fatal(err)
		}
		// A shipper stamps each record with the time it logged, as Kafka's CreateTime.
		msgs = append(msgs, kafkago.Message{Value: v, Time: reqs[i].Time})
	}
	for len(msgs) > 0 {
		n := min(len(msgs), 5000)
		e.kafka.Produce(t, topic, msgs[:n]...)
		msgs = msgs[n:]
	}
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

func httpGet(t *testing.T, url string) (int, string) {
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
// partitions, raises the four injected attacks, posts each to Slack once; SIGTERM stops
// it with exit 0 and a restart posts nothing again.
func TestRunEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch as a subprocess for a while")
	}
	e := newE2E(t, "waf-logs")
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "")
	// Live traffic: the two hours before now, so that the wall clock and event time
	// agree as they do in production, whatever today's date.
	start := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	reqs, injected, err := synth.Generate(synth.Config{Start: start, Duration: 2 * time.Hour, Rate: 5, Seed: 7, Attacks: synth.Attacks})
	if err != nil {
		t.Fatal(err)
	}
	p := startRun(t, e.config)
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs)
	posts := e.waitPosts(t, p, len(injected), 2*time.Minute)
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
	_ = context.Background
}

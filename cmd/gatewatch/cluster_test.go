package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/ingest"
)

// writeClusterConfig writes the config of replica i of a cluster: the e2e settings,
// with a data directory and an admin address of its own, and a cluster section.
func (e *e2e) writeClusterConfig(t *testing.T, i int) (config, admin string) {
	t.Helper()
	secret := writeFile(t, filepath.Join(e.dir, "token-secret"), "0123456789abcdef0123456789abcdef")
	slackToken := writeFile(t, filepath.Join(e.dir, "slack-token"), slacktest.DefaultToken)
	admin = freeAddr(t)
	config = writeFile(t, filepath.Join(e.dir, fmt.Sprintf("gatewatch-%d.yaml", i)), fmt.Sprintf(`ingest:
  kafka:
    brokers: [%s]
    group: gatewatch-e2e
    batch_wait: 50ms
    topics:
      - {name: waf-logs, format: awswaf}
  token_secret_file: %s
  dead_letter: {file: %s}
detectors:
  allowed_lateness: 30s
  new_country: {learning_period: 30m, min_events: 20}
  quiet_endpoint_spike: {learning_period: 30m}
  object_enumeration: {learning_period: 30m}
  privilege_anomaly: {learning_period: 30m}
  client_volume_spike: {learning_period: 30m}
store:
  data_dir: %s
alerting:
  runbook_base_url: https://runbooks.example.com/gatewatch
  receivers:
    - {name: soc-slack, slack: {token_file: %s, channel: "#soc-alerts", api_url: %q}}
admin:
  listen: %s
cluster:
  internal_topic_prefix: gw-internal
  partitions: 4
`, strings.Join(e.kafka.Addrs, ", "), secret, filepath.Join(e.dir, fmt.Sprintf("dlq-%d.jsonl", i)),
		filepath.Join(e.dir, fmt.Sprintf("data-%d", i)), slackToken, e.slack.URL, admin))
	return config, admin
}

// TestRunCluster: two `gatewatch run` replicas with a cluster section share one raw
// topic of four partitions, its records unkeyed round robin, so every attack is split
// over every partition. Between them they post every injected attack to Slack once
// (each incident belongs to one task, and each task to one replica), and SIGTERM stops
// both with exit 0.
func TestRunCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs two gatewatch processes")
	}
	e := newE2E(t, "waf-logs")
	var procs []*runProcess
	for i := range 2 {
		config, admin := e.writeClusterConfig(t, i)
		procs = append(procs, startRun(t, config))
		if i == 0 {
			e.admin = admin // e.metric and waitPosts read the first replica's
		}
	}
	e.kafka.WaitGroup(t, "gatewatch-e2e", "waf-logs", 2)
	e.kafka.WaitGroup(t, "gatewatch-e2e-tasks", "gw-internal-client", 2)
	reqs, injected := liveTraffic(t, 7)
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
	e.waitPosts(t, procs[0], len(injected), 5*time.Minute)
	for _, p := range procs {
		p.alive()
	}
	if e.metric(t, "gatewatch_cluster_tasks") <= 0 {
		t.Errorf("gatewatch_cluster_tasks = %v on the first replica, want its tasks", e.metric(t, "gatewatch_cluster_tasks"))
	}
	for i, p := range procs {
		if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
			t.Errorf("replica %d: SIGTERM: exit %d, want 0", i, code)
		}
	}
	if got := e.posts(); len(got) != len(injected) {
		for _, m := range got {
			t.Logf("posted: %s", m.Text)
		}
		t.Errorf("%d incidents posted, want one per injected attack (%d)", len(got), len(injected))
	}
}

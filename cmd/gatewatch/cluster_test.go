package main

import (
	"cmp"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/internal/cluster"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// writeClusterConfigs writes the configs of n replicas of a cluster: the e2e config
// (writeConfig), each with a data directory and an admin address of its own and a
// cluster section, and returns their paths and admin addresses.
func (e *e2e) writeClusterConfigs(t *testing.T, n int) (configs, admins []string) {
	t.Helper()
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "")
	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		admin := freeAddr(t)
		cfg := strings.Replace(string(base), "data_dir: "+filepath.Join(e.dir, "data"), "data_dir: "+filepath.Join(e.dir, fmt.Sprintf("data-%d", i)), 1)
		cfg = strings.Replace(cfg, "listen: "+e.admin, "listen: "+admin, 1)
		cfg += "cluster:\n  internal_topic_prefix: gw-internal\n  partitions: 4\n"
		configs = append(configs, writeFile(t, filepath.Join(e.dir, fmt.Sprintf("gatewatch-%d.yaml", i)), cfg))
		admins = append(admins, admin)
	}
	return configs, admins
}

// TestRunCluster: two `gatewatch run` replicas with a cluster section and one
// ClickHouse share one raw topic of four partitions, its records unkeyed round robin,
// so every attack is split over every partition. The first replica stops once Slack
// has heard of the first incident, and the second takes over its tasks, rebuilding
// them from their commits and the store with their open incidents. Between them they
// post every injected attack to Slack once: the new owner of a task goes on in the
// messages the first replica posted (their threads are in the store). Each exports
// every metric deploy/'s dashboard and rules use (deploy/metrics.txt), and SIGTERM
// stops each with exit 0.
func TestRunCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs two gatewatch processes")
	}
	addr := clickhousetest.Require(t)
	e := newE2E(t, "waf-logs")
	e.store = fmt.Sprintf("  clickhouse: {addr: [%s], database: %s}", addr, clickhousetest.NewDatabase(t, addr))
	configs, admins := e.writeClusterConfigs(t, 2)
	// The first replica serves the console too.
	console := freeAddr(t)
	first, err := os.ReadFile(configs[0])
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, configs[0], fmt.Sprintf("%sconsole:\n  listen: %s\n  token_file: %s\n", first, console,
		writeFile(t, filepath.Join(e.dir, "console-token"), consoleToken)))
	var procs []*runProcess
	for _, config := range configs {
		procs = append(procs, startRun(t, config))
	}
	e.kafka.WaitGroup(t, "gatewatch-e2e", "waf-logs", 2)
	e.kafka.WaitGroup(t, "gatewatch-e2e-tasks", "gw-internal-client", 2)
	reqs, injected := liveTraffic(t, 7)
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
	e.waitPosts(t, procs[0], 1, 5*time.Minute)
	for _, p := range procs {
		p.alive()
	}
	e.admin = admins[0]
	if e.metric(t, "gatewatch_cluster_tasks") <= 0 {
		t.Errorf("gatewatch_cluster_tasks = %v on the first replica, want its tasks", e.metric(t, "gatewatch_cluster_tasks"))
	}
	checkRefused(t, "http://"+console)
	if page := consolePage(t, "http://"+console+"/health"); !strings.Contains(page, "Detector health of this replica") ||
		!strings.Contains(page, "made on another replica are in force here within 5s") {
		t.Errorf("the replica's health page does not say it is this replica's:\n%s", page)
	}
	// Each replica, with its tasks, exports every metric deploy/'s dashboard and rules
	// use: those of a cluster section, and the rest, as the manifests run gatewatch;
	// the first, serving the console, those of the console too.
	checkAllDeployMetrics := func(admin string, marks ...string) {
		for _, mark := range append(marks, clusterOnly, "") {
			checkDeployMetrics(t, admin, mark)
		}
	}
	checkAllDeployMetrics(admins[0], consoleOnly)
	// The first replica leaves while attacks are under way: the second takes over its
	// tasks with their open incidents, and goes on in their Slack messages.
	if code := procs[0].stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Errorf("first replica: SIGTERM: exit %d, want 0", code)
	}
	e.admin = admins[1]
	e.waitPosts(t, procs[1], len(injected), 5*time.Minute)
	e.waitClusterDrained(t, procs[1:], admins[1:], "waf-logs", "gw-internal")
	checkAllDeployMetrics(admins[1])
	if code := procs[1].stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Errorf("second replica: SIGTERM: exit %d, want 0", code)
	}
	e.onePostEach(t, len(injected))
}

// onePostEach checks that Slack has one top-level message per incident, for n
// incidents.
func (e *e2e) onePostEach(t *testing.T, n int) {
	t.Helper()
	got := e.posts()
	ids := map[string]int{}
	for _, m := range got {
		ids[string(m.Metadata)]++
	}
	if len(got) != n || len(ids) != len(got) {
		for _, m := range got {
			t.Logf("posted: %s %s", m.Metadata, m.Text)
		}
		t.Errorf("%d messages posted for %d incidents, want one per injected attack (%d)", len(got), len(ids), n)
	}
}

// TestRunClusterKill: a replica dies as kill -9 kills it, and is restarted over its own
// data directory, as a supervisor would, beside a second replica; between them every
// injected attack is posted to Slack once. It dies:
//   - beside the second replica, once Slack has heard of the first incident, with
//     attacks under way: the second takes its partitions and tasks over from their
//     commits while it is gone;
//   - alone, at each step of the hop where work is done and not committed
//     (cluster.Failpoint): stage one having written a batch's internal records, and a
//     task having put alerts into the outbox. What was written is written again and
//     dropped as copies; what was alerted is raised again under the same ids, and goes
//     on in the messages already posted.
func TestRunClusterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs three gatewatch processes")
	}
	addr := clickhousetest.Require(t)
	for _, kill := range []string{
		"", // beside the other, after a post
		cluster.StepWritten + ":3",
		cluster.StepAlerted + ":1",
	} {
		// The names go into temporary paths, which the configs hold in YAML flow style.
		name, _, _ := strings.Cut(kill, ":")
		t.Run(cmp.Or(name, "after-a-post"), func(t *testing.T) { killReplica(t, addr, kill, 11) })
	}
}

// TestKillProperty is TestRunClusterKill's kill at a step, over several seeds: odd
// seeds at stage one's step, even ones at a task's, each drawing the hit the replica
// dies at and the traffic. It takes about a
// minute a seed, so it runs only when GATEWATCH_PROPERTY is set (make property):
// GATEWATCH_PROPERTY_SEEDS seeds from 1 (4 unless set), or GATEWATCH_PROPERTY_SEED
// alone.
func TestKillProperty(t *testing.T) {
	if os.Getenv("GATEWATCH_PROPERTY") == "" {
		t.Skip("set GATEWATCH_PROPERTY=1 (make property) to run the kills")
	}
	addr := clickhousetest.Require(t)
	first, seeds := uint64(1), uint64(4)
	number := func(env string) uint64 {
		n, err := strconv.ParseUint(os.Getenv(env), 10, 64)
		if err != nil || n == 0 {
			t.Fatalf("%s=%q: want a positive number", env, os.Getenv(env))
		}
		return n
	}
	if os.Getenv("GATEWATCH_PROPERTY_SEEDS") != "" {
		seeds = number("GATEWATCH_PROPERTY_SEEDS")
	}
	if os.Getenv("GATEWATCH_PROPERTY_SEED") != "" {
		first, seeds = number("GATEWATCH_PROPERTY_SEED"), 1
	}
	for seed := first; seed < first+seeds; seed++ {
		// Odd seeds kill at stage one's step, even ones at a task's; the hit is drawn.
		r := rand.New(rand.NewPCG(seed, 0x6b696c6c))
		kill := fmt.Sprintf("%s:%d", cluster.StepWritten, 1+r.IntN(12))
		if seed%2 == 0 {
			kill = fmt.Sprintf("%s:%d", cluster.StepAlerted, 1+r.IntN(4))
		}
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Logf("seed %d: GATEWATCH_TEST_KILL=%s; run it alone: GATEWATCH_PROPERTY=1 GATEWATCH_PROPERTY_SEED=%d "+
				"go test -race -run '^TestKillProperty$' ./cmd/gatewatch", seed, kill, seed)
			killReplica(t, addr, kill, 100+seed)
		})
	}
}

// killReplica runs a cluster over the traffic of seed in which the first replica dies
// as kill -9 kills it and is restarted over its own data directory, as a supervisor
// would, beside a second replica, and checks that between them every injected attack
// is posted to Slack once. With kill empty, the first dies beside the second once
// Slack has heard of the first incident; else it runs alone and kills itself at the
// step and hit kill names (GATEWATCH_TEST_KILL).
func killReplica(t *testing.T, addr, kill string, seed uint64) {
	e := newE2E(t, "waf-logs")
	e.store = fmt.Sprintf("  clickhouse: {addr: [%s], database: %s}", addr, clickhousetest.NewDatabase(t, addr))
	configs, admins := e.writeClusterConfigs(t, 2)
	reqs, injected := liveTraffic(t, seed)
	var second *runProcess
	if kill == "" {
		first := startRun(t, configs[0])
		second = startRun(t, configs[1])
		e.kafka.WaitGroup(t, "gatewatch-e2e", "waf-logs", 2)
		e.kafka.WaitGroup(t, "gatewatch-e2e-tasks", "gw-internal-client", 2)
		e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
		e.waitPosts(t, first, 1, 5*time.Minute)
		first.stop(syscall.SIGKILL, 10*time.Second)
	} else {
		first := startRun(t, configs[0], "GATEWATCH_TEST_KILL="+kill)
		e.kafka.WaitGroup(t, "gatewatch-e2e", "waf-logs", 1)
		e.kafka.WaitGroup(t, "gatewatch-e2e-tasks", "gw-internal-client", 1)
		e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
		first.wait(syscall.SIGKILL, 3*time.Minute)
		if step, _, _ := strings.Cut(kill, ":"); !strings.Contains(first.log(), "killed at "+step) {
			t.Fatalf("the first replica exited, not at %s:\n%s", kill, first.log())
		}
		second = startRun(t, configs[1])
	}
	restarted := startRun(t, configs[0])
	e.admin = admins[1]
	e.waitPosts(t, second, len(injected), 5*time.Minute)
	e.waitClusterDrained(t, []*runProcess{restarted, second}, admins, "waf-logs", "gw-internal")
	time.Sleep(2 * time.Second) // a second message for an incident would come now
	for _, p := range []*runProcess{restarted, second} {
		if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
			t.Errorf("SIGTERM: exit %d, want 0", code)
		}
	}
	e.onePostEach(t, len(injected))
}

// waitClusterDrained waits until the replicas (procs, with their admin addresses) have
// read everything: stage one has committed the raw topic to its end, the tasks' engines
// have seen their internal partitions to their ends (and their lag metrics say so), and
// the outboxes are empty, twice in a row a poll apart.
func (e *e2e) waitClusterDrained(t *testing.T, procs []*runProcess, admins []string, raw, prefix string) {
	t.Helper()
	defer func(admin string) { e.admin = admin }(e.admin)
	sum := func(name string) float64 {
		total := 0.0
		for _, a := range admins {
			e.admin = a
			total += e.metric(t, name)
		}
		return total
	}
	drained := func() bool {
		for part, end := range e.kafka.EndOffsets(t, raw) {
			if e.kafka.Committed(t, "gatewatch-e2e", raw)[part] != end {
				return false
			}
		}
		ends := internalEnds(t, e.kafka, prefix)
		return ends > 0 && sum("gatewatch_cluster_task_offset") == ends && sum("gatewatch_cluster_task_lag_records") == 0 &&
			sum("gatewatch_alerting_outbox_depth") == 0
	}
	deadline := time.Now().Add(3 * time.Minute)
	for streak := 0; streak < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("the replicas did not read everything in time:\n%s", procs[0].log())
		}
		for _, p := range procs {
			p.alive()
		}
		if drained() {
			streak++
		} else {
			streak = 0
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// consolePage returns the console page at url, read with the console token.
func consolePage(t *testing.T, url string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+consoleToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
	}
	return string(b)
}

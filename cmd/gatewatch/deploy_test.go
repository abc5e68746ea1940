package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/geoiptest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/internal/testcert"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// deployDir is the repository's deploy/ directory, seen from this package.
const deployDir = "../../deploy"

// TestDeployCompose is `docker compose up` of deploy/compose without Docker (no engine
// runs here): the compose config, its sample secrets and its traffic script, with the
// services' addresses pointed at a Kafka-protocol broker, a clickhouse-server and kcat
// standing in for Kafka's console producer. gatewatch run raises an alert for each
// attack the traffic carries, once, and delivers it to the alerts topic; the live
// traffic after the history raises nothing. Then every metric name deploy/'s dashboard
// and rules use (deploy/metrics.txt) is one the running instance exports.
func TestDeployCompose(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch and the compose traffic script as subprocesses")
	}
	chAddr := clickhousetest.Require(t) // some store_* metrics (spill, baselines) exist with ClickHouse only
	db := clickhousetest.NewDatabase(t, chAddr)
	kcat := kafkatest.Require(t, "kcat")
	// The topics as compose.yaml's topics service creates them: one partition each.
	k := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf-logs", "gatewatch-dlq", "gatewatch-alerts"}, Partitions: 1})
	dir := t.TempDir()
	admin := freeAddr(t)

	secrets := filepath.Join(dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"token-hmac", "clickhouse-password"} {
		b, err := os.ReadFile(filepath.Join(deployDir, "compose", "secrets", name))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(secrets, name), string(b))
	}
	compose, err := os.ReadFile(filepath.Join(deployDir, "compose", "gatewatch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The test's clickhouse-server (18.16) has no users of its own: its default user, no password.
	config := strings.NewReplacer(
		"kafka:9092", strings.Join(k.Addrs, ", "),
		"clickhouse:9000", chAddr,
		"database: gatewatch", "database: "+db,
		"    username: gatewatch\n", "",
		"    password_file: /run/secrets/clickhouse-password\n", "",
		"/run/secrets/", secrets+"/",
		"/var/lib/gatewatch", filepath.Join(dir, "data"),
		"0.0.0.0:9464", admin,
	).Replace(string(compose))
	for _, left := range []string{"kafka:9092", "clickhouse:9000", "username:", "0.0.0.0:9464"} {
		if strings.Contains(config, left) {
			t.Fatalf("deploy/compose/gatewatch.yaml changed: %q is left after pointing it at the test's servers", left)
		}
	}
	configPath := writeFile(t, filepath.Join(dir, "gatewatch.yaml"), config)

	// As compose orders it: the history whole, then gatewatch run, then live traffic.
	bin := trafficShims(t, dir, kcat)
	history := startTraffic(t, bin, k.Addrs, "history")
	if err := history.wait(2 * time.Minute); err != nil {
		t.Fatalf("traffic.sh history: %v\n%s", err, history.output.String())
	}
	m := generatedRE.FindStringSubmatch(history.output.String())
	if m == nil {
		t.Fatalf("traffic.sh history generated nothing:\n%s", history.output.String())
	}
	backlog, _ := strconv.Atoi(m[1])
	p := startRun(t, configPath)
	e := &e2e{admin: admin}
	startTraffic(t, bin, k.Addrs, "live")

	// One incident per attack reaches the alerts topic, with nothing else.
	want := slices.Sorted(slices.Values(synth.Attacks))
	waitIncidents(t, p, k, len(want), 5*time.Minute)
	// The live traffic after the history goes through and raises nothing.
	e.waitMetric(t, p, float64(backlog+1), 2*time.Minute, "gatewatch_ingest_events_total")
	time.Sleep(2 * time.Second) // an alert nobody expects would come now
	incidents := waitIncidents(t, p, k, len(want), time.Minute)
	var got []string
	for _, d := range incidents {
		got = append(got, d)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("incidents on the alerts topic by detector %v, want one per injected attack %v", got, want)
	}

	// Every metric deploy/ uses is exported, but those of a cluster section: none of them
	// is, or GatewatchClusterNoTasks would fire on every deployment without one.
	used := checkDeployMetrics(t, admin, "")
	families := scrape(t, admin)
	for _, name := range deployMetrics(t, clusterOnly) {
		if exported(families, name) {
			t.Errorf("deploy/metrics.txt: gatewatch run without a cluster section exports %s, marked %s", name, clusterOnly)
		}
	}
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	t.Logf("%d history records, incidents %v, %d metrics checked", backlog, got, used)
}

// clusterOnly marks in deploy/metrics.txt the metrics only a replica with a cluster
// section exports.
const clusterOnly = "cluster-only"

// consoleOnly marks in deploy/metrics.txt the metrics only a run serving the console
// (console.listen) exports.
const consoleOnly = "console-only"

// deployMetrics reads deploy/metrics.txt: the names marked mark, "" for those every
// gatewatch run exports; never the external ones.
func deployMetrics(t *testing.T, mark string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "metrics.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for l := range strings.SplitSeq(string(b), "\n") {
		name, m, _ := strings.Cut(l, "#")
		if name = strings.TrimSpace(name); name != "" && strings.TrimSpace(m) == mark {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		t.Fatalf("deploy/metrics.txt names no metric marked %q", mark)
	}
	return out
}

// checkDeployMetrics checks that the gatewatch run at the admin address admin exports
// every metric deploy/metrics.txt marks mark, and returns how many it checked.
func checkDeployMetrics(t *testing.T, admin, mark string) int {
	t.Helper()
	families := scrape(t, admin)
	if families == nil {
		t.Fatalf("%s/metrics does not answer", admin)
	}
	names := deployMetrics(t, mark)
	for _, name := range names {
		if !exported(families, name) {
			t.Errorf("deploy/metrics.txt: the gatewatch run at %s does not export %s (the dashboard or a rule uses it)", admin, name)
		}
	}
	return len(names)
}

// exported reports whether name is a family of the scrape, or a histogram's or a
// summary's series (_bucket, _sum, _count) of one.
func exported(families map[string]*dto.MetricFamily, name string) bool {
	if _, ok := families[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if f, ok := families[base]; ok && (f.GetType() == dto.MetricType_HISTOGRAM || (suffix != "_bucket" && f.GetType() == dto.MetricType_SUMMARY)) {
			return true
		}
	}
	return false
}

// trafficProcess is deploy/compose/traffic.sh running with stand-ins for the container's
// gatewatch and Kafka console producer.
type trafficProcess struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // how cmd ended, once done is closed
	output lockedBuffer
}

// trafficShims writes stand-ins for what the traffic image has: gatewatch on the PATH
// (this test binary as gatewatch) and Kafka's console producer (spoken by kcat). It
// returns their directory.
func trafficShims(t *testing.T, dir, kcat string) string {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o700); err != nil {
		t.Fatal(err)
	}
	shim := func(name, body string) {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	shim("gatewatch", fmt.Sprintf("GATEWATCH_TEST_MAIN=1 exec %q \"$@\"\n", os.Args[0]))
	shim("kafka-console-producer.sh", fmt.Sprintf(`while [ $# -gt 0 ]; do
	case $1 in --bootstrap-server) b=$2; shift ;; --topic) topic=$2; shift ;; esac
	shift
done
exec %q -P -b "$b" -t "$topic"
`, kcat))
	return bin
}

// startTraffic runs deploy/compose/traffic.sh with mode (history or live), with the
// stand-ins in bin; the test's end stops it and what it started.
func startTraffic(t *testing.T, bin string, brokers []string, mode string) *trafficProcess {
	t.Helper()
	p := &trafficProcess{done: make(chan struct{})}
	p.cmd = exec.Command("sh", filepath.Join(deployDir, "compose", "traffic.sh"), mode)
	p.cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "KAFKA_BIN="+bin,
		"BROKER="+strings.Join(brokers, ","), "TOPIC=waf-logs")
	p.cmd.Stdout, p.cmd.Stderr = &p.output, &p.output
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // the script, its loop and its pipe: one group to stop
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("traffic.sh %s's output:\n%s", mode, p.output.String())
		}
	})
	return p
}

// wait waits for the script to end and returns how it ended.
func (p *trafficProcess) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("still running after %s", timeout)
	}
}

var generatedRE = regexp.MustCompile(`generate: (\d+) awswaf records`)

// waitIncidents waits until the alerts topic holds at least n incidents and returns the
// detector of each incident id.
func waitIncidents(t *testing.T, p *runProcess, k *kafkatest.Cluster, n int, timeout time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := map[string]string{}
		for _, m := range k.ReadAll(t, "gatewatch-alerts") {
			var a struct {
				ID       string `json:"id"`
				Detector string `json:"detector"`
			}
			sc := bufio.NewScanner(strings.NewReader(string(m.Value)))
			for sc.Scan() {
				if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
					t.Fatalf("the alerts topic holds %q: %v", sc.Bytes(), err)
				}
				got[a.ID] = a.Detector
			}
		}
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) < n {
				t.Fatalf("%d incidents on the alerts topic after %s, want %d: %v", len(got), timeout, n, got)
			}
			return got
		}
		p.alive()
		time.Sleep(500 * time.Millisecond)
	}
}

// TestDeployExampleConfig: deploy/gatewatch.example.yaml passes check-config, with a
// sample file wherever it names a secret, a CA certificate or the GeoIP database.
func TestDeployExampleConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir, "gatewatch.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := testcert.WriteFile(t, dir, "ca.pem", testcert.NewCA(t).CertPEM())
	db := geoiptest.File(t, map[string]string{"192.0.2.0/24": "NL"})
	config := regexp.MustCompile(`/run/secrets/[A-Za-z0-9._-]+|/etc/gatewatch/[A-Za-z0-9._-]+\.pem|/[A-Za-z0-9._/-]+\.mmdb`).
		ReplaceAllStringFunc(string(b), func(path string) string {
			switch {
			case strings.HasSuffix(path, ".pem"):
				return ca
			case strings.HasSuffix(path, ".mmdb"):
				return db
			}
			return testcert.WriteFile(t, dir, filepath.Base(path), []byte("example-secret-"+filepath.Base(path)+"\n"))
		})
	path := writeFile(t, filepath.Join(dir, "gatewatch.example.yaml"), config)
	if _, errOut, code := runCmd(t, "", "check-config", path); code != 0 || strings.Contains(errOut, "warning") {
		t.Errorf("check-config deploy/gatewatch.example.yaml: exit %d\n%s", code, errOut)
	}
}

// BenchmarkRunMemory measures the part of deploy/'s memory requests and limits that
// does not grow with the keys tracked (README, "Sizing"): the peak resident set (VmHWM)
// of `gatewatch run`, a process of its own with the defaults (store.clickhouse's
// buffer_size among them), no GOMEMLIMIT and ClickHouse as the store, as in
// deploy/kubernetes, reading a backlog of 400,000 AWS WAF records as fast as it can.
// It does so twice, with the records from 1,000 clients and from 100,000, so the keys'
// share shows; the keys' own cost is the detectors' Memory benchmarks' bytes/key.
//
//	go test ./cmd/gatewatch -run '^$' -bench RunMemory -benchtime 1x -count 3
//
// Without -race: the race detector's shadow memory would be measured too.
func BenchmarkRunMemory(b *testing.B) {
	chAddr := clickhousetest.Require(b)
	for _, tc := range []struct {
		clients int
		cluster bool
	}{{1_000, false}, {100_000, false}, {100_000, true}} {
		name := fmt.Sprintf("clients=%d", tc.clients)
		if tc.cluster {
			name = "cluster/" + name
		}
		b.Run(name, func(b *testing.B) {
			var keys, peak float64
			for b.Loop() {
				keys, peak = runMemory(b, chAddr, tc.clients, 400_000, tc.cluster)
			}
			b.ReportMetric(peak, "MiB-peak-RSS")
			b.ReportMetric(keys, "tracked-keys")
		})
	}
}

// runMemory runs gatewatch run over events records from clients clients in half an hour
// of event time, and returns the keys the detectors track once it has read them and the
// peak resident set of the process, in MiB. With cluster, the one replica runs both
// stages of scale-out with deploy/kubernetes' 32 internal partitions (128 tasks).
func runMemory(b *testing.B, chAddr string, clients, events int, cluster bool) (keys, peakMiB float64) {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	reqs, _, err := synth.Generate(synth.Config{Duration: 30 * time.Minute, Rate: float64(events) / 1800, Seed: 7, Clients: clients})
	if err != nil {
		b.Fatal(err)
	}
	k := kafkatest.Start(b, kafkatest.Options{Topics: []string{"waf-logs"}, Partitions: 4})
	e := &e2e{partitions: 4, kafka: k, dir: b.TempDir(), admin: freeAddr(b)}
	for lo := 0; lo < len(reqs); lo += 5000 {
		msgs := make([]kafkago.Message, 0, 5000)
		for i := lo; i < min(lo+5000, len(reqs)); i++ {
			v, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &reqs[i])
			if err != nil {
				b.Fatal(err)
			}
			msgs = append(msgs, kafkago.Message{Value: v, Time: reqs[i].Time})
		}
		k.Produce(b, "waf-logs", msgs...)
	}
	clusterSection := ""
	if cluster {
		clusterSection = "cluster: {internal_topic_prefix: gw-memory, partitions: 32}\n"
	}
	config := writeFile(b, filepath.Join(e.dir, "gatewatch.yaml"), fmt.Sprintf(`ingest:
  kafka: {brokers: [%s], group: memory, topics: [{name: waf-logs, format: awswaf}]}
  token_secret_file: %s
  dead_letter: {file: %s}
store:
  data_dir: %s
  clickhouse: {addr: [%s], database: %s}
alerting:
  receivers: [{name: archive, file: {path: %s}}]
  routes: [{receivers: [archive]}]
admin:
  listen: %s
%s`, strings.Join(k.Addrs, ", "), writeFile(b, filepath.Join(e.dir, "secret"), demoSecret), filepath.Join(e.dir, "dlq.jsonl"),
		filepath.Join(e.dir, "data"), chAddr, clickhousetest.NewDatabase(b, chAddr), filepath.Join(e.dir, "alerts.jsonl"), e.admin, clusterSection))

	cmd := exec.Command(os.Args[0], "run", "--config", config, "--log-level", "warn")
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GOMEMLIMIT=") }), "GATEWATCH_TEST_MAIN=1")
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	for e.metric(b, "gatewatch_ingest_events_total") < float64(len(reqs)) {
		select {
		case err := <-done:
			done <- err
			b.Fatalf("gatewatch run exited: %v\n%s", err, stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	for cluster && !tasksDone(b, k, e, "gw-memory") {
		select {
		case err := <-done:
			done <- err
			b.Fatalf("gatewatch run exited: %v\n%s", err, stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	keys = e.metric(b, "gatewatch_detectors_tracked_keys")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Skipf("no /proc to read the resident set from: %v", err)
	}
	var kb float64
	for l := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err = strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
		}
	}
	if kb == 0 || err != nil {
		b.Fatalf("/proc/%d/status has no VmHWM (%v):\n%s", cmd.Process.Pid, err, status)
	}
	b.Logf("%d clients, %d records: %.0f keys tracked, peak RSS %.0f MiB", clients, len(reqs), keys, kb/1024)
	return keys, kb / 1024
}

// tasksDone reports whether the tasks of the replica whose admin address is e.admin
// have seen their internal partitions (topics prefix-*) to their ends.
func tasksDone(tb testing.TB, k *kafkatest.Cluster, e *e2e, prefix string) bool {
	ends := internalEnds(tb, k, prefix)
	return ends > 0 && e.metric(tb, "gatewatch_cluster_task_offset") == ends
}

// internalEnds returns the sum of the end offsets of the internal topics prefix-*; a
// topic the replica has not created yet counts nothing.
func internalEnds(tb testing.TB, k *kafkatest.Cluster, prefix string) float64 {
	var ends float64
	for _, kind := range []string{"client", "token", "route", "ip"} {
		if !k.HasTopic(tb, prefix+"-"+kind) {
			continue
		}
		for _, end := range k.EndOffsets(tb, prefix+"-"+kind) {
			ends += float64(end)
		}
	}
	return ends
}

package cluster

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/internal/promtest"
)

// TestPurgerDeletesBelowCommits: against brokers that speak each version of
// DeleteRecords, over three brokers (the partitions' leaders differ, and each gets the
// request for its partitions), a purge deletes each committed partition's records below its
// commit and no further; a partition with no commit keeps its records; a commit below
// the partition's first offset deletes nothing and is no error.
func TestPurgerDeletesBelowCommits(t *testing.T) {
	for _, version := range []int16{0, 1, 2} {
		t.Run("v"+strconv.Itoa(int(version)), func(t *testing.T) {
			versions := kversion.Stable()
			versions.SetMaxKeyVersion(int16(kmsg.DeleteRecords), version)
			c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"a", "b"}, Partitions: 4, Brokers: 3,
				Kfake: []kfake.Opt{kfake.MaxVersions(versions)}})
			// The partitions to purge, each led by another broker (before the
			// helpers' client reads the metadata).
			for node, tp := range []topicPartition{{"a", 0}, {"a", 1}, {"b", 3}} {
				if err := c.Fake.MoveTopicPartition(tp.topic, int32(tp.partition), int32(node)); err != nil {
					t.Fatal(err)
				}
			}
			for _, topic := range []string{"a", "b"} {
				for p := range 4 {
					c.ProduceTo(t, topic, p, make([]kafkago.Message, 10)...)
				}
			}
			// Each request as the brokers saw it: its version, and how many leaders got one.
			var seen []int16
			var mu sync.Mutex
			c.Fake.ControlKey(int16(kmsg.DeleteRecords), func(req kmsg.Request) (kmsg.Response, error, bool) {
				c.Fake.KeepControl()
				mu.Lock()
				seen = append(seen, req.GetVersion())
				mu.Unlock()
				return nil, nil, false
			})
			reg := prometheus.NewPedanticRegistry()
			p := testPurger(c, reg)
			p.committed("a", 0, 6)
			p.committed("a", 1, 10)
			p.committed("a", 2, 0)
			p.committed("b", 3, 3)
			if err := p.purge(context.Background()); err != nil {
				t.Fatal(err)
			}
			checkStarts(t, c, "a", map[int]int64{0: 6, 1: 10, 2: 0, 3: 0})
			checkStarts(t, c, "b", map[int]int64{0: 0, 1: 0, 2: 0, 3: 3})
			mu.Lock()
			if len(seen) != 3 || slices.ContainsFunc(seen, func(v int16) bool { return v != version }) {
				t.Errorf("the brokers got DeleteRecords requests of versions %v, want one for each of the 3 leaders, each v%d", seen, version)
			}
			mu.Unlock()
			if got := promtest.Value(t, reg, "gatewatch_cluster_purged_records_total", "topic", "a"); got != 16 {
				t.Errorf("purged records of a = %v, want 16", got)
			}
			if len(p.want) != 0 {
				t.Errorf("after a purge that worked, still to purge: %v", p.want)
			}

			p.committed("a", 0, 4) // below what is already deleted
			p.committed("a", 1, 10)
			p.committed("b", 3, 7)
			if err := p.purge(context.Background()); err != nil {
				t.Fatal(err)
			}
			checkStarts(t, c, "a", map[int]int64{0: 6, 1: 10, 2: 0, 3: 0})
			checkStarts(t, c, "b", map[int]int64{0: 0, 1: 0, 2: 0, 3: 7})
			if got := promtest.Value(t, reg, "gatewatch_cluster_purged_records_total", "topic", "b"); got != 7 {
				t.Errorf("purged records of b = %v, want 7", got)
			}
		})
	}
}

// TestPurgerFailure: a purge the broker refuses returns the broker's error, and the
// partition is purged the next time, once the broker allows it.
func TestPurgerFailure(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"a"}, Partitions: 2})
	for p := range 2 {
		c.ProduceTo(t, "a", p, make([]kafkago.Message, 5)...)
	}
	var deny atomic.Bool
	deny.Store(true)
	denyDeletes(c.Fake, &deny)
	p := testPurger(c, prometheus.NewPedanticRegistry())
	p.committed("a", 1, 4)
	err := p.purge(context.Background())
	if !errors.Is(err, kafkago.TopicAuthorizationFailed) || !strings.Contains(err.Error(), "a/1 below 4") {
		t.Errorf("a purge the broker refuses: %v, want the broker's error naming the partition", err)
	}
	checkStarts(t, c, "a", map[int]int64{0: 0, 1: 0})
	deny.Store(false)
	if err := p.purge(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkStarts(t, c, "a", map[int]int64{0: 0, 1: 4})
}

// TestReplicaPurges: a replica purges its tasks' partitions below their commits, never
// above; while the brokers refuse the deletion the replica runs on, counts the failures,
// and deletes nothing; then each partition comes to start at its commit, and kcat reading
// a partition from the beginning gets its committed offset first.
func TestReplicaPurges(t *testing.T) {
	reqs, injected, raw := traffic(t, 7)
	cfg := Config{InternalTopicPrefix: "gwi-purge", Partitions: internalPartitions()}
	var internal []string
	for k := range numKinds {
		internal = append(internal, cfg.Topic(k))
	}
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf-purge"}, Partitions: rawPartitions,
		Kfake: []kfake.Opt{kfake.SeedTopics(int32(cfg.Partitions), internal...)}})
	var deny atomic.Bool
	deny.Store(true)
	denyDeletes(c.Fake, &deny)

	reg := prometheus.NewRegistry()
	stores := sharedStores()
	r, err := New(cfg, stores.options(t, c, "gw-purge", "waf-purge", newAlertSet(), reg, "replica"))
	if err != nil {
		t.Fatal(err)
	}
	r.p.every = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- errors.Join(r.Run(ctx), r.Close()) }()
	c.WaitGroup(t, "gw-purge", "waf-purge", 1)
	c.WaitGroup(t, "gw-purge"+TasksGroupSuffix, cfg.Topic(Client), 1)
	produceRaw(t, c, "waf-purge", raw, spread(reqs, injected))

	// check reads the first offsets, then the commits (which only rise): a first offset
	// above the commit read after it was deleted above a commit. It returns both.
	check := func() (starts, commits map[string]map[int]int64) {
		starts, commits = map[string]map[int]int64{}, map[string]map[int]int64{}
		for _, topic := range internal {
			starts[topic] = c.StartOffsets(t, topic)
		}
		for _, topic := range internal {
			commits[topic] = c.Committed(t, "gw-purge"+TasksGroupSuffix, topic)
			for p, start := range starts[topic] {
				if commit, ok := commits[topic][p]; start > 0 && (!ok || start > commit) {
					t.Fatalf("%s/%d starts at %d, its commit is %d (committed: %v)", topic, p, start, commit, ok)
				}
			}
		}
		return starts, commits
	}
	running := func(what string) {
		select {
		case err := <-done:
			t.Fatalf("the replica stopped %s: %v", what, err)
		default:
		}
	}
	poll := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for !ok() {
			running(what)
			if time.Now().After(deadline) {
				t.Fatalf("not done after 3 minutes: %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	poll("purges refused while tasks commit", func() bool {
		starts, commits := check()
		for _, topic := range internal {
			for p, start := range starts[topic] {
				if start != 0 {
					t.Fatalf("%s/%d starts at %d while the brokers refuse deletions", topic, p, start)
				}
			}
		}
		return promtest.Sum(t, "gatewatch_cluster_purge_failures_total", reg) >= 3 && len(commits[internal[0]]) > 0
	})
	deny.Store(false)

	poll("every raw record read, every internal record seen, every commit purged to", func() bool {
		starts, commits := check()
		if !maps.Equal(c.Committed(t, "gw-purge", "waf-purge"), c.EndOffsets(t, "waf-purge")) ||
			promtest.Sum(t, "gatewatch_cluster_task_offset", reg) != internalEnds(t, c, cfg) {
			return false
		}
		for _, topic := range internal {
			if len(commits[topic]) != cfg.Partitions || !maps.Equal(starts[topic], commits[topic]) {
				return false
			}
		}
		return true
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("replica: %v", err)
	}
	// Stopped, nothing moves: the partitions start at or below their commits (the
	// tasks commit once more as they stop, after the last purge), and the records
	// counted as purged are those before the first offsets.
	starts, _ := check()
	purged := int64(0)
	for _, topic := range internal {
		purged += sum(starts[topic])
	}
	if got := promtest.Sum(t, "gatewatch_cluster_purged_records_total", reg); got != float64(purged) || purged == 0 {
		t.Errorf("gatewatch_cluster_purged_records_total = %v, the partitions' first offsets add up to %d", got, purged)
	}
	t.Logf("%d of %v internal records purged below the commits; %v purges failed while refused",
		purged, internalEnds(t, c, cfg), promtest.Sum(t, "gatewatch_cluster_purge_failures_total", reg))
	kcatStartsAt(t, c, cfg.Topic(Client), starts[cfg.Topic(Client)])
}

// kcatStartsAt: kcat, an independent client, reading each partition of topic from the
// beginning gets the offset starts says (the commit it was purged to) first, and every
// record from there on.
func kcatStartsAt(t *testing.T, c *kafkatest.Cluster, topic string, starts map[int]int64) {
	t.Helper()
	bin := kafkatest.Require(t, "kcat")
	ends := c.EndOffsets(t, topic)
	for p, start := range starts {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, bin, "-b", c.Addrs[0], "-t", topic, "-p", strconv.Itoa(p), "-C", "-e", "-o", "beginning", "-q", "-f", "%o\n").Output()
		cancel()
		if err != nil {
			t.Fatalf("kcat -t %s -p %d: %v", topic, p, err)
		}
		offsets := strings.Fields(string(out))
		if int64(len(offsets)) != ends[p]-start {
			t.Errorf("kcat read %d records of %s/%d, want %d (from the commit purged to, %d, to the end, %d)", len(offsets), topic, p, ends[p]-start, start, ends[p])
			continue
		}
		if len(offsets) > 0 && offsets[0] != strconv.FormatInt(start, 10) {
			t.Errorf("kcat read %s/%d from the beginning starting at offset %s, want the commit purged to, %d", topic, p, offsets[0], start)
		}
	}
}

// internalEnds returns the sum of the end offsets of cfg's internal topics.
func internalEnds(t testing.TB, c *kafkatest.Cluster, cfg Config) float64 {
	n := int64(0)
	for k := range numKinds {
		n += sum(c.EndOffsets(t, cfg.Topic(k)))
	}
	return float64(n)
}

// testPurger is a purger over c's brokers.
func testPurger(c *kafkatest.Cluster, reg prometheus.Registerer) *purger {
	client := &kafkago.Client{Addr: kafkago.TCP(c.Addrs...), Timeout: 10 * time.Second, Transport: &kafkago.Transport{}}
	return newPurger(client, slog.New(slog.DiscardHandler), newMetrics(reg))
}

// denyDeletes makes the brokers refuse DeleteRecords, as without the ACL, while deny is
// set.
func denyDeletes(fake *kfake.Cluster, deny *atomic.Bool) {
	fake.ControlKey(int16(kmsg.DeleteRecords), func(req kmsg.Request) (kmsg.Response, error, bool) {
		fake.KeepControl()
		if !deny.Load() {
			return nil, nil, false
		}
		dr := req.(*kmsg.DeleteRecordsRequest)
		resp := dr.ResponseKind().(*kmsg.DeleteRecordsResponse)
		for _, rt := range dr.Topics {
			st := kmsg.NewDeleteRecordsResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewDeleteRecordsResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.LowWatermark = -1
				sp.ErrorCode = kerr.TopicAuthorizationFailed.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
}

// checkStarts fails the test unless topic's partitions start at want.
func checkStarts(t *testing.T, c *kafkatest.Cluster, topic string, want map[int]int64) {
	t.Helper()
	if got := c.StartOffsets(t, topic); !maps.Equal(got, want) {
		t.Errorf("first offsets of %s = %v, want %v", topic, got, want)
	}
}

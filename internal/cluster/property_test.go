package cluster

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
)

// maxReplicas bounds the replicas a random schedule runs at once: every one must be
// assigned a task (there are internalPartitions of each kind), and each costs the two
// cores of a test machine a broker client and its engines.
const maxReplicas = 3

// TestScheduleProperty: over several synthetic seeds, replicas that join and leave at
// points drawn from the seed raise exactly the alerts one replica raises over the same
// traffic, ids and bytes. It takes minutes a seed, so it runs only when
// GATEWATCH_PROPERTY is set (make property): GATEWATCH_PROPERTY_SEEDS seeds from 1 (4
// unless set), or GATEWATCH_PROPERTY_SEED alone, each with
// GATEWATCH_PROPERTY_SCHEDULES schedules (3 unless set). A failure prints the command
// that runs its case alone.
func TestScheduleProperty(t *testing.T) {
	if os.Getenv("GATEWATCH_PROPERTY") == "" {
		t.Skip("set GATEWATCH_PROPERTY=1 (make property) to run the schedules")
	}
	first, seeds := uint64(1), propertyCount(t, "GATEWATCH_PROPERTY_SEEDS", 4)
	if v := os.Getenv("GATEWATCH_PROPERTY_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("GATEWATCH_PROPERTY_SEED=%q: %v", v, err)
		}
		first, seeds = n, 1
	}
	schedules := propertyCount(t, "GATEWATCH_PROPERTY_SCHEDULES", 3)
	for seed := first; seed < first+uint64(seeds); seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			reqs, injected, raw := traffic(t, seed)
			parts := spread(reqs, injected)
			names := []string{"one"}
			for k := range schedules {
				names = append(names, "s"+strconv.Itoa(k))
			}
			c := startKafka(t, names)
			one := runReplicas(t, c, "one", fixed(1), raw, parts)
			for k := range schedules {
				s := randomSchedule(seed, k, len(raw))
				t.Run(fmt.Sprintf("schedule=%d", k), func(t *testing.T) {
					t.Logf("seed %d, schedule %d: %v", seed, k, s)
					got := runReplicas(t, c, names[k+1], s, raw, parts)
					if !slices.Equal(one, got) {
						t.Errorf("seed %d, schedule %d (%v): the replicas raised alerts one did not, or not those it did:\n%s"+
							"run it alone: GATEWATCH_PROPERTY=1 GATEWATCH_PROPERTY_SEED=%d go test -race -run '^TestScheduleProperty$/^seed=%d$/^schedule=%d$' ./internal/cluster",
							seed, k, s, diffSets(got, one), seed, seed, k)
					}
				})
			}
		})
	}
}

// randomSchedule draws the k-th schedule of seed over records raw records: one to
// maxReplicas replicas at the start, then one to three changes at distinct points
// between a tenth and nine tenths of the traffic, each to another count, stopping
// replicas drawn at random.
func randomSchedule(seed uint64, k, records int) schedule {
	r := rand.New(rand.NewPCG(seed, uint64(k)))
	s := schedule{start: 1 + r.IntN(maxReplicas)}
	points := make([]int, 1+r.IntN(3))
	for i := range points {
		points[i] = records/10 + r.IntN(records*8/10)
	}
	slices.Sort(points)
	n := s.start
	for _, at := range slices.Compact(points) {
		next := 1 + r.IntN(maxReplicas-1) // another count than n
		if next >= n {
			next++
		}
		s.changes = append(s.changes, change{at: at, replicas: next, pick: r.IntN(maxReplicas)})
		n = next
	}
	return s
}

// propertyCount reads a positive count from the environment variable name.
func propertyCount(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive count", name, v)
	}
	return n
}

package detectors

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
)

// fetchRun feeds events to a new engine of cfg over store (nil: the default) in
// batches of batch, as Run and replay do: each batch's baselines are looked up first,
// when fetch is set, and what it taught is written after. It returns the alerts and
// the engine.
func fetchRun(t testing.TB, cfg Config, store BaselineStore, batch int, fetch bool, events []ingest.Event) ([]Alert, *Engine) {
	return fetchRunSync(t, cfg, store, batch, fetch, 1, events)
}

// fetchRunSync is fetchRun writing the baselines after every syncEvery batches.
func fetchRunSync(t testing.TB, cfg Config, store BaselineStore, batch int, fetch bool, syncEvery int, events []ingest.Event) ([]Alert, *Engine) {
	t.Helper()
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Baselines: store})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.LoadBaselines(ctx); err != nil {
		t.Fatal(err)
	}
	var alerts []Alert
	for i := 0; i < len(events); i += batch {
		b := events[i:min(i+batch, len(events))]
		if fetch {
			if err := e.FetchBaselines(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		alerts = append(alerts, e.Observe(b)...)
		if (i/batch+1)%syncEvery != 0 {
			continue
		}
		if err := e.SyncBaselines(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return append(alerts, e.Flush()...), e
}

// evictionTraffic: key "a" is established from US over two hours; keys "b" and "c"
// come after it (with max_keys 2, "c" evicts "a"), then "a" is used from US again and
// then from DE, then "b" and "c" keep the watermark moving.
func evictionTraffic() []ingest.Event {
	var evs []ingest.Event
	for i := range 12 {
		evs = append(evs, req(at(time.Duration(i)*10*time.Minute), client("a"), country("US")))
	}
	// b and c within max_ahead of a's last event: a longer pause would make them
	// records held until a later one decides them (see watermarks.decide), which is
	// not what this traffic is about.
	evs = append(evs,
		req(at(119*time.Minute), client("b"), country("US")),
		req(at(2*time.Hour), client("c"), country("US")),
		req(at(3*time.Hour), client("a"), country("US")),
		req(at(3*time.Hour+time.Minute), client("a"), country("DE")),
	)
	for i := range 10 {
		evs = append(evs, req(at(3*time.Hour+time.Duration(2+i)*time.Minute), client([]string{"b", "c"}[i%2]), country("US")))
	}
	return evs
}

func evictionConfig(maxKeys int) Config {
	cfg := only(NewCountry)
	cfg.NewCountry.LearningPeriod = time.Hour
	cfg.NewCountry.MinEvents = 5
	cfg.NewCountry.MaxKeys = maxKeys
	return cfg
}

func alertIDs(alerts []Alert) []string {
	var ids []string
	for _, a := range alerts {
		ids = append(ids, a.ID+" "+a.Detector+" "+a.Key+" "+a.Evidence.NewCountry)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// TestEvictedKeyComesBackWithItsBaseline: a key evicted at max_keys and seen again is
// judged against the baseline it had, looked up in the store: the country it knew
// raises nothing, a new one raises the alert (same id) that an engine with room for
// every key raises. Without the lookup it came back a stranger, and the attack went
// unseen. It holds whether the key was written before its eviction or evicted with
// changes not yet written (restored from the engine, not the store).
func TestEvictedKeyComesBackWithItsBaseline(t *testing.T) {
	evs := evictionTraffic()
	roomy, _ := fetchRun(t, evictionConfig(100), nil, 1, true, evs)
	want := alertIDs(roomy)
	if len(want) != 1 || !slices.ContainsFunc(want, func(s string) bool { return len(s) > 0 && s[len(s)-2:] == "DE" }) {
		t.Fatalf("with room for every key: alerts %v, want one new_country alert for DE", want)
	}
	for _, c := range []struct{ batch, syncEvery int }{{1, 1}, {3, 1}, {14, 1}, {1, 1000}, {14, 1000}} {
		t.Run(fmt.Sprintf("batches of %d, written every %d", c.batch, c.syncEvery), func(t *testing.T) {
			mem := NewMemoryBaselines(Baselines{}, MemoryLimits(evictionConfig(2)))
			got, e := fetchRunSync(t, evictionConfig(2), mem, c.batch, true, c.syncEvery, evs)
			if ev := e.nc.tab.evictions; ev == 0 {
				t.Fatal("no key was evicted: the test tests nothing")
			}
			if c.syncEvery > 1 && mem.Updates() != 0 {
				t.Fatalf("%d writes: the evicted key's changes were meant to stay in the engine", mem.Updates())
			}
			if ids := alertIDs(got); !slices.Equal(ids, want) {
				t.Fatalf("alerts %v, want %v (as with room for every key)", ids, want)
			}
		})
	}
	// The lookup is what makes the difference.
	if got, _ := fetchRun(t, evictionConfig(2), nil, 1, false, evs); len(got) != 0 {
		t.Fatalf("without lookups the evicted key raised %v; the test expects it to come back a stranger", alertIDs(got))
	}
}

// TestHeldRecordsAreLookedUpAgain: records held far ahead of their partition's stream
// (see watermarks.decide) go through the detectors when a later record decides them,
// batches after their own. Their keys are looked up again with every batch until then:
// here the other partition's new keys evict "a" while its records wait, and without
// that lookup "a" came back a stranger and its new country raised nothing.
func TestHeldRecordsAreLookedUpAgain(t *testing.T) {
	for _, c := range []struct {
		maxKeys int
		evicts  bool
	}{{100, false}, {3, true}} {
		alerts, e := heldLookupRun(t, evictionConfig(c.maxKeys))
		if evicted := e.nc.tab.evictions > 0; evicted != c.evicts {
			t.Fatalf("max_keys %d: evictions %d", c.maxKeys, e.nc.tab.evictions)
		}
		if ids := alertIDs(alerts); len(ids) != 1 || !strings.HasSuffix(ids[0], " a DE") {
			t.Fatalf("max_keys %d: alerts %v, want one new_country alert for a from DE", c.maxKeys, ids)
		}
	}
}

// heldLookupRun runs two partitions through an engine with cfg, looking up before
// and writing after every batch (interleave pairs the partitions' records by index).
// Partition A: a, established from US; after a quiet hour, a from US and DE, held
// until d, two minutes on, decides them; then a from US again. Partition B: b side by
// side with a; while A's records wait, two new keys, x1 and x2, then x2 after the
// same quiet hour.
func heldLookupRun(t *testing.T, cfg Config) ([]Alert, *Engine) {
	t.Helper()
	var a, b []ingest.Event
	for i := range 12 {
		a = append(a, req(at(time.Duration(i)*10*time.Minute), client("a"), country("US")))
		b = append(b, req(at(time.Duration(i)*10*time.Minute+time.Second), client("b"), country("US")))
	}
	a = append(a, req(at(3*time.Hour), client("a"), country("US")), req(at(3*time.Hour+time.Minute), client("a"), country("DE")),
		req(at(3*time.Hour+3*time.Minute), client("d"), country("US")))
	b = append(b, req(at(111*time.Minute), client("x1"), country("US")), req(at(112*time.Minute), client("x2"), country("US")),
		req(at(3*time.Hour+3*time.Minute+time.Second), client("x2"), country("US")))
	for i := range 20 {
		a = append(a, req(at(3*time.Hour+time.Duration(4+i)*time.Minute), client("a"), country("US")))
		b = append(b, req(at(3*time.Hour+time.Duration(4+i)*time.Minute+time.Second), client("x2"), country("US")))
	}
	ctx := context.Background()
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Baselines: NewMemoryBaselines(Baselines{}, AllBaselines)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(ctx); err != nil {
		t.Fatal(err)
	}
	var alerts []Alert
	for _, bt := range interleave(1, partRun{partA, a}, partRun{partB, b}) {
		if err := e.FetchBaselines(ctx, bt.Events); err != nil {
			t.Fatal(err)
		}
		alerts = append(alerts, e.ObserveBatch(bt)...)
		if err := e.SyncBaselines(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return append(alerts, e.Flush()...), e
}

// TestHoldsEvicted: once a key is evicted with changes not yet written, the engine
// says so until the next write, for callers that write less often than every batch.
func TestHoldsEvicted(t *testing.T) {
	evs := evictionTraffic()
	mem := NewMemoryBaselines(Baselines{}, MemoryLimits(evictionConfig(2)))
	// Through "b", then "c", which evicts "a": nothing was written yet.
	i := slices.IndexFunc(evs, func(ev ingest.Event) bool { return ev.ClientKey == "c" })
	_, e := fetchRunSync(t, evictionConfig(2), mem, i, true, 1000, evs[:i])
	if e.HoldsEvicted() {
		t.Fatal("holds evicted baselines before any key was evicted")
	}
	e.Observe(evs[i : i+1])
	if e.nc.tab.evictions != 1 || !e.HoldsEvicted() {
		t.Fatalf("%d evictions, holds evicted %v; want 1 and true", e.nc.tab.evictions, e.HoldsEvicted())
	}
	if err := e.SyncBaselines(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.HoldsEvicted() {
		t.Fatal("still holds evicted baselines after they were written")
	}
}

// TestFetchLooksUpOnlyReturningKeys: a key is looked up when a detector evicted it and
// sees it again, not when it is new to a store that held no more than the engine
// loaded, and not for every batch it is in.
func TestFetchLooksUpOnlyReturningKeys(t *testing.T) {
	cfg := evictionConfig(2)
	cs := &lookupCounter{MemoryBaselines: NewMemoryBaselines(Baselines{}, MemoryLimits(cfg))}
	evs := evictionTraffic()
	fetchRun(t, cfg, cs, 1, true, evs)
	// a after c evicted it, b after a's return evicted it, c after b's return evicted
	// it; then b and c, both held, take turns without a lookup.
	if want := map[string]int{"a": 1, "b": 1, "c": 1}; !maps.Equal(cs.looked, want) {
		t.Fatalf("looked up %v, want %v", cs.looked, want)
	}
}

// TestFetchLooksUpKeysBeyondTheLoad: when the store holds more keys than the engine
// loads (the most recent, up to max_keys), a key it did not load is looked up when it
// comes, and judged against its baseline.
func TestFetchLooksUpKeysBeyondTheLoad(t *testing.T) {
	cfg := evictionConfig(2)
	est := KeyBaseline{Key: "a", FirstSeen: at(-48 * time.Hour), Events: 100,
		Countries: []CountryBaseline{{Country: "US", FirstSeen: at(-48 * time.Hour), LastSeen: at(-time.Hour), Events: 100}}}
	snap := Baselines{Keys: []KeyBaseline{est, keyAt("x", at(-time.Minute)), keyAt("y", at(-time.Minute))}}
	evs := []ingest.Event{req(at(0), client("a"), country("DE"))}
	for i := range 5 {
		evs = append(evs, req(at(time.Duration(i+1)*time.Minute), client("y"), country("DE")))
	}
	got, e := fetchRun(t, cfg, NewMemoryBaselines(snap, AllBaselines), 1, true, evs)
	if !e.fetch.all {
		t.Fatal("a load that filled max_keys did not note that the store holds more")
	}
	if ids := alertIDs(got); len(ids) != 1 {
		t.Fatalf("alerts %v, want one: a, established in US, used from DE", ids)
	}
	if got, _ := fetchRun(t, cfg, NewMemoryBaselines(snap, AllBaselines), 1, false, evs); len(got) != 0 {
		t.Fatalf("without lookups: alerts %v; the test expects a to come as a stranger", alertIDs(got))
	}
}

// lookupCounter counts the lookups of each key.
type lookupCounter struct {
	*MemoryBaselines
	looked map[string]int
	err    error
}

func (l *lookupCounter) LookupBaselines(ctx context.Context, keys, routes []string) (Baselines, error) {
	if l.looked == nil {
		l.looked = map[string]int{}
	}
	for _, k := range keys {
		l.looked[k]++
	}
	if l.err != nil {
		return Baselines{}, l.err
	}
	return l.MemoryBaselines.LookupBaselines(ctx, keys, routes)
}

// TestFetchFailureIsRetried: a failed lookup is an error, the batch is observed
// without it, and its keys are looked up again the next time they come.
func TestFetchFailureIsRetried(t *testing.T) {
	cfg := evictionConfig(2)
	// The store holds more than the engine loads: every new key is looked up.
	snap := Baselines{Keys: []KeyBaseline{keyAt("x", at(-time.Hour)), keyAt("y", at(-time.Hour)), keyAt("z", at(-time.Hour))}}
	cs := &lookupCounter{MemoryBaselines: NewMemoryBaselines(snap, AllBaselines), err: errors.New("store down")}
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Baselines: cs})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := []ingest.Event{req(at(0), client("a"), country("US"))}
	if err := e.FetchBaselines(t.Context(), b); err == nil {
		t.Fatal("a failed lookup returned no error")
	}
	cs.err = nil
	if err := e.FetchBaselines(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	if cs.looked["a"] != 2 {
		t.Fatalf("looked up a %d times, want 2: once failed, once again", cs.looked["a"])
	}
}

// TestFetchedCacheGrowsWithTheKeys: the cache of looked-up keys starts small, grows
// with the keys added (keeping them), and stops at room for four times the largest
// detector's max_keys.
func TestFetchedCacheGrowsWithTheKeys(t *testing.T) {
	cfg := only(NewCountry)
	cfg.NewCountry.MaxKeys = 20_000
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	f := e.fetch
	if len(f.fetched.entries) > 1024 {
		t.Fatalf("a new engine's cache holds %d entries", len(f.fetched.entries))
	}
	for i := range 10_000 {
		f.fetched.add(keyHash(fmt.Sprint(i)))
	}
	kept := 0
	for i := range 10_000 {
		if f.fetched.has(keyHash(fmt.Sprint(i))) {
			kept++
		}
	}
	if kept < 9_900 || len(f.fetched.entries) < 32_768 {
		t.Fatalf("after 10,000 keys the cache has %d entries and keeps %d of them", len(f.fetched.entries), kept)
	}
	for i := range 200_000 {
		f.fetched.add(keyHash(fmt.Sprint("k", i)))
	}
	if len(f.fetched.entries) != 131_072 {
		t.Fatalf("after 200,000 keys the cache has %d entries, want 131,072 (four times max_keys, a power of two)", len(f.fetched.entries))
	}
}

// TestEvictedObjectsAreKeptByClient: the unwritten baselines of evicted pairs are kept
// per client, the latest of each route; a lookup of the client restores them, and a
// write takes those not restored.
func TestEvictedObjectsAreKeptByClient(t *testing.T) {
	e, err := NewEngine(only(ObjectEnumeration), Options{Registerer: prometheus.NewPedanticRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	f := e.fetch
	f.keepObject(ObjectBaseline{Client: "a", Route: "GET /x/{id}", Peak: 1, PeakAt: at(0)})
	f.keepObject(ObjectBaseline{Client: "a", Route: "GET /y/{id}", Peak: 2, PeakAt: at(0)})
	f.keepObject(ObjectBaseline{Client: "a", Route: "GET /x/{id}", Peak: 3, PeakAt: at(time.Minute)})
	f.keepObject(ObjectBaseline{Client: "b", Route: "GET /x/{id}", Peak: 4, PeakAt: at(0)})
	var b Baselines
	r := f.restore([]string{"a"}, nil, &b)
	if len(r.Objects) != 2 || r.Objects[0].Peak != 3 || r.Objects[1].Peak != 2 || len(b.Objects) != 2 {
		t.Fatalf("restored %+v into %+v, want a's two routes, /x at its latest", r.Objects, b.Objects)
	}
	var u Baselines
	f.takeEvicted(&u, e.log)
	if len(u.Objects) != 1 || u.Objects[0].Client != "b" || len(f.objects) != 0 {
		t.Fatalf("a write took %+v (left %d clients), want b's only", u.Objects, len(f.objects))
	}
}

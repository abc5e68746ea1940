package detectors

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestKeyTableAgainstMap drives a table and a map with the same random adds, touches,
// expiries and evictions, and checks they agree on every key after every step: the
// index's back-shifting deletes must never lose a key or keep a dead one.
func TestKeyTableAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const maxKeys = 300
	tab := newKeyTable[int](maxKeys, 100)
	var removed []string
	tab.onRemove = func(slot int32, _ bool) { removed = append(removed, tab.keyOf(slot)) }
	ref := map[string]int64{} // key → last
	now := int64(1_000_000)
	keyName := func(i int) string {
		if i%7 == 0 { // some keys too long to keep inline
			return fmt.Sprintf("long-key-%s-%d", strings.Repeat("x", 50), i)
		}
		return fmt.Sprintf("k%d", i)
	}
	for step := 0; step < 50_000; step++ {
		// Phases alternate: many keys arriving fast (evictions), few arriving slowly
		// (expiry).
		keys, dt := 1000, 3
		if step/5000%2 == 1 {
			keys, dt = 400, 40
		}
		now += int64(rng.IntN(dt))
		switch x := rng.IntN(100); {
		case x < 90:
			k := keyName(rng.IntN(keys))
			if slot := tab.find(k); slot >= 0 {
				if _, ok := ref[k]; !ok {
					t.Fatalf("step %d: find(%q) = %d, but the key was removed", step, k, slot)
				}
				tab.touch(slot, now)
				ref[k] = now
			} else {
				if _, ok := ref[k]; ok {
					t.Fatalf("step %d: find(%q) = -1, but the key is live", step, k)
				}
				removed = removed[:0]
				slot := tab.add(k, now)
				tab.ents[slot].s = len(k)
				for _, r := range removed {
					delete(ref, r)
				}
				ref[k] = now
			}
		default:
			removed = removed[:0]
			before := now - 2000
			tab.expire(before)
			for _, r := range removed {
				if ref[r] >= before {
					t.Fatalf("step %d: expire(%d) removed %q last seen %d", step, before, r, ref[r])
				}
				delete(ref, r)
			}
		}
		if tab.live != len(ref) || tab.live > maxKeys {
			t.Fatalf("step %d: %d live keys, reference has %d (max %d)", step, tab.live, len(ref), maxKeys)
		}
	}
	for k := range ref {
		slot := tab.find(k)
		if slot < 0 || tab.keyOf(slot) != k || tab.ents[slot].s != len(k) {
			t.Errorf("key %q lost", k)
		}
	}
	if tab.evictions == 0 || tab.expired == 0 {
		t.Errorf("evictions %d expired %d: the run should exercise both", tab.evictions, tab.expired)
	}
}

func TestKeyTableEvictsColdest(t *testing.T) {
	tab := newKeyTable[struct{}](3, 10)
	var evicted []string
	tab.onRemove = func(slot int32, ev bool) {
		if ev {
			evicted = append(evicted, tab.keyOf(slot))
		}
	}
	tab.add("a", 100)
	tab.add("b", 200)
	tab.add("c", 300)
	tab.touch(tab.find("a"), 400) // a is now the hottest
	tab.add("d", 500)
	tab.add("e", 600)
	if !slices.Equal(evicted, []string{"b", "c"}) {
		t.Errorf("evicted %v, want the coldest first: [b c]", evicted)
	}
	for _, k := range []string{"a", "d", "e"} {
		if tab.find(k) < 0 {
			t.Errorf("%q was evicted", k)
		}
	}
}

func TestNewRingLayout(t *testing.T) {
	for _, tc := range []struct {
		window, lateness string
		preferred        int
		history          bool
		want             ringLayout
	}{
		{"1m", "30s", 12, false, ringLayout{width: 5000, n: 12, size: 20, unit: 1}},
		{"10m", "30s", 20, false, ringLayout{width: 30000, n: 20, size: 23, unit: 1}},
		{"5m", "30s", 10, false, ringLayout{width: 30000, n: 10, size: 13, unit: 1}},
		{"5m", "30s", 10, true, ringLayout{width: 30000, n: 10, back: 10, size: 23, unit: 1}},
		{"7s", "0s", 12, false, ringLayout{width: 700, n: 10, size: 12, unit: 1}},
		{"1s", "1m", 12, false, ringLayout{width: 1000, n: 1, size: 63, unit: 1}},
		{"1s", "1m", 12, true, ringLayout{width: 1000, n: 1, back: 1, size: 64, unit: 1}},
		// Buckets longer than 65,535ms keep event times in ticks of 2ms and more.
		{"1h", "30s", 10, false, ringLayout{width: 360000, n: 10, size: 13, unit: 6}},
		{"1h", "30s", 30, true, ringLayout{width: 120000, n: 30, back: 30, size: 63, unit: 2}},
	} {
		w, l := mustDuration(t, tc.window), mustDuration(t, tc.lateness)
		if got := newRingLayout(w, l, tc.preferred, tc.history); got != tc.want {
			t.Errorf("newRingLayout(%s, %s, %d, %v) = %+v, want %+v", tc.window, tc.lateness, tc.preferred, tc.history, got, tc.want)
		}
	}
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestKeyTableFloodInOnePeriodStaysBounded: 200,000 new keys within one wheel period
// (a flood of made-up keys) evict each other at max_keys, and what the table keeps to
// find the coldest does not grow with them. Eviction stays oldest first.
func TestKeyTableFloodInOnePeriodStaysBounded(t *testing.T) {
	const maxKeys = 1000
	tab := newKeyTable[int](maxKeys, int64(time.Hour/time.Millisecond))
	for i := range 200_000 {
		tab.add(fmt.Sprintf("k%d", i), int64(i/1000))
	}
	refs := 0
	for _, w := range tab.wheel {
		refs += cap(w)
	}
	if refs > 8*maxKeys {
		t.Fatalf("the wheel holds room for %d refs for %d keys", refs, tab.live)
	}
	if tab.live != maxKeys || tab.find("k198999") >= 0 || tab.find("k199000") < 0 || tab.find("k199999") < 0 {
		t.Fatalf("%d keys live; want the last %d", tab.live, maxKeys)
	}
}

// TestKeyTableResistsCraftedCollisions inserts keys chosen, as a hostile client can
// choose paths, routes or header values, so that the public hash of every one of them
// starts its index probe in the same 16 of 4,096 cells. With the index placed by that
// hash alone, each insert and lookup would walk past all the keys before it (about
// 1,500 cells at the end: quadratic work for the engine); placed by a hash keyed per
// table, the probes stay as short as for any keys.
func TestKeyTableResistsCraftedCollisions(t *testing.T) {
	const n, cells = 1500, 4096
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("/probe/%x", i)
		if (keyHash(k)>>32)&(cells-1) < 16 {
			keys = append(keys, k)
		}
	}
	tab := newKeyTable[int](n, 100)
	for _, k := range keys {
		tab.add(k, 1)
	}
	if len(tab.index) != cells {
		t.Fatalf("index of %d cells, want %d for the crafted keys to aim at it", len(tab.index), cells)
	}
	longest := 0 // the longest probe: cells between a key's home and its cell
	for i, x := range tab.index {
		if x != 0 {
			longest = max(longest, (i-int(tab.home(x>>32))+cells)%cells)
		}
	}
	if longest > 100 {
		t.Errorf("a probe walks %d cells for %d keys in %d cells: the crafted keys collide", longest, n, cells)
	}
	for _, k := range keys {
		if tab.find(k) < 0 {
			t.Fatalf("key %q lost", k)
		}
	}
}

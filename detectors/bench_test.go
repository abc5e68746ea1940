package detectors

// Compare runs with benchstat:
//
//	go test ./detectors -run '^$' -bench 'Engine|Memory' -benchmem -count 6 > new.txt
//	benchstat old.txt new.txt

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/gatewatch/gatewatch/ingest"
)

const benchKeys = 100_000

// benchPool returns a pool of events over benchKeys clients, each with its own token,
// device, IP and country (one in ten roams between two), spread over 60 routes with a
// few busy ones, about 1% 403s, and the baselines a month of that traffic leaves.
// Clients are picked uniformly, the worst case for caches: every key stays active.
//
// Like a parser's output, each event's strings are copied into one arena in event
// order, so reading an event's fields costs what it costs after parsing, not a cache
// miss per field.
func benchPool(n int) ([]ingest.Event, Baselines) {
	rng := rand.New(rand.NewPCG(42, 42))
	countries := []string{"DE", "FR", "US", "GB", "NL", "ES", "IT", "SE", "PL", "CA"}
	type cl struct{ key, tok, dev, ip, c1, c2 string }
	clients := make([]cl, benchKeys)
	for i := range clients {
		clients[i] = cl{
			key: fmt.Sprintf("client-%06d", i),
			tok: fmt.Sprintf("%032x", uint64(i)*2654435761),
			dev: fmt.Sprintf("dev-%06d", i),
			ip:  fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255),
			c1:  countries[i%len(countries)],
			c2:  countries[(i/len(countries))%len(countries)],
		}
	}
	routes := make([]string, 60)
	for i := range routes {
		routes[i] = fmt.Sprintf("/v1/r%d/{id}", i)
	}
	snap := Baselines{TrafficSince: t0.Add(-30 * 24 * time.Hour)}
	for _, c := range clients {
		kb := KeyBaseline{Key: c.key, FirstSeen: t0.Add(-60 * 24 * time.Hour), Events: 1000}
		for _, cc := range []string{c.c1, c.c2} {
			if len(kb.Countries) == 0 || kb.Countries[0].Country != cc {
				kb.Countries = append(kb.Countries, CountryBaseline{Country: cc, FirstSeen: kb.FirstSeen, LastSeen: t0, Events: 500})
			}
		}
		snap.Keys = append(snap.Keys, kb)
	}
	counts := make([]int, len(routes))
	var arena []byte
	str := func(s string) string {
		if cap(arena)-len(arena) < len(s) {
			arena = make([]byte, 0, 1<<20)
		}
		arena = append(arena, s...)
		return unsafe.String(&arena[len(arena)-len(s)], len(s))
	}
	pool := make([]ingest.Event, n)
	for i := range pool {
		c := &clients[rng.IntN(len(clients))]
		var r string
		cc := c.c1
		if i%10 == 0 && rng.IntN(2) == 0 {
			cc = c.c2
		}
		st := 200
		if rng.IntN(100) == 0 {
			st = 403
		}
		ri := min(int(rng.ExpFloat64()*6), len(routes)-1)
		counts[ri]++
		r = routes[ri]
		pool[i] = ingest.Event{
			Source: "envoy", ClientKey: str(c.key), TokenFP: str(c.tok), Device: str(c.dev), ClientIP: str(c.ip), Country: cc,
			Method: "GET", Host: "api.example.com", Route: r, Path: str(r), Status: st, RequestID: str(fmt.Sprintf("req-%d", i)),
		}
	}
	for i, r := range routes {
		// Events arrive every 0.5ms: 120,000 a minute.
		snap.Routes = append(snap.Routes, RouteBaseline{Route: "GET " + r, RatePerMinute: 120000 * float64(counts[i]) / float64(n), AsOf: t0})
	}
	return pool, snap
}

// BenchmarkEngine measures Observe per event, one detector at a time and all four,
// with benchKeys active keys: events arrive every 0.5ms of event time, so each key is
// seen about every 50s. Observe takes batches of 256 events.
func BenchmarkEngine(b *testing.B) {
	pool, snap := benchPool(1 << 18)
	for _, name := range append(append([]string{}, Names...), "all") {
		b.Run(name, func(b *testing.B) {
			cfg := DefaultConfig()
			if name != "all" {
				cfg = only(name)
			}
			// From a month of baselines: keys are established, so new_country does
			// its full work, and routes have their rates.
			e, err := NewEngine(cfg, Options{Baselines: NewMemoryBaselines(snap)})
			if err != nil {
				b.Fatal(err)
			}
			if err := e.LoadBaselines(b.Context()); err != nil {
				b.Fatal(err)
			}
			const step = 500 * time.Microsecond
			batch := make([]ingest.Event, 0, 256)
			n := 0
			feed := func() {
				ev := pool[n%len(pool)]
				ev.Time = t0.Add(time.Duration(n) * step)
				n++
				batch = append(batch, ev)
				if len(batch) == cap(batch) {
					e.Observe(batch)
					batch = batch[:0]
				}
			}
			for range 3 * benchKeys { // warm up: every key exists and every window has rolled
				feed()
			}
			b.ReportAllocs()
			for b.Loop() {
				feed()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// benchMemory reports the heap per key of one detector holding benchKeys keys, each
// built by mk from its index.
func benchMemory(b *testing.B, name string, mk func(i int, ts time.Time) ingest.Event) {
	events := make([]ingest.Event, benchKeys)
	for i := range events {
		events[i] = mk(i, t0.Add(time.Duration(i)*100*time.Microsecond))
	}
	var perKey float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		e, err := NewEngine(only(name), Options{})
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < len(events); i += 1000 {
			e.Observe(events[i:min(i+1000, len(events))])
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if keys, _, _ := e.dets[0].stats(); keys != benchKeys {
			b.Fatalf("%d keys tracked, want %d", keys, benchKeys)
		}
		perKey = float64(after.HeapAlloc-before.HeapAlloc) / benchKeys
		runtime.KeepAlive(e)
	}
	runtime.KeepAlive(events)
	b.ReportMetric(perKey, "bytes/key")
}

func BenchmarkNewCountryMemory(b *testing.B) {
	benchMemory(b, NewCountry, func(i int, ts time.Time) ingest.Event {
		return req(ts, client(fmt.Sprintf("client-%06d", i)), country("DE"))
	})
}

func BenchmarkTokenReuseMemory(b *testing.B) {
	benchMemory(b, TokenReuse, func(i int, ts time.Time) ingest.Event {
		return req(ts, token(fmt.Sprintf("%032x", uint64(i)*2654435761)), device(fmt.Sprintf("dev-%06d", i)),
			ip(fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)), country("DE"))
	})
}

func BenchmarkForbiddenBurstMemory(b *testing.B) {
	benchMemory(b, ForbiddenBurst, func(i int, ts time.Time) ingest.Event {
		return req(ts, client(fmt.Sprintf("client-%06d", i)))
	})
}

func BenchmarkQuietEndpointSpikeMemory(b *testing.B) {
	benchMemory(b, QuietEndpointSpike, func(i int, ts time.Time) ingest.Event {
		return req(ts, route("GET", fmt.Sprintf("/v1/r%06d/{id}", i)))
	})
}

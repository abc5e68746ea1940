package outbox

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/alerting/file"
	"github.com/gatewatch/gatewatch/detectors"
)

var _ alertingtest.Store = (*Store)(nil)

func openTestOutbox(t *testing.T, dir string) alertingtest.Store {
	t.Helper()
	ob, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ob
}

// TestOutbox runs alerting's outbox suite on the bbolt outbox: dedup, queue order,
// reopen, and a Router crashed at every call to it and restarted on the same file.
func TestOutbox(t *testing.T) {
	alertingtest.RunOutboxSuite(t, openTestOutbox)
}

func TestOutboxKeyRoundTrip(t *testing.T) {
	for _, k := range []alerting.DeliveryKey{
		{Receiver: "soc-slack", ID: "0123456789abcdef0123456789abcdef", Version: 1740830400000, Round: 0},
		{Receiver: "", ID: "", Version: -5, Round: 3},
		{Receiver: "a\x00b", ID: "ü", Version: 0, Round: 1 << 20},
	} {
		got, ok := parseDeliveryKey(deliveryKey(&k))
		if !ok || got != k {
			t.Errorf("parseDeliveryKey(deliveryKey(%+v)) = %+v, %v", k, got, ok)
		}
	}
	// Versions sort numerically, negative ones first.
	a, b := alerting.DeliveryKey{ID: "x", Version: -1}, alerting.DeliveryKey{ID: "x", Version: 1}
	if string(deliveryKey(&a)) >= string(deliveryKey(&b)) {
		t.Error("version -1 does not sort before version 1")
	}
}

func TestOutboxRejectsCorruptRecords(t *testing.T) {
	good := encodeState(&stateRecord{state: alerting.Failed, seq: 7, attempts: 3, lastError: "unexpected HTTP status 400"})
	if st, err := decodeState(good); err != nil || st.seq != 7 || st.lastError != "unexpected HTTP status 400" {
		t.Fatalf("decodeState(encodeState(...)) = %+v, %v", st, err)
	}
	for _, v := range [][]byte{nil, {recordVersion}, good[:29], good[:len(good)-1], append([]byte{9}, good[1:]...), append(slices.Clone(good), 'x')} {
		if _, err := decodeState(v); err == nil {
			t.Errorf("decodeState(%x) accepted a corrupt record", v)
		}
	}
}

// BenchmarkRouterFile measures what one alert costs from Router.Put to a line
// fsync'd in the file receiver's file: routing, the outbox's durable enqueue, the
// queue read, the file append and the outbox's record of the delivery, all on bbolt
// with group commits. alerts/s covers the whole run, including the final Flush, so
// it is the sustained rate and not how fast Put can queue. Sub-benchmarks: alerts per
// Put, and parallel producers (whose writes share commits).
//
//	go test ./alerting/outbox -run '^$' -bench RouterFile -benchmem -count 6 | benchstat
func BenchmarkRouterFile(b *testing.B) {
	for _, batch := range []int{1, 10, 100} {
		b.Run("put="+strconv.Itoa(batch), func(b *testing.B) {
			r, flush := benchRouter(b)
			tmpl := alertingtest.Alerts(1, time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC))[0]
			alerts := make([]detectors.Alert, batch)
			n := 0
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				for i := range alerts {
					alerts[i] = benchAlert(&tmpl, int64(n))
					n++
				}
				if err := r.Put(b.Context(), alerts); err != nil {
					b.Fatal(err)
				}
			}
			flush()
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "alerts/s")
		})
	}
	b.Run("put=10/parallel", func(b *testing.B) {
		r, flush := benchRouter(b)
		tmpl := alertingtest.Alerts(1, time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC))[0]
		b.ReportAllocs()
		b.SetParallelism(4)
		var ids atomic.Int64
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			alerts := make([]detectors.Alert, 10)
			for pb.Next() {
				for i := range alerts {
					alerts[i] = benchAlert(&tmpl, ids.Add(1))
				}
				if err := r.Put(context.Background(), alerts); err != nil {
					b.Error(err)
					return
				}
			}
		})
		flush()
		b.ReportMetric(float64(ids.Load())/time.Since(start).Seconds(), "alerts/s")
	})
}

// benchAlert returns the n-th alert of a stream: a random-looking id, as the engine
// makes them, and a last_seen that moves on with the stream.
func benchAlert(tmpl *detectors.Alert, n int64) detectors.Alert {
	a := *tmpl
	a.ID = detectors.AlertID(a.Detector, strconv.FormatInt(n, 10), a.FirstSeen)
	a.LastSeen = a.FirstSeen.Add(time.Duration(n) * time.Millisecond)
	return a
}

// benchRouter starts a Router on a bbolt outbox with one file receiver; flush waits
// for every delivery and stops it.
func benchRouter(b *testing.B) (*alerting.Router, func()) {
	b.Helper()
	dir := b.TempDir()
	ob, err := Open(filepath.Join(dir, "outbox"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	fr, err := file.New("archive", alerting.FileConfig{Path: filepath.Join(dir, "alerts.jsonl")})
	if err != nil {
		b.Fatal(err)
	}
	r, err := alerting.NewRouter(alerting.DefaultConfig(), alerting.RouterOptions{
		Outbox:     ob,
		Receivers:  map[string]alerting.Receiver{"archive": fr},
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	return r, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		if err := r.Close(ctx); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if err := fr.Close(); err != nil {
			b.Fatal(err)
		}
		if err := ob.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

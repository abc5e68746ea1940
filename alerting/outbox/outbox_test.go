package outbox

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

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
	for _, v := range [][]byte{nil, {recordVersion}, good[:29], good[:37], good[:len(good)-1], append([]byte{9}, good[1:]...), append(slices.Clone(good), 'x')} {
		if _, err := decodeState(v); err == nil {
			t.Errorf("decodeState(%x) accepted a corrupt record", v)
		}
	}
}

// TestOutboxReadsVersion1Records: a file written before deliveries kept their queued
// time still reads, with the queued time unknown (zero).
func TestOutboxReadsVersion1Records(t *testing.T) {
	v1 := []byte{recordVersionV1, byte(alerting.Failed)}
	v1 = binary.BigEndian.AppendUint64(v1, 7)
	v1 = binary.BigEndian.AppendUint32(v1, 3)
	v1 = binary.BigEndian.AppendUint64(v1, uint64(time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC).UnixMilli()))
	v1 = binary.BigEndian.AppendUint64(v1, 1<<63) // done: math.MinInt64, none
	v1 = binary.AppendUvarint(v1, 4)
	v1 = append(v1, "boom"...)
	st, err := decodeState(v1)
	if err != nil {
		t.Fatal(err)
	}
	if st.state != alerting.Failed || st.seq != 7 || st.attempts != 3 || st.lastError != "boom" || !timeOf(st.queued).IsZero() || !timeOf(st.done).IsZero() {
		t.Errorf("version 1 record decoded as %+v", st)
	}
	for _, v := range [][]byte{v1[:29], v1[:len(v1)-1]} {
		if _, err := decodeState(v); err == nil {
			t.Errorf("decodeState(%x) accepted a truncated version 1 record", v)
		}
	}
}

// TestOutboxCountsParkedOfOlderFiles: a file from before the parked counts gets them
// at its next Open, from the deliveries it holds.
func TestOutboxCountsParkedOfOlderFiles(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	ob, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	as := alertingtest.Alerts(3, time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC))
	var ds []alerting.Delivery
	for _, a := range as {
		ds = append(ds, alerting.Delivery{DeliveryKey: alerting.KeyOf("siem", &a), Alert: a, State: alerting.Pending})
	}
	if err := ob.Enqueue(ctx, ds); err != nil {
		t.Fatal(err)
	}
	ds[0].State, ds[1].State = alerting.Failed, alerting.Failed
	if err := ob.Update(ctx, ds[:2]); err != nil {
		t.Fatal(err)
	}
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, File), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketParked) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	ob, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	stats, err := ob.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := stats["siem"]; got.Parked != 2 || got.Pending != 1 {
		t.Errorf("Stats after reopening an older file = %+v, want 2 parked and 1 pending", got)
	}
}

// TestOutboxInUse: a second process on the same outbox is refused with a message that
// says why, instead of bbolt's bare timeout.
func TestOutboxInUse(t *testing.T) {
	dir := t.TempDir()
	ob, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	// bbolt's flock conflicts between two opens of the file even in one process.
	_, err = Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("second Open = %v, want an error saying the outbox is in use", err)
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

package cluster

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go/compress/zstd"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

// project keeps the fields of fs, as a record of them decodes.
func project(ev ingest.Event, fs fieldSet) ingest.Event {
	out := ingest.Event{Time: ev.Time}
	for f := fieldSet(1); f <= fUserAgent; f <<= 1 {
		if fs&f == 0 {
			continue
		}
		if f == fStatus {
			out.Status = ev.Status
			continue
		}
		*stringField(&out, f) = *stringField(&ev, f)
	}
	return out
}

// TestRecordRoundTrip: every kind's record of an event decodes to the event's fields of
// that kind, with its source position, stream time and lateness; marks decode as
// written; damaged records are errors, never events.
func TestRecordRoundTrip(t *testing.T) {
	_, _, raw := traffic(t, 3)
	evs := parseAll(t, raw[:500])
	evs = append(evs,
		ingest.Event{Time: time.UnixMilli(1_700_000_000_123).UTC(), ClientIP: "2001:db8::1", TokenFP: "NOT-HEX", ClientKey: "k\x00é", Status: 403},
		ingest.Event{Time: time.UnixMilli(-5).UTC(), ClientIP: "fe80::1%eth0", TokenFP: strings.Repeat("a", 32), Route: "/"},
	)
	var rec record
	for i, ev := range evs {
		for k := range numKinds {
			fs := kinds[k].fields
			pos := position{part: ingest.Partition{Source: "waf-logs", ID: int32(i % 7)}, offset: int64(i) * 1000}
			stream := ev.Time.UnixMilli() + int64(i%3)*1000
			b := appendEvent(nil, pos, stream, i%2 == 0, fs, &ev)
			if err := decodeRecord(&rec, b); err != nil {
				t.Fatalf("event %d, %s: %v", i, k, err)
			}
			want := project(ev, fs)
			if rec.typ != typeEvent || rec.ev != want || rec.pos != pos || rec.stream != stream || rec.late != (i%2 == 0) {
				t.Fatalf("event %d, %s: decoded %+v at %+v stream %d late %v\nwant %+v at %+v stream %d", i, k, rec.ev, rec.pos, rec.stream, rec.late, want, pos, stream)
			}
			for cut := range len(b) {
				if err := decodeRecord(&rec, b[:cut]); err == nil {
					t.Fatalf("event %d, %s: %d of %d bytes decoded without error", i, k, cut, len(b))
				}
			}
		}
	}
	marks := []mark{
		{pos: position{part: ingest.Partition{Source: "a", ID: 0}, offset: 12}, stream: 1_700_000_000_000, flags: flagOpened},
		{pos: position{part: ingest.Partition{Source: "b", ID: 3}, offset: 0}, stream: -1 << 63, flags: flagIdle},
	}
	if err := decodeRecord(&rec, appendMarks(nil, marks)); err != nil || rec.typ != typeMark || !slices.Equal(rec.marks, marks) {
		t.Fatalf("marks decoded as %+v (%v), want %+v", rec.marks, err, marks)
	}
	for _, b := range [][]byte{nil, {0x7f}, {typeMark, 0xff, 0xff, 0xff, 0xff, 0x0f}, append(appendMarks(nil, marks), 0)} {
		if err := decodeRecord(&rec, b); err == nil {
			t.Errorf("decodeRecord(%x) succeeded, want an error", b)
		}
	}
}

// TestKindsCarryWhatTheirDetectorsRead: the engines of the three kinds, each fed its
// topic's records of the events, raise exactly the alerts (ids and bytes) that one
// engine with every detector raises from the full events. This is what makes the field
// sets of the kinds right, and it fails when a detector reads a field its topic drops.
func TestKindsCarryWhatTheirDetectorsRead(t *testing.T) {
	_, injected, raw := traffic(t, 7)
	evs := parseAll(t, raw)
	cfg := testDetectors()
	run := func(cfg detectors.Config, evs []ingest.Event) []string {
		eng, err := detectors.NewEngine(cfg, detectors.Options{Registerer: prometheus.NewPedanticRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for lo := 0; lo < len(evs); lo += 500 {
			for _, a := range eng.Observe(evs[lo:min(lo+500, len(evs))]) {
				out = append(out, mustJSON(t, a))
			}
		}
		for _, a := range eng.Flush() {
			out = append(out, mustJSON(t, a))
		}
		slices.Sort(out)
		return out
	}
	want := run(cfg, evs)
	var got []string
	var rec record
	var addr keyBuf
	for k := range numKinds {
		var kevs []ingest.Event
		for i := range evs {
			if kinds[k].key(&evs[i], &addr) == "" {
				continue
			}
			b := appendEvent(nil, position{offset: int64(i)}, 0, false, kinds[k].fields, &evs[i])
			if err := decodeRecord(&rec, b); err != nil {
				t.Fatal(err)
			}
			kevs = append(kevs, rec.ev)
		}
		got = append(got, run(taskConfig(cfg, k), kevs)...)
	}
	slices.Sort(got)
	for _, inj := range injected {
		if !slices.ContainsFunc(want, func(a string) bool { return strings.Contains(a, `"detector":"`+inj.Kind+`"`) }) {
			t.Fatalf("one engine raised no %s alert for the injected attack: the traffic does not exercise that detector", inj.Kind)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("the kinds' engines raised\n%s\nwant (one engine, full events)\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func mustJSON(t testing.TB, a detectors.Alert) string {
	t.Helper()
	b, err := a.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// BenchmarkRecordBytes encodes parsed events into the records of every kind, as stage
// one does, and reports bytes per event on the internal topics (the three kinds
// together) against the raw AWS WAF record, uncompressed and with both compressed by
// zstd in batches of what one stage-one batch of 1000 events sends to each of 32
// internal partitions.
//
//	go test -run '^$' -bench RecordBytes -count 6 ./internal/cluster
func BenchmarkRecordBytes(b *testing.B) {
	_, _, raw := traffic(b, 7)
	evs := parseAll(b, raw)
	const parts = 32
	var rawBytes, recBytes, rawZ, recZ int
	var buf []byte
	var addr keyBuf
	codec := new(zstd.Codec)
	compress := func(chunks [][]byte) int {
		var out bytes.Buffer
		w := codec.NewWriter(&out)
		for _, c := range chunks {
			w.Write(c)
		}
		w.Close()
		return out.Len()
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		rawBytes, recBytes, rawZ, recZ = 0, 0, 0, 0
		for lo := 0; lo < len(evs); lo += 1000 {
			hi := min(lo+1000, len(evs))
			byPart := make([][][]byte, numKinds*parts)
			for i := lo; i < hi; i++ {
				rawBytes += len(raw[i])
				for k := range numKinds {
					key := kinds[k].key(&evs[i], &addr)
					if key == "" {
						continue
					}
					start := len(buf)
					buf = appendEvent(buf, position{part: ingest.Partition{Source: "waf-logs", ID: int32(i % 8)}, offset: int64(i)}, evs[i].Time.UnixMilli(), false, kinds[k].fields, &evs[i])
					recBytes += len(buf) - start
					p := int(k)*parts + partitionOf(key, parts)
					byPart[p] = append(byPart[p], buf[start:])
				}
			}
			rawZ += compress(raw[lo:hi])
			for _, chunks := range byPart {
				if len(chunks) > 0 {
					recZ += compress(chunks)
				}
			}
			buf = buf[:0]
		}
		n += len(evs)
	}
	per := func(v int) float64 { return float64(v) / float64(len(evs)) }
	b.ReportMetric(per(rawBytes), "raw-B/event")
	b.ReportMetric(per(recBytes), "internal-B/event")
	b.ReportMetric(100*float64(recBytes)/float64(rawBytes), "internal-%raw")
	b.ReportMetric(100*float64(recZ)/float64(rawZ), "internal-%raw-zstd")
	b.ReportMetric(100*float64(recZ)/float64(rawBytes), "internal-zstd-%raw")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}

// TestIPv6ClientOneTask: the addresses of one IPv6 /64 are one client to the detectors
// (detectors.AddrKey), so their events go to one partition of each kind keyed by client.
func TestIPv6ClientOneTask(t *testing.T) {
	var addr keyBuf
	for _, k := range []Kind{Client, IP} {
		want := -1
		for i := range 50 {
			ev := ingest.Event{ClientIP: fmt.Sprintf("2001:db8:7:8::%x", (i*4099)&0xffff)}
			p := partitionOf(kinds[k].key(&ev, &addr), 32)
			if want >= 0 && p != want {
				t.Fatalf("%s: %s goes to partition %d, the /64's other addresses to %d", k, ev.ClientIP, p, want)
			}
			want = p
		}
	}
}

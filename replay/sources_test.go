package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/replay"
	"github.com/gatewatch/gatewatch/store"
)

// sample is an hour of traffic with every attack, as requests and as AWS WAF records.
func sample(t testing.TB) ([]synth.Request, [][]byte) {
	t.Helper()
	reqs, _, err := synth.Generate(synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks})
	if err != nil {
		t.Fatal(err)
	}
	lines := make([][]byte, len(reqs))
	for i := range reqs {
		if lines[i], err = synth.AppendRecord(nil, ingest.FormatAWSWAF, &reqs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return reqs, lines
}

func parserOptions(t testing.TB) ingest.ParserOptions {
	return ingest.ParserOptions{Secret: secret(t), Now: func() time.Time { return synth.DefaultStart }}
}

// replayOf runs src through replay with the test's detectors and returns the alerts.
func replayOf(t testing.TB, src detectors.EventSource, o replay.Options) ([]byte, *replay.Summary) {
	t.Helper()
	var out bytes.Buffer
	o.Source, o.Out = src, &out
	if o.Detectors.AllowedLateness == 0 {
		o.Detectors = demoDetectors()
	}
	sum, err := replay.Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), sum
}

func ids(t testing.TB, out []byte) []string {
	t.Helper()
	var got []string
	for _, a := range alertsIn(t, out) {
		got = append(got, a.ID)
	}
	return got
}

// alertsIn decodes the alerts a replay wrote, one JSON line each.
func alertsIn(t testing.TB, out []byte) []detectors.Alert {
	t.Helper()
	var got []detectors.Alert
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" {
			continue
		}
		var a detectors.Alert
		if err := json.Unmarshal([]byte(l), &a); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got = append(got, a)
	}
	return got
}

// sampleRange produces parts[p] to partition p of k's topic waf-logs and returns the
// range of it that sample's hour spans, with a minute to spare either side.
func sampleRange(t *testing.T, k *kafkatest.Cluster, parts map[int][]kafkago.Message) *replay.KafkaRange {
	t.Helper()
	for p, msgs := range parts {
		k.ProduceTo(t, "waf-logs", p, msgs...)
	}
	src, err := replay.NewKafkaRange(context.Background(), replay.KafkaOptions{
		Brokers: k.Addrs, Topics: []ingest.TopicConfig{{Name: "waf-logs", Format: ingest.FormatAWSWAF}},
		Start: synth.DefaultStart.Add(-time.Minute), End: synth.DefaultStart.Add(time.Hour + time.Minute), Parser: parserOptions(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// sampleAlerts returns the alerts the file of sample's traffic raises.
func sampleAlerts(t *testing.T) []byte {
	t.Helper()
	path := writeSample(t, synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}, ingest.FormatAWSWAF)
	want, _ := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{})
	return want
}

// replaysAlike replays src and checks it raises want, byte for byte, from events
// events, none late.
func replaysAlike(t *testing.T, src *replay.KafkaRange, want []byte, events int) {
	t.Helper()
	got, sum := replayOf(t, src, replay.Options{})
	if !bytes.Equal(got, want) {
		t.Errorf("alerts from Kafka differ from the file's:\nwant %v\ngot  %v", ids(t, want), ids(t, got))
	}
	if sum.Events != events || sum.Late != 0 {
		t.Errorf("%d events (%d late), want %d, none late", sum.Events, sum.Late, events)
	}
}

// TestKafkaRangeReplaysWhatFilesDo: the records of a file, spread over four partitions
// of a topic with their Kafka timestamps at their event times, replay from a time range
// of the topic to the same alerts, byte for byte, as from the file; records stamped
// outside the range are not read.
func TestKafkaRangeReplaysWhatFilesDo(t *testing.T) {
	reqs, lines := sample(t)
	want := sampleAlerts(t)
	if len(ids(t, want)) < 4 {
		t.Fatalf("the file raises %d alerts", len(ids(t, want)))
	}

	k := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf-logs"}, Partitions: 4})
	parts := map[int][]kafkago.Message{}
	for i := range reqs {
		p := i % 4
		parts[p] = append(parts[p], kafkago.Message{Value: lines[i], Time: reqs[i].Time})
	}
	// Records an hour before and after the range, which a replay must not read.
	before, after := reqs[0], reqs[len(reqs)-1]
	before.Time, after.Time = before.Time.Add(-time.Hour), after.Time.Add(time.Hour)
	for _, r := range []synth.Request{before, after} {
		v, _ := synth.AppendRecord(nil, ingest.FormatAWSWAF, &r)
		parts[0] = append(parts[0], kafkago.Message{Value: v, Time: r.Time})
	}
	slices.SortStableFunc(parts[0], func(a, b kafkago.Message) int { return a.Time.Compare(b.Time) })
	src := sampleRange(t, k, parts)
	replaysAlike(t, src, want, len(reqs))
	var records int64
	for _, p := range src.Partitions() {
		records += p.Records
		if p.End <= p.Start {
			t.Errorf("%s: offsets %d to %d", p.Partition, p.Start, p.End)
		}
	}
	if records != int64(len(reqs)) {
		t.Errorf("%d records read, want the %d in the range", records, len(reqs))
	}
}

// TestKafkaRangeBacklog: a backlog shipped five hours after its events, every record
// stamped when it was shipped, replays from the range of its event times to the same
// alerts, byte for byte, as the file; the later traffic shipped with it (an hour on,
// two chunks of it) is not replayed, and the partition that holds it stops early.
func TestKafkaRangeBacklog(t *testing.T) {
	reqs, lines := sample(t)
	want := sampleAlerts(t)
	k := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf-logs"}, Partitions: 4})
	shipped := synth.DefaultStart.Add(5 * time.Hour)
	parts := map[int][]kafkago.Message{}
	for i := range reqs {
		parts[i%4] = append(parts[i%4], kafkago.Message{Value: lines[i], Time: shipped})
	}
	for i := range 2048 {
		r := reqs[i]
		r.Time = r.Time.Add(2 * time.Hour)
		v, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &r)
		if err != nil {
			t.Fatal(err)
		}
		parts[0] = append(parts[0], kafkago.Message{Value: v, Time: shipped})
	}
	src := sampleRange(t, k, parts)
	replaysAlike(t, src, want, len(reqs))
	for _, p := range src.Partitions() {
		if p.Partition.ID == 0 && p.End >= int64(len(parts[0])) {
			t.Errorf("%s: read to offset %d of %d: the later traffic was not left", p.Partition, p.End, len(parts[0]))
		}
	}
}

// TestKafkaRangeClockGlitch: one partition holds two records stamped twenty hours
// ahead, one of them the last of the first chunk of records the range reads, and later
// five in a row. Its later records do not wait behind them for the other partitions,
// nor does the engine take the five for a jump of the stream: none is late, and the
// alerts are the file's.
func TestKafkaRangeClockGlitch(t *testing.T) {
	reqs, lines := sample(t)
	want := sampleAlerts(t)
	k := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf-logs"}, Partitions: 4})
	parts := map[int][]kafkago.Message{}
	for i := range reqs {
		p := i % 4
		parts[p] = append(parts[p], kafkago.Message{Value: lines[i], Time: reqs[i].Time})
		copies := 0
		switch {
		case p != 1:
		case len(parts[1]) == 500, len(parts[1]) == replay.RangeChunkRecords-1:
			copies = 1
		case len(parts[1]) == 700:
			copies = 5
		}
		for c := range copies {
			// A copy of the request stamped twenty hours ahead, logged (and so stamped
			// in Kafka) in its place.
			g := reqs[i]
			g.RequestID, g.Time = fmt.Sprintf("glitch-%d-%s", c, g.RequestID), g.Time.Add(20*time.Hour)
			v, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, &g)
			if err != nil {
				t.Fatal(err)
			}
			parts[1] = append(parts[1], kafkago.Message{Value: v, Time: reqs[i].Time})
		}
	}
	replaysAlike(t, sampleRange(t, k, parts), want, len(reqs)+7)
}

// TestArchiveReplaysWhatFilesDo: events archived in the embedded store replay from the
// archive to the alerts the file gives, and --key keeps one key's events.
func TestArchiveReplaysWhatFilesDo(t *testing.T) {
	cfg := synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}
	path := writeSample(t, cfg, ingest.FormatAWSWAF)
	want, _ := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{})
	st, err := store.NewLocal(store.Config{DataDir: t.TempDir()}, store.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	n := 0
	eachBatch(t, path, func(events []ingest.Event) {
		n += len(events)
		if err := st.ArchiveEvents(context.Background(), events); err != nil {
			t.Fatal(err)
		}
	})
	from, to := synth.DefaultStart, synth.DefaultStart.Add(2*time.Hour)
	a := replay.NewArchive(st.ReadEvents(context.Background(), from, to, ""))
	got, sum := replayOf(t, a, replay.Options{})
	a.Close()
	if !bytes.Equal(got, want) || sum.Events != n {
		t.Errorf("alerts from the archive (%d events of %d) differ from the file's:\nwant %v\ngot  %v", sum.Events, n, ids(t, want), ids(t, got))
	}

	var first detectors.Alert
	json.Unmarshal(bytes.SplitN(want, []byte("\n"), 2)[0], &first)
	var evs bytes.Buffer
	src := replay.Filtered(replay.NewArchive(st.ReadEvents(context.Background(), from, to, "")), replay.Filter{Keys: []string{first.Key}})
	k, err := replay.WriteEvents(context.Background(), src, first.FirstSeen, first.LastSeen.Add(time.Millisecond), &evs)
	if err != nil || k == 0 {
		t.Fatalf("events of %s: %d, %v", first.Key, k, err)
	}
	for _, l := range strings.Split(strings.TrimSpace(evs.String()), "\n") {
		var ev struct {
			Time      time.Time `json:"time"`
			ClientKey string    `json:"client_key"`
			TokenFP   string    `json:"token_fp"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.ClientKey != first.Key && ev.TokenFP != first.Key {
			t.Errorf("--key %s printed an event of %s/%s", first.Key, ev.ClientKey, ev.TokenFP)
		}
		if ev.Time.Before(first.FirstSeen) || ev.Time.After(first.LastSeen) {
			t.Errorf("event at %s outside the window", ev.Time)
		}
	}
}

// TestArchiveStopsAndFails: an archive that fails mid-way says so after the events
// before the failure; one closed before its end stops reading the store.
func TestArchiveStopsAndFails(t *testing.T) {
	broken := errors.New("connection reset")
	stopped := make(chan int, 1)
	events := func(n int, fail error) iter.Seq2[ingest.Event, error] {
		return func(yield func(ingest.Event, error) bool) {
			for i := range n {
				if !yield(ingest.Event{Time: synth.DefaultStart.Add(time.Duration(i) * time.Millisecond)}, nil) {
					stopped <- i
					return
				}
			}
			if fail != nil {
				yield(ingest.Event{}, fail)
			}
		}
	}
	ctx := context.Background()
	a := replay.NewArchive(events(10_000, broken))
	got := 0
	var err error
	for err == nil {
		var b *ingest.Batch
		if b, err = a.Next(ctx); b != nil {
			got += len(b.Events)
		}
	}
	a.Close()
	if got != 10_000 || !errors.Is(err, broken) {
		t.Errorf("read %d events, then %v; want 10000, then %v", got, err, broken)
	}

	a = replay.NewArchive(events(1_000_000, nil))
	if _, err := a.Next(ctx); err != nil {
		t.Fatal(err)
	}
	a.Close()
	select {
	case i := <-stopped:
		if i >= 1_000_000 {
			t.Errorf("stopped at %d", i)
		}
	default:
		t.Error("Close returned while the archive was still being read")
	}
}

func TestFilter(t *testing.T) {
	ev := ingest.Event{ClientKey: "k1", TokenFP: "t1", ClientIP: "203.0.113.7", Method: "GET", Route: "/v1/orders/{id}"}
	for _, tc := range []struct {
		name string
		f    replay.Filter
		want bool
	}{
		{"nothing set", replay.Filter{}, true},
		{"client key", replay.Filter{Keys: []string{"k0", "k1"}}, true},
		{"token fingerprint", replay.Filter{Keys: []string{"t1"}}, true},
		{"another key", replay.Filter{Keys: []string{"k2"}}, false},
		{"route with its method", replay.Filter{Routes: []string{"GET /v1/orders/{id}"}}, true},
		{"route alone", replay.Filter{Routes: []string{"/v1/orders/{id}"}}, true},
		{"route, another method", replay.Filter{Routes: []string{"POST /v1/orders/{id}"}}, false},
		{"a prefix of the route", replay.Filter{Routes: []string{"GET /v1/orders"}}, false},
		{"client IP", replay.Filter{ClientIPs: []string{"203.0.113.7"}}, true},
		{"another IP", replay.Filter{ClientIPs: []string{"203.0.113.8"}}, false},
		{"a network holding it", replay.Filter{ClientIPs: []string{"203.0.113.0/24"}}, true},
		{"a network that does not", replay.Filter{ClientIPs: []string{"198.51.100.0/24"}}, false},
		{"every list matches", replay.Filter{Keys: []string{"k1"}, Routes: []string{"/v1/orders/{id}"}, ClientIPs: []string{"203.0.113.7"}}, true},
		{"one list does not", replay.Filter{Keys: []string{"k1"}, ClientIPs: []string{"198.51.100.1"}}, false},
	} {
		if got := tc.f.Match(&ev); got != tc.want {
			t.Errorf("%s: Match(%+v) = %v, want %v", tc.name, tc.f, got, tc.want)
		}
	}
	// An IPv6 client's key, as its alerts name it, keeps the events of its addresses;
	// an address or network written otherwise than events hold it names it all the same.
	v6 := ingest.Event{ClientIP: "2001:db8:1:2::9"}
	for _, tc := range []struct {
		ev   ingest.Event
		c    string
		want bool
	}{
		{v6, "2001:db8:1:2::/64", true},
		{v6, "2001:DB8:1:2:0:0:0:9", true},
		{v6, "2001:db8:1:2::9%eth0", true},
		{v6, "2001:db8:1:2::8", false},
		{ev, "::ffff:203.0.113.7", true},
		{ev, "::ffff:203.0.113.0/120", true},
		{ev, "::ffff:198.51.100.0/120", false},
		{ev, "2001:db8::/32", false},
	} {
		if f := (replay.Filter{ClientIPs: []string{tc.c}}); f.Match(&tc.ev) != tc.want {
			t.Errorf("--client-ip %s keeps %s: %v, want %v", tc.c, tc.ev.ClientIP, !tc.want, tc.want)
		}
	}
}

// TestSpan: a Span counts every event read and those within its range, whatever a
// filter behind it keeps, and the times of the earliest and latest.
func TestSpan(t *testing.T) {
	t0 := time.Date(2026, 11, 2, 6, 0, 0, 0, time.UTC)
	last := t0.Add(2499 * 10 * time.Millisecond)
	for _, tc := range []struct {
		name     string
		from, to time.Time
		within   int
	}{
		{"unbounded", time.Time{}, time.Time{}, 2500},
		{"from inside", t0.Add(10 * time.Second), time.Time{}, 1500},
		{"to inside", time.Time{}, t0.Add(time.Second), 100},
		{"after the data", t0.Add(time.Hour), t0.Add(2 * time.Hour), 0},
		{"before the data", t0.Add(-time.Hour), t0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := replay.Span{From: tc.from, To: tc.to}
			src := replay.Filtered(s.Source(&keySource{n: 2500, start: t0}), replay.Filter{Keys: []string{"no such key"}})
			for {
				b, err := src.Next(context.Background())
				if b != nil && len(b.Events) > 0 {
					t.Fatalf("the filter kept %d events", len(b.Events))
				}
				if err != nil {
					break
				}
			}
			if s.Read != 2500 || s.Within != tc.within || !s.First.Equal(t0) || !s.Last.Equal(last) {
				t.Errorf("span %+v, want 2500 read, %d within, from %s to %s", s, tc.within, t0, last)
			}
		})
	}
}

// TestSourceErrorsNamedOnce: an error of the archive (or of a Kafka range) as read by
// Run and WriteEvents names the replay once, not "replay: reading the input: replay:".
func TestSourceErrorsNamedOnce(t *testing.T) {
	failing := func() detectors.EventSource {
		return replay.NewArchive(func(yield func(ingest.Event, error) bool) {
			if yield(ingest.Event{Time: time.Date(2026, 11, 2, 6, 0, 0, 0, time.UTC)}, nil) {
				yield(ingest.Event{}, errors.New("store: connection reset"))
			}
		})
	}
	want := "replay: reading the input: archive: store: connection reset"
	for _, tc := range []struct {
		name string
		read func(detectors.EventSource) error
	}{
		{"Run", func(src detectors.EventSource) error {
			_, err := replay.Run(context.Background(), replay.Options{Source: src, Detectors: demoDetectors(), Out: io.Discard})
			return err
		}},
		{"WriteEvents", func(src detectors.EventSource) error {
			_, err := replay.WriteEvents(context.Background(), src, time.Time{}, time.Time{}, io.Discard)
			return err
		}},
	} {
		src := failing()
		if err := tc.read(src); err == nil || err.Error() != want {
			t.Errorf("%s: %v, want %q", tc.name, err, want)
		}
		src.(*replay.Archive).Close()
	}
}

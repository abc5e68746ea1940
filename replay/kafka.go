package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/ingest"
)

// KafkaOptions says which stretch of which topics a KafkaRange reads.
type KafkaOptions struct {
	Brokers []string        // required
	Dialer  *kafkago.Dialer // TLS and SASL (ingest/kafka.NewDialer); nil: plaintext
	Topics  []ingest.TopicConfig
	// Start and End bound the read: on every partition of every topic, from the first
	// record stamped (by Kafka timestamp) at or after Start up to the last one before
	// the first stamped at or after End (the partition's end when none is). Records
	// are stamped when a shipper sends them, a little after their event time: read a
	// margin around the event times wanted and cut by event time afterwards. A backlog
	// shipped late is stamped long after its events, so when the first record stamped
	// after End is an event of the range, the partition is read on past it until a
	// chunk of its records holds no event at or before End (or to its end when the
	// range was opened): see rangePart.byEvent.
	Start, End time.Time
	Parser     ingest.ParserOptions
	// DeadLetters receives the records the parsers reject; nil: they are only counted.
	DeadLetters ingest.DeadLetters
	Workers     int // parsing goroutines; 0: GOMAXPROCS
	BatchSize   int // events a batch; 0: 4096
}

// PartitionStats is what a KafkaRange read from one partition.
type PartitionStats struct {
	Partition  ingest.Partition
	Start, End int64 // offsets: the first read, and the one after the last
	Records    int64 // records read
	Events     int64
	Rejected   int64
	First      time.Time // event times
	Last       time.Time
}

// KafkaRange reads a time range of Kafka topics without a consumer group: every
// partition from the offset of its first record stamped at Start to the one before the
// first stamped at End, read from the partition leaders as kafka-go's Reader does (a
// Reader with a GroupID cannot seek by time). Records are parsed on several goroutines
// with the topic's format; the partitions are merged by event time, each keeping its
// own order, as the live source merges them, and each is a partition of its own in the
// batches: opened in the first batch and ended after its last record, so the engine
// judges lateness per partition exactly as live.
type KafkaRange struct {
	opts  KafkaOptions
	parts []*rangePart
	live  []*rangePart // partitions not ended yet
	work  chan rangeChunk

	started bool
	opened  bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

type rangePart struct {
	st     PartitionStats
	format string
	chunks chan rangeChunk // parsed in order; closed after the last
	// byEvent: the partition's records are stamped after End while their events are
	// not; it ends at the first chunk whose events are all after End, which stops its
	// fetcher (stop) and sets st.End to that chunk's first offset.
	byEvent bool
	stop    context.CancelFunc
	ended   bool

	// cur is the chunk being merged, from at, with the keys it is merged by
	// (ingest.AppendEarliestAhead); next is the partition's following chunk with
	// events (nil when none), read ahead so that the last records of cur have their
	// successors' times to go by: a record stamped hours ahead at the end of a chunk
	// would otherwise hold its partition back behind every other until the range's end.
	cur, next      []ingest.Event
	keys, nextKeys []int64
	at             int
}

// rangeChunk is a run of one partition's records that one goroutine parses.
type rangeChunk struct {
	part    *rangePart
	values  [][]byte
	offsets []int64
	err     error // the fetch failed: no records
	res     chan parsed
}

type parsed struct {
	events  []ingest.Event
	letters []ingest.DeadLetter
}

const (
	defaultRangeBatch = 4096
	rangeChunkRecords = 1024
)

// NewKafkaRange finds the partitions of the topics and the offsets of Start and End
// on each. It reads no record: that starts with the first Next.
func NewKafkaRange(ctx context.Context, opts KafkaOptions) (*KafkaRange, error) {
	if len(opts.Brokers) == 0 {
		return nil, errors.New("replay: kafka: no brokers")
	}
	if len(opts.Topics) == 0 {
		return nil, errors.New("replay: kafka: no topics")
	}
	if !opts.End.After(opts.Start) {
		return nil, fmt.Errorf("replay: kafka: the range ends (%s) before it starts (%s)", opts.End.Format(time.RFC3339), opts.Start.Format(time.RFC3339))
	}
	if opts.Dialer == nil {
		opts.Dialer = &kafkago.Dialer{Timeout: 10 * time.Second, DualStack: true}
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = defaultRangeBatch
	}
	for _, t := range opts.Topics {
		if _, err := ingest.NewParser(t.Format, opts.Parser); err != nil {
			return nil, fmt.Errorf("replay: kafka: topic %s: %w", t.Name, err)
		}
	}
	k := &KafkaRange{opts: opts}
	for _, t := range opts.Topics {
		ids, err := k.partitions(ctx, t.Name)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			p := &rangePart{format: t.Format, st: PartitionStats{Partition: ingest.Partition{Source: t.Name, ID: int32(id)}}}
			if err := k.offsets(ctx, p); err != nil {
				return nil, err
			}
			k.parts = append(k.parts, p)
		}
	}
	k.live = slices.Clone(k.parts)
	return k, nil
}

// partitions returns the partition ids of topic, asking each broker in turn.
func (k *KafkaRange) partitions(ctx context.Context, topic string) ([]int, error) {
	var errs []error
	for _, b := range k.opts.Brokers {
		ps, err := k.opts.Dialer.LookupPartitions(ctx, "tcp", b, topic)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(ps) == 0 {
			return nil, fmt.Errorf("replay: kafka: topic %s does not exist", topic)
		}
		ids := make([]int, len(ps))
		for i, p := range ps {
			ids[i] = p.ID
		}
		slices.Sort(ids)
		return ids, nil
	}
	return nil, fmt.Errorf("replay: kafka: partitions of %s: %w", topic, errors.Join(errs...))
}

// offsets asks p's leader for the offsets of Start and End.
func (k *KafkaRange) offsets(ctx context.Context, p *rangePart) error {
	var conn *kafkago.Conn
	var errs []error
	for _, b := range k.opts.Brokers {
		c, err := k.opts.Dialer.DialLeader(ctx, "tcp", b, p.st.Partition.Source, int(p.st.Partition.ID))
		if err == nil {
			conn = c
			break
		}
		errs = append(errs, err)
	}
	if conn == nil {
		return fmt.Errorf("replay: kafka: leader of %s: %w", p.st.Partition, errors.Join(errs...))
	}
	defer conn.Close()
	first, last, err := conn.ReadOffsets()
	if err != nil {
		return fmt.Errorf("replay: kafka: offsets of %s: %w", p.st.Partition, err)
	}
	// An offset of -1 (or past the end) means no record is stamped that late.
	at := func(t time.Time) (int64, error) {
		o, err := conn.ReadOffset(t)
		if err != nil {
			return 0, fmt.Errorf("replay: kafka: offset of %s at %s: %w", p.st.Partition, t.Format(time.RFC3339), err)
		}
		if o < 0 || o > last {
			return last, nil
		}
		return max(o, first), nil
	}
	if p.st.Start, err = at(k.opts.Start); err != nil {
		return err
	}
	if p.st.End, err = at(k.opts.End); err != nil {
		return err
	}
	p.st.End = max(p.st.End, p.st.Start)
	if p.st.End < last {
		if p.byEvent, err = k.stampedLate(conn, p, p.st.End); err != nil {
			return err
		}
		if p.byEvent {
			p.st.End = last
		}
	}
	return nil
}

// lateProbe is how many records from the first stamped after End stampedLate reads to
// find one it can parse.
const lateProbe = 8

// stampedLate reports whether the record at offset o of p (the first stamped at or
// after End), or the first of the lateProbe from it that parses, is an event before
// End: a record of the range shipped late.
func (k *KafkaRange) stampedLate(conn *kafkago.Conn, p *rangePart, o int64) (bool, error) {
	fail := func(err error) (bool, error) {
		return false, fmt.Errorf("replay: kafka: reading %s at offset %d: %w", p.st.Partition, o, err)
	}
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return fail(err)
	}
	if _, err := conn.Seek(o, kafkago.SeekAbsolute); err != nil {
		return fail(err)
	}
	parser, err := ingest.NewParser(p.format, k.opts.Parser)
	if err != nil {
		return false, err
	}
	batch := conn.ReadBatch(1, 1<<20)
	defer batch.Close()
	var evs []ingest.Event
	for range lateProbe {
		m, err := batch.ReadMessage()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return false, nil
			}
			return fail(err)
		}
		if evs, err = ingest.AppendParsed(parser, evs[:0], m.Value); len(evs) > 0 {
			// Strictly before: a record stamped with its own event time, End to the
			// millisecond, was not shipped late.
			return evs[0].Time.Before(k.opts.End), nil
		}
	}
	return false, nil
}

// Partitions returns what was read of each partition so far.
func (k *KafkaRange) Partitions() []PartitionStats {
	out := make([]PartitionStats, len(k.parts))
	for i, p := range k.parts {
		out[i] = p.st
	}
	return out
}

// start starts a fetching goroutine per partition and the parsing goroutines.
func (k *KafkaRange) start() {
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	k.work = make(chan rangeChunk, 2*k.opts.Workers)
	for range k.opts.Workers {
		k.wg.Go(func() { k.parse(ctx) })
	}
	var fetchers sync.WaitGroup
	for _, p := range k.parts {
		p.chunks = make(chan rangeChunk, 4)
		pctx, stop := context.WithCancel(ctx)
		p.stop = stop
		fetchers.Go(func() { k.fetch(pctx, p) })
	}
	k.wg.Go(func() {
		fetchers.Wait()
		close(k.work)
	})
	k.started = true
}

// fetch reads p's records from its start offset to its end one and hands them, a chunk
// at a time, to the parsing goroutines and, in order, to Next.
func (k *KafkaRange) fetch(ctx context.Context, p *rangePart) {
	defer close(p.chunks)
	start, end := p.st.Start, p.st.End // Next may end a byEvent partition early
	if start >= end {
		return
	}
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:         k.opts.Brokers,
		Topic:           p.st.Partition.Source,
		Partition:       int(p.st.Partition.ID),
		Dialer:          k.opts.Dialer,
		MinBytes:        1,
		MaxBytes:        1 << 20, // a partition's fetch, as the live source's
		MaxWait:         500 * time.Millisecond,
		ReadLagInterval: -1,
		QueueCapacity:   rangeChunkRecords,
	})
	defer r.Close()
	send := func(c rangeChunk) bool {
		c.part, c.res = p, make(chan parsed, 1)
		if c.err == nil {
			select {
			case k.work <- c:
			case <-ctx.Done():
				return false
			}
		}
		select {
		case p.chunks <- c:
			return c.err == nil
		case <-ctx.Done():
			return false
		}
	}
	if err := r.SetOffset(start); err != nil {
		send(rangeChunk{err: fmt.Errorf("kafka: reading %s from offset %d: %w", p.st.Partition, start, err)})
		return
	}
	var c rangeChunk
	size := 0 // bytes of c's values
	for next := start; next < end; {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() == nil {
				send(rangeChunk{err: fmt.Errorf("kafka: reading %s at offset %d: %w", p.st.Partition, next, err)})
			}
			return
		}
		if m.Offset >= end {
			break
		}
		next = m.Offset + 1
		c.values = append(c.values, m.Value)
		c.offsets = append(c.offsets, m.Offset)
		size += len(m.Value)
		if len(c.values) == rangeChunkRecords || size >= ingest.MaxBatchBytes || next >= end {
			if !send(c) {
				return
			}
			c, size = rangeChunk{}, 0
		}
	}
	if len(c.values) > 0 {
		send(c)
	}
}

// parse is a parsing goroutine: it parses every chunk it gets with a parser of the
// chunk's format of its own.
func (k *KafkaRange) parse(ctx context.Context) {
	parsers := map[string]ingest.Parser{}
	for c := range k.work {
		p := parsers[c.part.format]
		if p == nil {
			p, _ = ingest.NewParser(c.part.format, k.opts.Parser) // checked by NewKafkaRange
			parsers[c.part.format] = p
		}
		out := parsed{events: make([]ingest.Event, 0, len(c.values))}
		for i, v := range c.values {
			var err error
			if out.events, err = ingest.AppendParsed(p, out.events, v); err == nil {
				continue
			}
			out.letters = append(out.letters, ingest.NewDeadLetter(time.Now(), c.part.st.Partition.Source, c.part.format,
				int(c.part.st.Partition.ID), c.offsets[i], v, err))
		}
		select {
		case c.res <- out:
		case <-ctx.Done():
			return
		}
	}
}

// Next returns the next batch: the partitions' events merged by event time, each
// partition's in its own order, with their runs; io.EOF after the last. Its errors do
// not begin with "replay: ": Run, WriteEvents and Timelines, which read it, say that.
func (k *KafkaRange) Next(ctx context.Context) (*ingest.Batch, error) {
	if !k.started {
		k.start()
	}
	if len(k.live) == 0 && k.opened {
		return nil, io.EOF
	}
	b := ingest.NewBatch(make([]ingest.Event, 0, k.opts.BatchSize), nil)
	if !k.opened {
		for _, p := range k.parts {
			b.Opened = append(b.Opened, p.st.Partition)
		}
		k.opened = true
	}
	for len(b.Events) < k.opts.BatchSize && len(k.live) > 0 {
		var best *rangePart
		var bestKey int64
		for i := 0; i < len(k.live); i++ {
			p := k.live[i]
			if p.at == len(p.cur) {
				ok, err := k.turn(ctx, p)
				if err != nil {
					return nil, err
				}
				if !ok {
					b.Ended = append(b.Ended, p.st.Partition)
					k.live = slices.Delete(k.live, i, i+1)
					i--
					continue
				}
			}
			key := p.keys[p.at]
			if p.next != nil {
				key = min(key, p.nextKeys[0])
			}
			if best == nil || key < bestKey {
				best, bestKey = p, key
			}
		}
		if best == nil {
			break
		}
		b.Events = append(b.Events, best.cur[best.at])
		best.cur[best.at] = ingest.Event{}
		best.at++
		if n := len(b.Runs); n > 0 && b.Runs[n-1].Partition == best.st.Partition {
			b.Runs[n-1].N++
		} else {
			b.Runs = append(b.Runs, ingest.Run{Partition: best.st.Partition, N: 1})
		}
	}
	if len(b.Events) == 0 {
		b.Runs = nil
	}
	return b, nil
}

// turn moves p on to its next chunk with events and reads the one after it; false
// when p has no more.
func (k *KafkaRange) turn(ctx context.Context, p *rangePart) (bool, error) {
	if p.cur == nil { // the first turn: nothing was read ahead yet
		if err := k.readAhead(ctx, p); err != nil {
			return false, err
		}
	}
	if p.next == nil {
		return false, nil
	}
	p.cur, p.at = p.next, 0
	p.keys, p.nextKeys = p.nextKeys, p.keys
	return true, k.readAhead(ctx, p)
}

// readAhead reads p's next chunk with events into p.next, with its keys.
func (k *KafkaRange) readAhead(ctx context.Context, p *rangePart) error {
	next, err := k.pull(ctx, p)
	p.next, p.nextKeys = next, ingest.AppendEarliestAhead(p.nextKeys[:0], next)
	return err
}

// pull takes p's next parsed chunk with events; nil when p has no more.
func (k *KafkaRange) pull(ctx context.Context, p *rangePart) ([]ingest.Event, error) {
	for !p.ended {
		var c rangeChunk
		var ok bool
		select {
		case c, ok = <-p.chunks:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if !ok {
			return nil, nil
		}
		if c.err != nil {
			return nil, c.err
		}
		var r parsed
		select {
		case r = <-c.res:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if p.byEvent && len(r.events) > 0 {
			// Its events after End are of the later records shipped with the backlog.
			r.events = slices.DeleteFunc(r.events, func(ev ingest.Event) bool { return ev.Time.After(k.opts.End) })
			if len(r.events) == 0 {
				p.ended, p.st.End = true, c.offsets[0]
				p.stop()
				return nil, nil
			}
		}
		p.st.Records += int64(len(c.values))
		p.st.Events += int64(len(r.events))
		for _, l := range r.letters {
			if !l.Kept {
				p.st.Rejected++
			}
		}
		if len(r.letters) > 0 && k.opts.DeadLetters != nil {
			if err := k.opts.DeadLetters.Put(ctx, r.letters); err != nil {
				return nil, fmt.Errorf("dead letters: %w", err)
			}
		}
		for i := range r.events {
			t := r.events[i].Time
			if p.st.First.IsZero() || t.Before(p.st.First) {
				p.st.First = t
			}
			if t.After(p.st.Last) {
				p.st.Last = t
			}
		}
		if len(r.events) > 0 {
			return r.events, nil
		}
	}
	return nil, nil
}

// Close stops reading and waits for the goroutines.
func (k *KafkaRange) Close() error {
	if !k.started {
		return nil
	}
	k.cancel()
	for _, p := range k.parts {
		for range p.chunks { // unblock a fetcher waiting to hand over a chunk
		}
	}
	k.wg.Wait()
	return nil
}

// String names the range, for messages.
func (k *KafkaRange) String() string {
	names := make([]string, len(k.opts.Topics))
	for i, t := range k.opts.Topics {
		names[i] = t.Name
	}
	return fmt.Sprintf("kafka %s (%d partitions)", strings.Join(names, ","), len(k.parts))
}

package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// partition is the delivery and commit state of one topic partition assigned to this
// member.
type partition struct {
	topic *topic
	id    int
	key   ingest.Partition // how the engine names it

	owner   atomic.Uint64 // the generation it is assigned in; 0 once revoked
	next    atomic.Int64  // offset after the last record taken into a batch; -1 before the first
	fetched chan fetched  // its reader's records, to the fetching goroutine

	// Owned by the fetching goroutine.
	span       *span     // its run in the batch being built
	mark       uint64    // seq of that batch
	lag        int64     // records after the last one taken, by its high-water mark; -1 before the first
	ahead      lookahead // its next records, taken from fetched and not yet into a batch
	emptySince time.Time // when it was first seen with records on the broker and none in hand
	pastFrom   uint64    // Source.picks+1 when its records in hand were first seen more than alignSkew past lastAt; 0: they are not
	lastAt     time.Time // the time the last event taken was ordered at (Source.earliest)
	lastPick   uint64    // Source.picks when it was taken

	// Guarded by Source.mu; resets is written under it and read by the fetching goroutine.
	resets    atomic.Uint64 // rewinds and revocations; runs begun before the last one release nothing
	queue     []*span       // runs cut and not yet released, in offset order, from head
	head      int
	done      int64 // end (last offset + 1) of the released prefix; -1 before the first run
	committed int64 // the end this source last committed, or where its first run began
}

func newPartition(t *topic, id int, queue int) *partition {
	p := &partition{topic: t, id: id, key: ingest.Partition{Source: t.name, ID: int32(id)}, done: -1, committed: -1,
		fetched: make(chan fetched, queue), lag: -1}
	p.next.Store(-1)
	return p
}

// A span is the run of offsets one batch holds of one partition.
type span struct {
	part        *partition
	resets      uint64 // the partition's resets when the run began
	first, last int64
	done        bool // acknowledged
}

// commitRef says what a commit in flight will make committed.
type commitRef struct {
	p      *partition
	resets uint64
	end    int64
}

// release marks spans acknowledged and commits, for every partition this member owns
// in the current generation, the end of its contiguous acknowledged prefix. A commit
// that fails (the group is rebalancing, the coordinator moved) is logged and tried
// again with the next acknowledgement or generation: the offsets stay uncommitted
// meanwhile, which at worst delivers their records again.
func (s *Source) release(ctx context.Context, spans []*span) error {
	err := s.commit(ctx, spans, false)
	if err != nil && !errors.Is(err, ErrClosed) {
		s.log.Warn("kafka commit failed; the next acknowledgement tries again", "err", err)
		return nil
	}
	return err
}

// commit is release, reporting a failed commit. final commits even after Close: it is
// Close's last commit.
func (s *Source) commit(ctx context.Context, spans []*span, final bool) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()

	s.mu.Lock()
	closed, g := s.closed && !final, s.gen
	for _, sp := range spans {
		p := sp.part
		if sp.done || sp.resets != p.resets.Load() {
			continue
		}
		sp.done = true
		for p.head < len(p.queue) && p.queue[p.head].done {
			p.done = p.queue[p.head].last + 1
			p.queue[p.head] = nil
			p.head++
		}
		switch {
		case p.head == len(p.queue):
			p.queue, p.head = p.queue[:0], 0
		case p.head >= 64 && 2*p.head >= len(p.queue):
			n := copy(p.queue, p.queue[p.head:])
			clear(p.queue[n:])
			p.queue, p.head = p.queue[:n], 0
		}
		if p.done > p.committed {
			s.dirty[p] = struct{}{}
		}
	}
	s.toCommit = s.toCommit[:0]
	offsets := map[string]map[int]int64{}
	if g != nil {
		for p := range s.dirty {
			if p.owner.Load() == g.seq && p.done > p.committed {
				s.toCommit = append(s.toCommit, commitRef{p: p, resets: p.resets.Load(), end: p.done})
				if offsets[p.topic.name] == nil {
					offsets[p.topic.name] = map[int]int64{}
				}
				offsets[p.topic.name][p.id] = p.done // the next record to read
			}
		}
	}
	s.mu.Unlock()
	if len(s.toCommit) == 0 {
		if closed && len(spans) > 0 {
			return ErrClosed
		}
		return nil
	}
	if closed {
		return ErrClosed
	}

	// Generation.CommitOffsets takes no context: it is bounded by the group's Timeout
	// (kafka.timeout) on the coordinator's connection.
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.gen.CommitOffsets(offsets); err != nil {
		return fmt.Errorf("kafka: commit offsets of %d partitions in generation %d: %w", len(s.toCommit), g.gen.ID, err)
	}

	s.mu.Lock()
	for _, c := range s.toCommit {
		p := c.p
		if c.resets != p.resets.Load() {
			continue
		}
		p.committed = max(p.committed, c.end)
		if p.done <= p.committed {
			delete(s.dirty, p)
		}
	}
	s.mu.Unlock()
	return nil
}

// aheadRecords is how many of a partition's next records the fetching goroutine holds,
// so as to order the partition by the earliest of them (see Source.earliest).
const aheadRecords = 64

// A lookahead is a partition's next records in order, and the smallest of their times
// (fetched.at): a ring, and a queue of the timestamps that are the smallest of the
// records from theirs to the last (a sliding-window minimum), so that each record
// costs O(1) however the stamps go.
type lookahead struct {
	recs      [aheadRecords]fetched
	head, n   int
	mins      [aheadRecords]int64 // ms, non-decreasing, a ring too
	mHead, mN int
}

func (a *lookahead) len() int   { return a.n }
func (a *lookahead) full() bool { return a.n == aheadRecords }

// earliest returns the smallest time of the records held; the lookahead must not
// be empty.
func (a *lookahead) earliest() time.Time { return time.UnixMilli(a.mins[a.mHead]) }

// push appends f; the lookahead must not be full.
func (a *lookahead) push(f fetched) {
	a.recs[(a.head+a.n)%aheadRecords] = f
	a.n++
	t := f.at
	for a.mN > 0 && a.mins[(a.mHead+a.mN-1)%aheadRecords] > t {
		a.mN--
	}
	a.mins[(a.mHead+a.mN)%aheadRecords] = t
	a.mN++
}

// front returns the next record, in place: the fetching goroutine takes its event
// from there rather than copy the record out first. The lookahead must not be empty.
func (a *lookahead) front() *fetched { return &a.recs[a.head] }

// drop removes the next record; the lookahead must not be empty.
func (a *lookahead) drop() {
	f := &a.recs[a.head]
	if a.mins[a.mHead] == f.at {
		a.mHead = (a.mHead + 1) % aheadRecords
		a.mN--
	}
	*f = fetched{} // its event and value are the batch's now
	a.head = (a.head + 1) % aheadRecords
	a.n--
}

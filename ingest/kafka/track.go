package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"

	kafkago "github.com/segmentio/kafka-go"
)

// partition is the delivery and commit state of one topic partition.
type partition struct {
	topic *topic
	id    int

	// Owned by the fetching goroutine.
	next  int64  // offset after the last record taken into a batch; -1 before the first
	low   int64  // first offset taken since the partition was first seen or rewound
	span  *span  // its run in the batch being built
	mark  uint64 // seq of the last batch that fetched a record of it
	fresh bool   // that batch's first record of it was fetched again, or was its first ever

	// Guarded by Source.mu; resets is written only by the fetching goroutine, under the lock.
	resets    uint64  // rewinds; runs queued before the last one release nothing
	queue     []*span // runs cut and not yet released, in offset order, from head
	head      int
	epoch     uint64 // the generation count in which a record of it was last fetched
	done      int64  // end (last offset + 1) of the released prefix; -1 before the first run
	committed int64  // the end this source last committed, or where its first run began
}

// A span is the run of offsets one batch holds of one partition.
type span struct {
	part        *partition
	resets      uint64 // the partition's rewind count when the run began
	first, last int64
	done        bool // acknowledged
}

// commitRef says what a commit in flight will make committed.
type commitRef struct {
	p      *partition
	resets uint64
	end    int64
}

// rewind starts p afresh at off: the group's committed offset went back below anything
// this source took into a batch, so the runs in flight no longer stand for what comes next.
func (s *Source) rewind(p *partition, off int64) {
	s.mu.Lock()
	p.resets++
	clear(p.queue)
	p.queue, p.head = p.queue[:0], 0
	p.done, p.committed = -1, -1
	delete(s.dirty, p)
	s.mu.Unlock()
	p.span, p.next = nil, -1
	s.log.Warn("kafka partition rewound below the records taken; they will be delivered again",
		"topic", p.topic.name, "partition", p.id, "offset", off)
}

// observeGenerations returns the generation count, first counting the generations that
// started since the last look.
func (s *Source) observeGenerations(r *kafkago.Reader) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observeGenerationsLocked(r)
	return s.epoch
}

// observeGenerationsLocked reads kafka-go's rebalance counter, which counts each
// generation the reader joined (and each partition leader change, which only makes the
// source more careful). Any count starts a new epoch: every partition then waits for a
// record fetched in it before it commits again.
func (s *Source) observeGenerationsLocked(r *kafkago.Reader) {
	if n := r.Stats().Rebalances; n > 0 {
		s.epoch++
		s.log.Info("kafka group rebalanced; partitions commit again once a record of theirs arrives", "rebalances", n)
	}
}

// release marks spans acknowledged and commits, for every partition this member is known
// to own, the end of its contiguous acknowledged prefix.
func (s *Source) release(ctx context.Context, spans []*span) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()

	s.mu.Lock()
	r, closed := s.reader, s.closed
	if r != nil && !closed {
		s.observeGenerationsLocked(r)
	}
	for _, sp := range spans {
		p := sp.part
		if sp.done || sp.resets != p.resets {
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
	s.toCommit, s.msgs = s.toCommit[:0], s.msgs[:0]
	for p := range s.dirty {
		if p.epoch == s.epoch && p.done > p.committed {
			s.toCommit = append(s.toCommit, commitRef{p: p, resets: p.resets, end: p.done})
			// kafka-go commits a message's offset + 1: the next record to read.
			s.msgs = append(s.msgs, kafkago.Message{Topic: p.topic.name, Partition: p.id, Offset: p.done - 1})
		}
	}
	s.mu.Unlock()
	if len(s.msgs) == 0 {
		return nil
	}
	if closed {
		return ErrClosed
	}

	cctx, cancel := context.WithTimeoutCause(ctx, s.cfg.Timeout, errCommitTimeout)
	defer cancel()
	if err := r.CommitMessages(cctx, s.msgs...); err != nil {
		switch {
		case errors.Is(err, io.ErrClosedPipe):
			return ErrClosed
		case cctx.Err() != nil && ctx.Err() == nil:
			err = context.Cause(cctx)
		}
		return fmt.Errorf("kafka: commit offsets of %d partitions: %w", len(s.msgs), err)
	}

	s.mu.Lock()
	for _, c := range s.toCommit {
		p := c.p
		if c.resets != p.resets {
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

var errCommitTimeout = errors.New("kafka: offset commit timed out (kafka.timeout)")

package store

import (
	"context"
	"fmt"
	"iter"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// readWindow is how much of the archive one query reads. The sorting key leads with the
// hour, so an hour is one contiguous index range, and bounding each query's sort keeps
// the server's memory flat however long the replay.
const readWindow = time.Hour

// ReadEvents yields the archived events with from <= time < to, in time order, for
// replay and forensics. A non-empty key keeps the events whose client_key or token_fp
// is key. Events with the same millisecond come in a fixed order, so reading a range
// twice gives the same sequence: the order they were archived in within a block, and
// blocks by their id (random: across blocks this is not arrival order). Each event
// appears once even when ClickHouse holds it twice and has not merged the copies yet.
//
// On failure the sequence yields one zero Event with the error and stops. Only events
// already in ClickHouse are read: Flush first to include what is still buffered.
func (c *ClickHouse) ReadEvents(ctx context.Context, from, to time.Time, key string) iter.Seq2[ingest.Event, error] {
	return func(yield func(ingest.Event, error) bool) {
		// Events have millisecond times: the first at or after from, and the first at
		// or after to, are at these milliseconds.
		fromMs, toMs := ceilMilli(from), ceilMilli(to)
		// Clamp the range to the seconds the archive holds, so a wide range (from the
		// zero time, say) costs no query per empty hour.
		var lo, hi uint32
		var parts uint64
		err := c.conn.QueryRow(ctx, "SELECT toUInt32(min(min_time)), toUInt32(max(max_time)), count() FROM system.parts WHERE database = currentDatabase() AND table = 'events' AND active").Scan(&lo, &hi, &parts)
		if err != nil {
			yield(ingest.Event{}, fmt.Errorf("store: reading the archive: %w", err))
			return
		}
		if parts == 0 {
			return
		}
		fromMs = max(fromMs, int64(lo)*1000)
		toMs = min(toMs, (int64(hi)+1)*1000)
		for start := time.UnixMilli(fromMs).Truncate(readWindow); start.UnixMilli() < toMs; start = start.Add(readWindow) {
			lo, hi := max(fromMs, start.UnixMilli()), min(toMs, start.Add(readWindow).UnixMilli())
			if lo >= hi {
				continue
			}
			if !c.readWindow(ctx, lo, hi, key, yield) {
				return
			}
		}
	}
}

// readWindow yields the events in [lo, hi) milliseconds and reports whether to go on.
func (c *ClickHouse) readWindow(ctx context.Context, lo, hi int64, key string, yield func(ingest.Event, error) bool) bool {
	// time is whole seconds: select the seconds that overlap the window, then cut at
	// the millisecond below.
	q := "SELECT " + insertColumns + " FROM events WHERE time >= toDateTime(?) AND time <= toDateTime(?)"
	args := []any{floorDiv(max(lo, 0), 1000), floorDiv(max(hi-1, 0), 1000)}
	if key != "" {
		q += " AND (client_key = ? OR token_fp = ?)"
		args = append(args, key, key)
	}
	q += " ORDER BY time, ms, batch_id, seq"
	rows, err := c.conn.Query(ctx, q, args...)
	if err != nil {
		return yield(ingest.Event{}, fmt.Errorf("store: reading the archive: %w", err))
	}
	defer rows.Close()
	var (
		ev                 ingest.Event
		t                  time.Time
		ms, status         uint16
		batchID, prevBatch uint64
		seq, prevSeq       uint32
		first              = true
	)
	for rows.Next() {
		err := rows.Scan(&t, &ms, &ev.Source, &ev.ClientKey, &ev.TokenFP, &ev.Device, &ev.ClientIP,
			&ev.Country, &ev.Method, &ev.Host, &ev.Route, &ev.Path, &status, &ev.Action, &ev.RuleID,
			&ev.UserAgent, &ev.RequestID, &batchID, &seq)
		if err != nil {
			return yield(ingest.Event{}, fmt.Errorf("store: reading the archive: %w", err))
		}
		at := t.Unix()*1000 + int64(ms)
		if at < lo || at >= hi {
			continue
		}
		// Copies of one row sort next to each other: same time, ms, batch_id and seq.
		if !first && batchID == prevBatch && seq == prevSeq {
			continue
		}
		first, prevBatch, prevSeq = false, batchID, seq
		ev.Time = time.UnixMilli(at).UTC()
		ev.Status = int(status)
		if !yield(ev, nil) {
			return false
		}
	}
	if err := rows.Err(); err != nil {
		return yield(ingest.Event{}, fmt.Errorf("store: reading the archive: %w", err))
	}
	return true
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// ceilMilli returns the first Unix millisecond at or after t.
func ceilMilli(t time.Time) int64 {
	ms := t.UnixMilli() // floors, for times before 1970 too
	if t.Nanosecond()%int(time.Millisecond) != 0 {
		ms++
	}
	return ms
}

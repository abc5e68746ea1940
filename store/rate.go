package store

import (
	"context"
	"fmt"
	"iter"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// A RateQuery names the traffic whose requests per minute RequestsPerMinute counts:
// one client (Key: a client key, client IP or token fingerprint, as alerts name them)
// or one route (Method and Route).
type RateQuery struct {
	Key    string
	Method string
	Route  string
}

// Bounds of a rate query: it draws a chart for a person, over the hours around an
// incident, not a report over months.
const (
	MaxRateWindow = 24 * time.Hour
	// maxRateScan bounds the archived events the embedded store reads for one
	// route's rate (it has no per-minute counters): beyond it the counts stop, and
	// RequestsPerMinute says so.
	maxRateScan = 2_000_000
)

// ErrRateTruncated is returned (with the counts so far) when the embedded store read
// as many events as it may for one chart.
var ErrRateTruncated = fmt.Errorf("store: rate: more events than one chart may read (%d)", maxRateScan)

// rateWindow returns the number of whole minutes in [from, to), from truncated to the
// minute, and checks the window.
func rateWindow(from, to time.Time) (time.Time, int, error) {
	from = from.UTC().Truncate(time.Minute)
	if !to.After(from) || to.Sub(from) > MaxRateWindow {
		return from, 0, fmt.Errorf("store: rate: window must be positive and at most %s", MaxRateWindow)
	}
	return from, int((to.Sub(from) + time.Minute - 1) / time.Minute), nil
}

// RequestsPerMinute returns the requests of q in each minute from from (truncated to
// the minute) until to, read from the per-minute counters (route_minute, client_minute)
// or, for a token fingerprint, from the archive.
func (c *ClickHouse) RequestsPerMinute(ctx context.Context, q RateQuery, from, to time.Time) ([]int64, error) {
	from, n, err := rateWindow(from, to)
	if err != nil {
		return nil, err
	}
	out := make([]int64, n)
	var query string
	var args []any
	switch {
	case q.Route != "":
		query = "SELECT toUInt32(minute), sum(requests) FROM route_minute WHERE method = ? AND route = ? AND minute >= toDateTime(?) AND minute < toDateTime(?) GROUP BY minute"
		args = []any{q.Method, q.Route, from.Unix(), to.Unix()}
	case q.Key != "":
		query = "SELECT toUInt32(minute), sum(requests) FROM client_minute WHERE client = ? AND minute >= toDateTime(?) AND minute < toDateTime(?) GROUP BY minute"
		args = []any{q.Key, from.Unix(), to.Unix()}
	default:
		return nil, fmt.Errorf("store: rate: name a key or a route")
	}
	rows, err := c.conn.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("store: rate: %w", err)
	}
	defer rows.Close()
	found := false
	for rows.Next() {
		var m uint32
		var v uint64
		if err := rows.Scan(&m, &v); err != nil {
			return nil, fmt.Errorf("store: rate: %w", err)
		}
		if i := int((int64(m) - from.Unix()) / 60); i >= 0 && i < n {
			out[i] += int64(v)
			found = true
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: rate: %w", err)
	}
	if found || q.Route != "" {
		return out, nil
	}
	// Not a client: a token fingerprint, which only the archive has.
	return countEvents(c.ReadEvents(ctx, from, to, q.Key), q, from, out)
}

// RequestsPerMinute returns the requests of q in each minute from from (truncated to
// the minute) until to, counted from the archive: through the key index for a key,
// by reading the window's events for a route (at most 2,000,000; then the counts so
// far and ErrRateTruncated).
func (l *Local) RequestsPerMinute(ctx context.Context, q RateQuery, from, to time.Time) ([]int64, error) {
	from, n, err := rateWindow(from, to)
	if err != nil {
		return nil, err
	}
	if q.Key == "" && q.Route == "" {
		return nil, fmt.Errorf("store: rate: name a key or a route")
	}
	key := q.Key
	if q.Route != "" {
		key = ""
	}
	return countEvents(l.ReadEvents(ctx, from, to, key), q, from, make([]int64, n))
}

// countEvents adds the events of seq that q selects to out, per minute from from.
func countEvents(seq iter.Seq2[ingest.Event, error], q RateQuery, from time.Time, out []int64) ([]int64, error) {
	scanned := 0
	for ev, err := range seq {
		if err != nil {
			return nil, err
		}
		if scanned++; scanned > maxRateScan {
			return out, ErrRateTruncated
		}
		if q.Route != "" && (ev.Route != q.Route || (q.Method != "" && ev.Method != q.Method)) {
			continue
		}
		if i := int(ev.Time.Sub(from) / time.Minute); i >= 0 && i < len(out) {
			out[i]++
		}
	}
	return out, nil
}

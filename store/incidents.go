package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/gatewatch/gatewatch/detectors"
)

// Open incidents: both stores implement detectors.IncidentStore.
var (
	_ detectors.IncidentStore = (*ClickHouse)(nil)
	_ detectors.IncidentStore = (*Local)(nil)
)

// The Local store keeps open incidents in the "open_incidents" bucket under (scope,
// detector, key), NUL-separated, as JSON; a save is one transaction, durable when it
// returns.
var bucketIncidents = []byte("open_incidents")

func incidentKey(scope string, r detectors.IncidentRef) []byte {
	return []byte(scope + "\x00" + r.Detector + "\x00" + r.Key)
}

// LoadIncidents returns scope's open incidents, sorted by detector and key.
func (l *Local) LoadIncidents(ctx context.Context, scope string) ([]detectors.IncidentState, error) {
	var out []detectors.IncidentState
	prefix := []byte(scope + "\x00")
	err := l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIncidents)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var st detectors.IncidentState
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("incident %q: %w", k, err)
			}
			out = append(out, st)
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("store: loading open incidents: %w", err)
	}
	return out, nil
}

// SaveIncidents upserts open and deletes closed, in one transaction.
func (l *Local) SaveIncidents(_ context.Context, scope string, open []detectors.IncidentState, closed []detectors.IncidentRef) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketIncidents)
		if err != nil {
			return err
		}
		for i := range open {
			v, err := json.Marshal(&open[i])
			if err != nil {
				return err
			}
			if err := b.Put(incidentKey(scope, open[i].IncidentRef), v); err != nil {
				return err
			}
		}
		for _, r := range closed {
			if err := b.Delete(incidentKey(scope, r)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: saving open incidents: %w", err)
	}
	return nil
}

// incidentState is the ClickHouse store's side of open incidents: the changes that
// could not be written yet, newest per incident.
type incidentState struct {
	mu      sync.Mutex
	pending map[string]map[detectors.IncidentRef]*detectors.IncidentState // by scope; nil state: ended
	clock   versionClock
}

// LoadIncidents returns scope's open incidents from ClickHouse, with the changes not
// yet written applied, sorted by detector and key.
func (c *ClickHouse) LoadIncidents(ctx context.Context, scope string) ([]detectors.IncidentState, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	rows, err := c.conn.Query(ctx, `SELECT detector, key, argMax(state, version) AS s
FROM open_incidents WHERE scope = ? GROUP BY detector, key`, scope)
	if err != nil {
		return nil, fmt.Errorf("store: loading open incidents: %w", err)
	}
	defer rows.Close()
	all := map[detectors.IncidentRef]detectors.IncidentState{}
	for rows.Next() {
		var r detectors.IncidentRef
		var state string
		if err := rows.Scan(&r.Detector, &r.Key, &state); err != nil {
			return nil, fmt.Errorf("store: loading open incidents: %w", err)
		}
		if state == "" {
			continue // ended
		}
		var st detectors.IncidentState
		if err := json.Unmarshal([]byte(state), &st); err != nil {
			return nil, fmt.Errorf("store: open incident %s %s: %w", r.Detector, r.Key, err)
		}
		all[r] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: loading open incidents: %w", err)
	}
	c.inc.mu.Lock()
	for r, st := range c.inc.pending[scope] {
		if st == nil {
			delete(all, r)
		} else {
			all[r] = *st
		}
	}
	c.inc.mu.Unlock()
	out := slices.Collect(maps.Values(all))
	slices.SortFunc(out, func(a, b detectors.IncidentState) int {
		return strings.Compare(a.Detector+"\x00"+a.Key, b.Detector+"\x00"+b.Key)
	})
	return out, nil
}

// SaveIncidents writes the changes to ClickHouse, with any earlier ones that could not
// be written. While ClickHouse fails it keeps them in memory (one entry per incident,
// so bounded by the detectors' open incidents), logs, and returns nil: detection goes
// on, and a crash meanwhile at worst opens an attack still under way again.
func (c *ClickHouse) SaveIncidents(ctx context.Context, scope string, open []detectors.IncidentState, closed []detectors.IncidentRef) error {
	h := &c.inc
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending == nil {
		h.pending = map[string]map[detectors.IncidentRef]*detectors.IncidentState{}
	}
	p := h.pending[scope]
	if p == nil {
		p = map[detectors.IncidentRef]*detectors.IncidentState{}
		h.pending[scope] = p
	}
	for i := range open {
		p[open[i].IncidentRef] = &open[i]
	}
	for _, r := range closed {
		p[r] = nil
	}
	t := tableRows{table: "open_incidents", columns: "scope, detector, key, state, version",
		cols: []any{&[]string{}, &[]string{}, &[]string{}, &[]string{}, &[]uint64{}}}
	now := c.now()
	for sc, byRef := range h.pending {
		for _, r := range slices.SortedFunc(maps.Keys(byRef), func(a, b detectors.IncidentRef) int {
			return strings.Compare(a.Detector+"\x00"+a.Key, b.Detector+"\x00"+b.Key)
		}) {
			state := ""
			if st := byRef[r]; st != nil {
				b, err := json.Marshal(st)
				if err != nil {
					return fmt.Errorf("store: open incident %s %s: %w", r.Detector, r.Key, err)
				}
				state = string(b)
			}
			t.add(sc, r.Detector, r.Key, state, h.clock.next(now))
		}
	}
	wctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	if err := c.insertRows(wctx, &t); err != nil {
		c.log.Warn("clickhouse open incident writes fail; kept in memory until they succeed", "err", err, "incidents", t.n)
		return nil
	}
	clear(h.pending)
	return nil
}

package store

import (
	"context"
	"fmt"
)

// SlackThread returns the newest state a Slack receiver saved of incident id (or group)
// with its version; ok is false when there is none. Only the ClickHouse store has it: it
// is how the replicas of a cluster find an incident's Slack message when a task moves.
func (c *ClickHouse) SlackThread(ctx context.Context, receiver, id string) (thread string, version uint64, ok bool, err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	rows, err := c.conn.Query(ctx, `SELECT argMax(thread, version), max(version)
FROM slack_threads WHERE receiver = ? AND id = ? GROUP BY receiver, id`, receiver, id)
	if err != nil {
		return "", 0, false, fmt.Errorf("store: reading the slack thread of %s: %w", id, err)
	}
	defer rows.Close()
	if rows.Next() {
		if err := rows.Scan(&thread, &version); err != nil {
			return "", 0, false, fmt.Errorf("store: reading the slack thread of %s: %w", id, err)
		}
		ok = true
	}
	if err := rows.Err(); err != nil {
		return "", 0, false, fmt.Errorf("store: reading the slack thread of %s: %w", id, err)
	}
	return thread, version, ok, nil
}

// SaveSlackThread inserts a state of id's thread as its version; the largest version
// wins. It returns once ClickHouse took it.
func (c *ClickHouse) SaveSlackThread(ctx context.Context, receiver, id, thread string, version uint64) error {
	t := tableRows{table: "slack_threads", columns: "receiver, id, thread, updated, version",
		cols: []any{&[]string{}, &[]string{}, &[]string{}, &[]int64{}, &[]uint64{}}}
	at, _ := chTime(c.now())
	t.add(receiver, id, thread, at, version)
	return c.insertNow(ctx, &t, "saving the slack thread of "+id)
}

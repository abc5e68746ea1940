package alerting

import (
	"context"
	"fmt"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

// A Receiver delivers alerts to one destination. Notify returns nil once the
// destination accepted every alert; otherwise retry says whether trying again later
// can help (a timeout, a 5xx, a 429) or not (a 400, an unknown channel, a bad token).
// An error text never carries a secret (token, webhook URL, HMAC key).
//
// Alerts of one call are versions of distinct incidents or later versions of the same
// incident (same ID, later LastSeen); a receiver that threads updates (Slack) keys its
// threads by ID.
//
// What a receiver may rely on (the Router's delivery contract):
//   - Each alert handed over is one delivery, named by (ID, LastSeen, the
//     ReminderLabel label, absent for a first delivery). That triple is the same on
//     every attempt, after every restart, and never names different content.
//   - A delivery is handed over again only when the Router cannot know that an
//     earlier attempt reached the destination: the attempt failed, timed out, or the
//     process stopped between the destination accepting and the outbox recording it.
//     So delivery is at least once; a receiver whose destination can drop what it
//     already has (Slack, keyed by alert ID and version) uses the triple as its
//     idempotency key and delivers exactly once. Others (file, syslog) may show a
//     duplicate after a crash.
//   - Calls to one receiver never overlap: one goroutine drives each receiver.
//   - Which alerts share a call is not stable: a retry may bring new ones along, and
//     after a final error on a batch each alert is tried alone, so that one bad alert
//     parks only itself.
//   - ctx carries the attempt's deadline (receivers[].timeout) with a cause that
//     says so; a receiver must return when ctx ends.
type Receiver interface {
	Name() string
	Notify(ctx context.Context, alerts []detectors.Alert) (retry bool, err error)
}

// ReminderLabel is the label a repeat_interval reminder carries: the number of the
// reminder ("1", "2", ...) of that alert version. A first delivery has no such label.
const ReminderLabel = "reminder"

// A BatchSizer is a Receiver that takes at most MaxBatch alerts per Notify call, such
// as one that posts a message per alert and would repeat the ones before a failure.
// Receivers that are not BatchSizers get up to 256 at a time.
type BatchSizer interface {
	MaxBatch() int
}

// RetryAfterError is returned (wrapped) by a receiver whose destination asked it to
// wait before trying again (HTTP 429 with Retry-After): the outbox waits at least After
// before the next attempt on that receiver.
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("%v (retry after %s)", e.Err, e.After)
}

func (e *RetryAfterError) Unwrap() error { return e.Err }

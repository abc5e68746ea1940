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
type Receiver interface {
	Name() string
	Notify(ctx context.Context, alerts []detectors.Alert) (retry bool, err error)
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

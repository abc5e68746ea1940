package alerting

import (
	"context"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

// DeliveryKey names one delivery: one version of one alert to one receiver. The
// version is the alert's LastSeen: the detectors re-emit an incident under the same ID
// with a later LastSeen when it changes, so (ID, Version) is one state of one
// incident. Round 0 is the first delivery of that version; round n > 0 is its n-th
// repeat_interval reminder.
type DeliveryKey struct {
	Receiver string
	ID       string
	Version  int64 // the alert's LastSeen, Unix milliseconds
	Round    int
}

// Less orders deliveries of one receiver and alert ID by (Version, Round), the
// order in which they supersede each other.
func (k DeliveryKey) Less(o DeliveryKey) bool {
	if k.Version != o.Version {
		return k.Version < o.Version
	}
	return k.Round < o.Round
}

// DeliveryState is where a delivery stands.
type DeliveryState uint8

// The states of a delivery. Pending deliveries wait in their receiver's queue;
// Delivered and Failed are final until an operator requeues a failed one.
const (
	Pending   DeliveryState = iota + 1 // waiting for its receiver, possibly after failed attempts
	Delivered                          // the receiver accepted it
	Failed                             // parked: a final error, or failing for give_up_after
)

func (s DeliveryState) String() string {
	switch s {
	case Pending:
		return "pending"
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// A Delivery is one alert version on its way to one receiver, as the outbox keeps
// it: the alert itself (so a restart can send it without anything else) and the
// bookkeeping of its attempts.
type Delivery struct {
	DeliveryKey
	Alert detectors.Alert
	State DeliveryState
	// Seq orders a receiver's queue; Enqueue sets it for the deliveries it adds and
	// leaves it 0 for those it skips.
	Seq uint64
	// Queued is when the delivery joined its receiver's queue, by the Router's clock:
	// when its alert was put, its reminder fell due, or an operator requeued it. The
	// age of the oldest pending one is how far behind a receiver is.
	Queued       time.Time
	Attempts     int
	FirstFailure time.Time // the first failed attempt; zero while none failed
	LastError    string    // the error of the last failed attempt
	Done         time.Time // when it was delivered or parked
}

// KeyOf returns the key of the first delivery of a to receiver.
func KeyOf(receiver string, a *detectors.Alert) DeliveryKey {
	return DeliveryKey{Receiver: receiver, ID: a.ID, Version: a.LastSeen.UnixMilli()}
}

// OutboxStore keeps the outbox: every delivery from the moment its alert is accepted
// until it is delivered, and then long enough to recognise the same version again.
// The Router is its only writer; implementations are safe for concurrent use.
//
// Two implementations exist: MemoryOutbox here, for tests and dry runs, and the
// durable one in alerting/outbox (bbolt on local disk, because the outbox must work
// while ClickHouse is down). Both pass alertingtest.RunOutboxSuite, the contract.
type OutboxStore interface {
	// Enqueue makes ds durable as pending deliveries, all of them or none, and
	// returns once they are. It skips a delivery whose key the outbox holds, in any
	// state, which is the dedup: a version is never queued twice for a receiver (nor
	// twice in one call). It sets Seq of each delivery it adds and leaves 0 in the
	// others.
	Enqueue(ctx context.Context, ds []Delivery) error
	// Pending returns up to limit pending deliveries of receiver with their
	// alerts, in queue order (oldest first).
	Pending(ctx context.Context, receiver string, limit int) ([]Delivery, error)
	// Update records the outcome of attempts: the State, Queued, Attempts,
	// FirstFailure, LastError and Done of each delivery, found by its key (unknown keys are
	// ignored). A delivery that stays pending keeps its place in the queue; one that
	// leaves Pending leaves the queue; a failed one set back to Pending (an
	// operator's requeue) joins the end of the queue.
	Update(ctx context.Context, ds []Delivery) error
	// Lookup returns the delivery stored under k.
	Lookup(ctx context.Context, k DeliveryKey) (Delivery, bool, error)
	// Parked returns up to limit failed deliveries of receiver, with their alerts.
	Parked(ctx context.Context, receiver string, limit int) ([]Delivery, error)
	// Stats returns where the queue of every receiver that has pending or parked
	// deliveries stands.
	Stats(ctx context.Context) (map[string]QueueStats, error)
	// Recent returns, for every receiver and alert ID, the delivery with the
	// largest (Version, Round) when that version is at or after since (the
	// incidents that may still be open, for reminders).
	Recent(ctx context.Context, since time.Time) ([]Delivery, error)
	// Prune forgets deliveries that were delivered before before and returns how
	// many. Pending and failed deliveries stay.
	Prune(ctx context.Context, before time.Time) (int, error)
}

// QueueStats is where one receiver's queue stands.
type QueueStats struct {
	Pending int // deliveries waiting for the receiver
	// OldestPending is the Queued time of the receiver's oldest pending delivery (the
	// head of its queue); zero when none is pending or the outbox does not know it.
	OldestPending time.Time
	Parked        int // deliveries parked as failed, waiting for an operator's requeue
}

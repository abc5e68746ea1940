package alerting

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/gatewatch/gatewatch/detectors"
)

// History keeps the alert history next to the event archive, for analysts: the
// alerts the Router accepted and where their deliveries stand. The store implements
// it (store.ClickHouse, store.Local).
//
// History is best-effort and never on the delivery path: the Router hands records to
// a small bounded queue that a goroutine of Run drains into History. When the queue is
// full (History is slower than the alerts, or Run is not running), records are dropped
// and counted in gatewatch_alerting_history_dropped_total; History errors are counted
// in gatewatch_alerting_history_errors_total and logged when History starts or stops
// failing, never per alert. Neither ever fails or delays a Put or a delivery. That is
// acceptable only because the outbox, not History, is the source of truth for what was
// accepted and delivered: History is the analyst's copy of it.
type History interface {
	// RecordAlerts records alerts as accepted: each durable in the outbox.
	RecordAlerts(ctx context.Context, alerts []detectors.Alert) error
	// RecordDeliveries records the state of deliveries: queued (Pending), Delivered
	// or parked (Failed).
	RecordDeliveries(ctx context.Context, ds []Delivery) error
}

// historyQueue is how many records (one Put's alerts, or one attempt's outcome) wait
// for History before new ones are dropped.
const historyQueue = 256

// historyTimeout bounds one History call.
const historyTimeout = 30 * time.Second

// historyRecord is one Put's accepted alerts or one batch of delivery states.
type historyRecord struct {
	alerts []detectors.Alert
	ds     []Delivery
}

// historyWriter feeds History from its queue; the zero-capacity case (no History) is
// a nil *historyWriter, on which every method does nothing.
type historyWriter struct {
	h       History
	log     *slog.Logger
	queue   chan historyRecord
	dropped prometheus.Counter
	errors  prometheus.Counter
	failing bool // owned by run
}

func newHistoryWriter(h History, log *slog.Logger, reg prometheus.Registerer) *historyWriter {
	if h == nil {
		return nil
	}
	f := promauto.With(reg)
	return &historyWriter{
		h:     h,
		log:   log,
		queue: make(chan historyRecord, historyQueue),
		dropped: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_alerting_history_dropped_total",
			Help: "Alert history records (a batch of alerts or of delivery states) dropped because the history queue was full; the outbox still has them.",
		}),
		errors: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_alerting_history_errors_total",
			Help: "Alert history records the history store refused; the outbox still has them.",
		}),
	}
}

// add queues a record without waiting; a full queue drops it (counted).
func (hw *historyWriter) add(rec historyRecord) {
	if hw == nil || (len(rec.alerts) == 0 && len(rec.ds) == 0) {
		return
	}
	select {
	case hw.queue <- rec:
	default:
		hw.dropped.Inc()
	}
}

// deliveries queues ds (copied: callers reuse them) and, withAlerts, the distinct
// alert versions they carry.
func (hw *historyWriter) deliveries(ds []Delivery, withAlerts bool) {
	if hw == nil || len(ds) == 0 {
		return
	}
	rec := historyRecord{ds: append([]Delivery(nil), ds...)}
	if withAlerts {
		rec.alerts = distinctAlerts(ds)
	}
	hw.add(rec)
}

// distinctAlerts returns the alert versions ds carry, each once however many
// receivers it went to.
func distinctAlerts(ds []Delivery) []detectors.Alert {
	var alerts []detectors.Alert
	seen := map[DeliveryKey]bool{}
	for i := range ds {
		if k := (DeliveryKey{ID: ds[i].ID, Version: ds[i].Version}); !seen[k] {
			seen[k] = true
			alerts = append(alerts, ds[i].Alert)
		}
	}
	return alerts
}

// run writes queued records to History until stop ends, then what is queued still,
// within historyTimeout each.
func (hw *historyWriter) run(ctx context.Context, stop <-chan struct{}) {
	ctx = context.WithoutCancel(ctx) // records are written after a stop too
	for {
		select {
		case rec := <-hw.queue:
			hw.write(ctx, rec)
		case <-stop:
			for {
				select {
				case rec := <-hw.queue:
					hw.write(ctx, rec)
				default:
					return
				}
			}
		}
	}
}

func (hw *historyWriter) write(ctx context.Context, rec historyRecord) {
	ctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	var err error
	if len(rec.alerts) > 0 {
		err = hw.h.RecordAlerts(ctx, rec.alerts)
	}
	if err == nil && len(rec.ds) > 0 {
		err = hw.h.RecordDeliveries(ctx, rec.ds)
	}
	if err != nil {
		hw.errors.Inc()
		if !hw.failing {
			hw.failing = true
			hw.log.Warn("alert history failing; delivery goes on, the outbox keeps the truth", "err", err)
		}
		return
	}
	if hw.failing {
		hw.failing = false
		hw.log.Info("alert history recording again")
	}
}

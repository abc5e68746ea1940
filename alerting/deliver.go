package alerting

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"golang.org/x/time/rate"

	"github.com/gatewatch/gatewatch/detectors"
)

// maxErrorText bounds the error text kept with a delivery.
const maxErrorText = 1024

// Reasons a delivery is parked, the values of the log's reason attribute.
const (
	reasonFinal  = "final_error" // the receiver said retrying cannot help
	reasonGaveUp = "gave_up"     // failing for give_up_after
)

// worker drives one receiver: the only goroutine that calls its Notify.
type worker struct {
	name    string
	rcv     Receiver
	lim     *rate.Limiter // nil: unlimited
	batch   int
	timeout time.Duration
	cause   error // the cause an attempt's context expires with
	giveUp  time.Duration
	bo      *backoff.ExponentialBackOff
	wake    chan struct{}
	m       receiverMetrics

	alerts  []detectors.Alert // reused by every attempt
	single  int               // attempts still to make one alert at a time, after a final error on a batch
	failing bool
	lastErr string

	// grouped: the worker delivers group by group (deliverGrouped), because a route
	// groups what it sends to this receiver, or the receiver renders groups itself.
	grouped bool
	flushed map[string]time.Time // group key → its last notification (deliverGrouped)
}

func newWorker(name string, rcv Receiver, rc ReceiverConfig, ob Outbox, m receiverMetrics) *worker {
	w := &worker{
		name:    name,
		rcv:     rcv,
		batch:   defaultBatch,
		timeout: rc.Timeout,
		giveUp:  ob.GiveUpAfter,
		wake:    make(chan struct{}, 1),
		m:       m,
	}
	if bs, ok := rcv.(BatchSizer); ok && bs.MaxBatch() > 0 {
		w.batch = bs.MaxBatch()
	}
	if rc.RateLimit > 0 {
		burst := max(rc.Burst, 1)
		w.lim = rate.NewLimiter(rate.Limit(rc.RateLimit), burst)
		// One token per alert, and WaitN refuses more than the burst at once.
		w.batch = min(w.batch, burst)
	}
	if w.timeout <= 0 {
		w.timeout = defaultTimeout
	}
	w.cause = fmt.Errorf("alerting: receiver %s: attempt took longer than its timeout %s", name, w.timeout)
	w.bo = &backoff.ExponentialBackOff{
		InitialInterval:     ob.InitialBackoff,
		RandomizationFactor: 0.5, // ±50%: receivers that failed together do not retry together
		Multiplier:          2,
		MaxInterval:         ob.MaxBackoff,
	}
	w.bo.Reset()
	return w
}

// poke wakes the worker if it waits for its queue.
func (w *worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// nextPending waits until w has pending deliveries and returns up to limit() of them,
// oldest first. It returns nil when wctx ends (or ctx, during a read), with the
// outbox's error if it failed. An empty queue ends a run of single deliveries.
func (r *Router) nextPending(ctx, wctx context.Context, w *worker, limit func() int) ([]Delivery, error) {
	for {
		if wctx.Err() != nil {
			return nil, nil
		}
		ds, err := r.store.Pending(ctx, w.name, limit())
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			return nil, fmt.Errorf("alerting: outbox: pending deliveries of %s: %w", w.name, err)
		}
		if len(ds) > 0 {
			return ds, nil
		}
		w.single = 0
		select {
		case <-w.wake:
		case <-wctx.Done():
			return nil, nil
		}
	}
}

// deliver drains the receiver's queue until wctx ends. Attempts run under ctx, which
// only a hard stop cancels; outcomes are recorded even then.
func (r *Router) deliver(ctx, wctx context.Context, w *worker) error {
	for {
		ds, err := r.nextPending(ctx, wctx, w, func() int {
			if w.single > 0 {
				return 1
			}
			return w.batch
		})
		if ds == nil {
			return err
		}
		if w.lim != nil {
			if err := w.lim.WaitN(wctx, len(ds)); err != nil {
				return nil // only wctx ending makes WaitN fail: len(ds) <= burst
			}
		}
		wait, err := r.attempt(ctx, w, ds)
		if err != nil {
			return err
		}
		if w.single > 0 {
			w.single--
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-wctx.Done():
				t.Stop()
				return nil
			}
		}
	}
}

// attempt sends ds in one Notify call and records the outcome. It returns how long
// the receiver should rest before the next attempt, and an error only when the
// outbox cannot record the outcome (the process cannot go on safely).
func (r *Router) attempt(ctx context.Context, w *worker, ds []Delivery) (time.Duration, error) {
	w.alerts = w.alerts[:0]
	for i := range ds {
		w.alerts = append(w.alerts, ds[i].Alert)
	}
	defer clear(w.alerts) // do not keep alerts alive until the next attempt
	return r.attemptWith(ctx, w, ds, func(actx context.Context) (bool, error) { return w.rcv.Notify(actx, w.alerts) })
}

// attemptWith makes one attempt at ds with notify and records the outcome, as
// attempt does.
func (r *Router) attemptWith(ctx context.Context, w *worker, ds []Delivery, notify func(context.Context) (bool, error)) (time.Duration, error) {
	actx, cancel := context.WithTimeoutCause(ctx, w.timeout, w.cause)
	start := time.Now()
	retry, err := notify(actx)
	w.m.attempt.Observe(time.Since(start).Seconds())
	expired := err != nil && errors.Is(context.Cause(actx), w.cause)
	cancel()
	if err != nil && ctx.Err() != nil {
		// A hard stop cut the attempt short: it says nothing about the receiver,
		// and the deliveries stay pending for the next Run.
		return 0, nil
	}
	// The outcome is recorded even if a stop comes now: an attempt that
	// succeeded must not be sent again for want of a write.
	rctx := context.WithoutCancel(ctx)
	now := r.now()
	if err == nil {
		return 0, r.recordDelivered(rctx, w, ds, now)
	}
	if expired {
		// The receiver may return whatever its client made of the deadline; a
		// timeout is always worth another try, and the error says it was one.
		retry = true
		if !errors.Is(err, w.cause) {
			err = fmt.Errorf("%w: %w", w.cause, err)
		}
	}
	if !retry && len(ds) > 1 {
		// One bad alert must not park the batch it came in: try each alone.
		w.single = len(ds) + 1 // the worker decrements once for this attempt
		return 0, r.recordFailure(rctx, w, ds, now, err, false)
	}
	if err := r.recordFailure(rctx, w, ds, now, err, retry); err != nil {
		return 0, err
	}
	if !retry {
		return 0, nil
	}
	wait := w.bo.NextBackOff()
	if ra, ok := errors.AsType[*RetryAfterError](err); ok && ra.After > wait {
		wait = ra.After
	}
	return wait, nil
}

func (r *Router) recordDelivered(ctx context.Context, w *worker, ds []Delivery, now time.Time) error {
	for i := range ds {
		d := &ds[i]
		d.State, d.Attempts, d.Done, d.LastError = Delivered, d.Attempts+1, now, ""
	}
	if err := r.store.Update(ctx, ds); err != nil {
		return fmt.Errorf("alerting: outbox: record deliveries to %s: %w", w.name, err)
	}
	r.hist.deliveries(ds, false)
	w.m.sent.Add(float64(len(ds)))
	for i := range ds {
		r.log.Info("alert delivered", "receiver", w.name, "alert_id", ds[i].ID, "detector", ds[i].Alert.Detector, "attempts", ds[i].Attempts)
	}
	w.bo.Reset()
	if w.failing {
		w.failing, w.lastErr = false, ""
		r.log.Info("receiver recovered", "receiver", w.name)
	}
	if r.rem != nil {
		r.rem.delivered(ds, func(d *Delivery) bool { return r.repeatFor(&d.Alert, d.Receiver) > 0 })
	}
	r.broadcast()
	return nil
}

// recordFailure counts a failed attempt on each delivery and parks those that cannot
// be helped by retrying (!retry) or have failed for give_up_after. With split set,
// nothing is parked: the batch is about to be tried one alert at a time.
func (r *Router) recordFailure(ctx context.Context, w *worker, ds []Delivery, now time.Time, err error, retry bool) error {
	text := err.Error()
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	if !w.failing || text != w.lastErr {
		// A change of state, logged once, not per attempt.
		w.failing, w.lastErr = true, text
		r.log.Warn("receiver failing", "receiver", w.name, "attempt", ds[0].Attempts+1, "retry", retry, "err", text)
	}
	split := !retry && len(ds) > 1
	parked := 0
	for i := range ds {
		d := &ds[i]
		d.Attempts++
		d.LastError = text
		if d.FirstFailure.IsZero() {
			d.FirstFailure = now
		}
		reason := ""
		switch {
		case split:
		case !retry:
			reason = reasonFinal
		case now.Sub(d.FirstFailure) >= w.giveUp:
			reason = reasonGaveUp
		}
		if reason == "" {
			w.m.retried.Inc()
			continue
		}
		d.State, d.Done = Failed, now
		parked++
		// Loud on purpose: an alert that will not reach its destination is an
		// operator's problem now.
		r.log.Error("delivery parked", "receiver", w.name, "alert_id", d.ID, "detector", d.Alert.Detector,
			"attempt", d.Attempts, "reason", reason, "err", text,
			"requeue_with", "gatewatch notify --config FILE --requeue --receiver "+w.name)
	}
	if uerr := r.store.Update(ctx, ds); uerr != nil {
		return fmt.Errorf("alerting: outbox: record failed attempt to %s: %w", w.name, uerr)
	}
	if parked > 0 {
		var done []Delivery
		for i := range ds {
			if ds[i].State == Failed {
				done = append(done, ds[i])
			}
		}
		r.hist.deliveries(done, false)
		w.m.failed.Add(float64(parked))
		r.broadcast()
	}
	return nil
}

package console

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/slack"
	"github.com/gatewatch/gatewatch/store"
)

// Actions are the changes a person makes, from the console or from Slack's buttons:
// acknowledging an incident, silencing, expiring a silence, sending parked deliveries
// again. Each is done, then written to the audit log with who and when (and logged,
// a second trail should the audit log fail).
type Actions struct {
	store    Store
	silences *alerting.Silences
	acks     *alerting.Acks
	router   func() *alerting.Router
	log      *slog.Logger
	now      func() time.Time
	m        *metrics
}

var _ slack.Actions = (*Actions)(nil)

// ErrNoIncident is returned for an alert id the history does not have.
var ErrNoIncident = errors.New("console: no such incident")

// errAudit wraps a change that was made but could not be written to the audit log.
type errAudit struct{ err error }

func (e *errAudit) Error() string {
	return "done, but the audit log could not record it (the service log has it): " + e.err.Error()
}
func (e *errAudit) Unwrap() error { return e.err }

// audit records a change; a failure is logged with everything the entry holds.
func (a *Actions) audit(ctx context.Context, who, action, object, detail string) error {
	e := store.AuditEntry{At: a.now().UTC(), Who: who, Action: action, Object: object, Detail: detail}
	a.log.Info("console change", "who", who, "action", action, "object", object, "detail", detail)
	a.m.changes.WithLabelValues(action).Inc()
	if err := a.store.RecordAudit(ctx, e); err != nil {
		a.m.auditErrors.Inc()
		a.log.Error("audit log not written", "who", who, "action", action, "object", object, "detail", detail, "err", err)
		return &errAudit{err}
	}
	return nil
}

// acknowledge marks incident id as taken by who; an incident acknowledged before keeps
// its first acknowledgement and nothing is audited again.
func (a *Actions) acknowledge(ctx context.Context, id, who, via string) (alerting.Ack, error) {
	if _, ok, err := a.store.AlertByID(ctx, id); err != nil || !ok {
		if err == nil {
			err = ErrNoIncident
		}
		return alerting.Ack{}, err
	}
	ack, isNew, err := a.acks.Acknowledge(ctx, id, who, via)
	if err != nil || !isNew {
		return ack, err
	}
	return ack, a.audit(ctx, who, actionAck, id, "via "+via)
}

// createSilence puts rec in force; one with the id of an existing silence returns that
// one, unaudited.
func (a *Actions) createSilence(ctx context.Context, rec alerting.SilenceRecord, via string) (alerting.SilenceRecord, error) {
	if rec.ID != "" {
		if old, ok := a.silences.Get(rec.ID); ok {
			return old, nil
		}
	}
	s, err := a.silences.Create(ctx, rec)
	if err != nil {
		return s, err
	}
	detail := fmt.Sprintf("%s until %s via %s: %s", s.Describe(), s.Expires.Format(time.RFC3339), via, s.Comment)
	return s, a.audit(ctx, s.CreatedBy, actionSilence, s.ID, detail)
}

// expireSilence ends silence id now.
func (a *Actions) expireSilence(ctx context.Context, id, who string) (alerting.SilenceRecord, error) {
	before, ok := a.silences.Get(id)
	if !ok {
		return alerting.SilenceRecord{}, alerting.ErrSilenceNotFound
	}
	s, err := a.silences.Expire(ctx, id, who)
	if err != nil || !before.Active(a.now()) {
		return s, err
	}
	return s, a.audit(ctx, who, actionExpire, id, s.Describe())
}

// requeue sends the parked deliveries of receiver again: all of them, or the one k
// names.
func (a *Actions) requeue(ctx context.Context, receiver string, k *alerting.DeliveryKey, who string) (int, error) {
	r := a.router()
	if k != nil {
		ok, err := r.RequeueDelivery(ctx, *k)
		if err != nil || !ok {
			return 0, err
		}
		return 1, a.audit(ctx, who, actionRequeue, receiver+"/"+k.ID,
			fmt.Sprintf("alert %s as last seen %s, round %d, to %s", k.ID, time.UnixMilli(k.Version).UTC().Format(time.RFC3339), k.Round, receiver))
	}
	n, err := r.Requeue(ctx, receiver)
	if err != nil || n == 0 {
		return n, err
	}
	return n, a.audit(ctx, who, actionRequeue, receiver, strconv.Itoa(n)+" parked deliveries")
}

// Acknowledge marks incident alertID as taken by a Slack user (slack.Actions).
func (a *Actions) Acknowledge(ctx context.Context, alertID, user string) (alerting.Ack, error) {
	ack, err := a.acknowledge(ctx, alertID, user, "slack")
	if _, ok := errors.AsType[*errAudit](err); ok {
		return ack, nil // done; the log has it
	}
	return ack, err
}

// SilenceKey silences the key of incident alertID for d, authored by a Slack user
// (slack.Actions). The request id makes a replayed click the same silence.
func (a *Actions) SilenceKey(ctx context.Context, alertID string, d time.Duration, user, requestID string) (alerting.SilenceRecord, error) {
	rec, ok, err := a.store.AlertByID(ctx, alertID)
	if err != nil {
		return alerting.SilenceRecord{}, err
	}
	if !ok {
		return alerting.SilenceRecord{}, ErrNoIncident
	}
	s, err := a.createSilence(ctx, alerting.SilenceRecord{
		ID:        requestID,
		Match:     alerting.Matcher{Key: []string{rec.Alert.Key}},
		Expires:   a.now().Add(d),
		Comment:   fmt.Sprintf("Silenced from Slack for %s, from incident %s (%s)", strings.TrimSuffix(d.String(), "0m0s"), alertID, rec.Alert.Detector),
		CreatedBy: user,
	}, "slack")
	if _, ok := errors.AsType[*errAudit](err); ok {
		return s, nil
	}
	return s, err
}

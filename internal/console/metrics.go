package console

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The actions of the audit log, the values of gatewatch_console_changes_total's label.
const (
	actionAck     = "incident.ack"
	actionSilence = "silence.create"
	actionExpire  = "silence.expire"
	actionRequeue = "delivery.requeue"
)

type metrics struct {
	requests    *prometheus.CounterVec
	changes     *prometheus.CounterVec
	auditErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_console_requests_total",
			Help: "Requests the console answered, by route and status code: 401 and 429 are refused sign-ins, a 403 a change without its CSRF token; Slack's button presses are the route POST /slack/interactions.",
		}, []string{"handler", "code"}),
		changes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_console_changes_total",
			Help: "Changes people made from the console or Slack's buttons, by audit log action: incident.ack, silence.create, silence.expire, delivery.requeue.",
		}, []string{"action"}),
		auditErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_console_audit_errors_total",
			Help: "Changes made but not written to the audit log (the service log has them).",
		}),
	}
	for _, a := range []string{actionAck, actionSilence, actionExpire, actionRequeue} {
		m.changes.WithLabelValues(a)
	}
	return m
}

// counted is h counting its answers by status code, under pattern.
func (s *Server) counted(pattern string, h http.Handler) http.Handler {
	return promhttp.InstrumentHandlerCounter(s.m.requests.MustCurryWith(prometheus.Labels{"handler": pattern}), h)
}

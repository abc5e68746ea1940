// Package console is the analyst's web console that `gatewatch run` serves on
// console.listen: the open incidents with their evidence and a requests-per-minute
// chart of the key or route, filtered by detector, severity, key and time; silences,
// made from an incident in one click, listed and expired early; the receivers with
// their queues and parked deliveries, which can be sent again; the detectors' health,
// read from the metrics the pipeline keeps; and the audit log of every change. It also
// carries out what the Slack app's buttons ask (Actions), so a change from Slack is
// audited the same way.
//
// Pages are rendered on the server with html/template and work without JavaScript;
// a little script, embedded in the binary like the templates and the style sheet,
// confirms destructive clicks and refreshes the incident list. Every request is
// authenticated (a bearer token, basic-auth users from a file, or a login form that
// opens a session; optionally an authenticating proxy's header, from its addresses
// only); every state change is a POST that carries a CSRF token and is written to the
// audit log with who and when; answers carry a Content-Security-Policy without inline
// script and frame-ancestors 'none'. Neither the token nor any credential is ever
// shown: alerts carry fingerprints, never raw keys.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/slack"
	"github.com/gatewatch/gatewatch/store"
)

// Store is what the console reads and writes in gatewatch's store.
type Store interface {
	Alerts(ctx context.Context, from, to time.Time, detector string) ([]store.AlertRecord, error)
	AlertByID(ctx context.Context, id string) (store.AlertRecord, bool, error)
	RequestsPerMinute(ctx context.Context, q store.RateQuery, from, to time.Time) ([]int64, error)
	RecordAudit(ctx context.Context, e store.AuditEntry) error
	Audit(ctx context.Context, limit int) ([]store.AuditEntry, error)
}

// Options are the console's runtime dependencies.
type Options struct {
	Store Store // required
	// Router returns the router in force (a reload swaps it); required.
	Router func() *alerting.Router
	// Alerting returns the alerting config in force: receiver kinds, resolve_timeout;
	// required.
	Alerting func() alerting.Config
	Silences *alerting.Silences  // required: shared with the routers
	Acks     *alerting.Acks      // required: shared with the routers
	Metrics  prometheus.Gatherer // required: what /metrics serves, for detector health
	// Registerer takes the console's own metrics: requests, changes, audit failures;
	// required.
	Registerer prometheus.Registerer
	// Replica says this process is one replica of a cluster: the health page shows
	// its own metrics, the receivers page its own outbox.
	Replica bool
	// Sync is how soon silences and acknowledgements made by other processes sharing
	// the store (ClickHouse; a cluster's replicas always do) are in force here: the
	// pipeline reads them that often; 0: the store is this process's own.
	Sync   time.Duration
	Logger *slog.Logger     // nil discards
	Now    func() time.Time // nil: time.Now
}

// A Server is the console. New loads its credentials and binds nothing; Listen binds.
type Server struct {
	o     Options
	log   *slog.Logger
	auth  *auth
	act   *Actions
	m     *metrics
	pages map[string]*template.Template
	mux   *http.ServeMux
	slack http.Handler // nil without a signing secret

	srv *http.Server
	ln  net.Listener
}

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// New checks cfg and o and loads the console's secrets.
func New(cfg Config, o Options) (*Server, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if cfg.Listen == "" {
		errs = append(errs, errors.New("console: no listen address"))
	}
	if o.Store == nil || o.Router == nil || o.Alerting == nil || o.Silences == nil || o.Acks == nil || o.Metrics == nil || o.Registerer == nil {
		errs = append(errs, errors.New("console: Options.Store, Router, Alerting, Silences, Acks, Metrics and Registerer are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cr, err := cfg.load()
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{o: o, log: o.Logger.With("component", "console"), m: newMetrics(o.Registerer)}
	header := ""
	if cfg.TrustedProxy != nil {
		header = cfg.TrustedProxy.Header
	}
	s.auth = newAuth(cr, header, o.Now)
	s.act = &Actions{store: o.Store, silences: o.Silences, acks: o.Acks, router: o.Router, log: s.log, now: o.Now, m: s.m}
	if s.pages, err = parsePages(); err != nil {
		return nil, err
	}
	if cr.signing != "" {
		s.slack, err = slack.NewInteractions(slack.InteractionOptions{SigningSecret: cr.signing, Actions: s.act, Logger: o.Logger})
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
	}
	s.routes()
	return s, nil
}

// Actions returns what the console does on a person's behalf, as the Slack buttons
// use it.
func (s *Server) Actions() *Actions { return s.act }

// Handler returns the console's handler: every page and action, with the security
// headers.
func (s *Server) Handler() http.Handler { return securityHeaders(s.mux) }

func (s *Server) routes() {
	m := http.NewServeMux()
	handle := func(pattern string, h http.Handler) { m.Handle(pattern, s.counted(pattern, h)) }
	static, _ := fs.Sub(staticFiles, "static") // the embedded directory exists
	handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	handle("GET /login", http.HandlerFunc(s.loginPage))
	handle("POST /login", http.HandlerFunc(s.loginPost))
	if s.slack != nil {
		// Slack authenticates itself with the signing secret, not the console's.
		handle("POST /slack/interactions", s.slack)
	}
	handle("POST /logout", s.change(s.logout))
	handle("GET /{$}", s.read(func(w http.ResponseWriter, r *http.Request, _ principal) {
		http.Redirect(w, r, "/incidents", http.StatusSeeOther)
	}))
	handle("GET /incidents", s.read(s.incidents))
	handle("GET /incidents/{id}", s.read(s.incident))
	handle("GET /incidents/{id}/chart.svg", s.read(s.chart))
	handle("POST /incidents/{id}/ack", s.change(s.ack))
	handle("POST /incidents/{id}/silence", s.change(s.silence))
	handle("GET /silences", s.read(s.silencesPage))
	handle("POST /silences/{id}/expire", s.change(s.expire))
	handle("GET /receivers", s.read(s.receivers))
	handle("POST /receivers/{name}/requeue", s.change(s.requeueAll))
	handle("POST /receivers/{name}/requeue-one", s.change(s.requeueOne))
	handle("GET /health", s.read(s.health))
	handle("GET /audit", s.read(s.audit))
	s.mux = m
}

// read wraps a page: the request must be authenticated; a browser that is not goes
// to the login page, anything else gets 401.
func (s *Server) read(h func(http.ResponseWriter, *http.Request, principal)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok, retry := s.auth.identify(r)
		if !ok {
			s.unauthorized(w, r, retry)
			return
		}
		h(w, r, p)
	})
}

// change wraps a state change: authenticated, a POST with the principal's CSRF token
// from the console's own origin; refused with 403 otherwise.
func (s *Server) change(h func(http.ResponseWriter, *http.Request, principal)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok, retry := s.auth.identify(r)
		if !ok {
			s.unauthorized(w, r, retry)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if !csrfOK(r, p) {
			s.log.Warn("console change refused: no valid CSRF token", "who", p.who, "path", r.URL.Path, "remote", r.RemoteAddr)
			http.Error(w, "forbidden: the form's CSRF token is missing or stale; reload the page and try again", http.StatusForbidden)
			return
		}
		h(w, r, p)
	})
}

// maxForm bounds a form: a comment and a few fields.
const maxForm = 64 << 10

// unauthorized answers a request without valid credentials; retry, when not 0, is how
// long its client's failed authentications keep it refused.
func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request, retry time.Duration) {
	if retry > 0 {
		tooMany(w, retry)
		return
	}
	if r.Method == http.MethodGet && acceptsHTML(r) && r.Header.Get("Authorization") == "" {
		http.Redirect(w, r, "/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="gatewatch"`)
	http.Error(w, "unauthorized: send Authorization: Bearer <console token>, or log in", http.StatusUnauthorized)
}

// tooMany refuses an authentication while its client's failed ones have spent their
// allowance, for retry.
func tooMany(w http.ResponseWriter, retry time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(retry.Seconds()))))
	http.Error(w, "too many failed authentications; wait a moment", http.StatusTooManyRequests)
}

// Listen binds addr; Serve then serves on it.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("console: listen %s: %w", addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return nil
}

// Addr returns the address Listen bound.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Serve serves until Shutdown; it returns nil then.
func (s *Server) Serve() error {
	s.log.Info("console listening", "addr", s.Addr(), "slack_interactions", s.slack != nil)
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("console: %w", err)
	}
	return nil
}

// Shutdown stops serving, letting requests in flight finish within ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

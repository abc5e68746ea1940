package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gatewatch/gatewatch/store"
)

// admin serves /metrics, /healthz and /readyz.
type admin struct {
	srv  *http.Server
	ln   net.Listener
	log  *slog.Logger
	addr string
}

func newAdmin(listen string, g prometheus.Gatherer, ready *readiness, log *slog.Logger) (*admin, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("pipeline: admin.listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Alive: the process serves. Liveness must not depend on Kafka or ClickHouse,
		// or an outage of theirs would restart every replica at once.
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready.err(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	a := &admin{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		log:  log,
		addr: ln.Addr().String(),
	}
	return a, nil
}

// serve serves until shutdown; the channel gets its end.
func (a *admin) serve() <-chan error {
	a.log.Info("admin endpoint listening", "addr", a.addr)
	return goRun(func() error {
		if err := a.srv.Serve(a.ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
}

func (a *admin) shutdown(ctx context.Context) error { return a.srv.Shutdown(ctx) }

// Addr returns the admin endpoint's address, once Run has started it; "" otherwise.
func (p *Pipeline) AdminAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.admin == nil {
		return ""
	}
	return p.admin.addr
}

// readiness is /readyz: ready once running, while Kafka and the store answer (checked
// every few seconds, so a probe never waits on them), and not while stopping.
type readiness struct {
	mu        sync.Mutex
	store     store.Store
	source    pinger
	migrateCH *store.ClickHouse // a schema not yet migrated at start-up
	last      error
	stopped   bool
}

type pinger interface {
	Ping(ctx context.Context) error
}

var errStarting = errors.New("starting")

func (r *readiness) set(st store.Store, src pinger) {
	r.mu.Lock()
	r.store, r.source = st, src
	r.mu.Unlock()
}

func (r *readiness) needMigrate(ch *store.ClickHouse) {
	r.mu.Lock()
	r.migrateCH = ch
	r.mu.Unlock()
}

func (r *readiness) stopping() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

func (r *readiness) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.stopped:
		return errors.New("stopping")
	case r.store == nil:
		return errStarting
	}
	return r.last
}

// readyEvery is how often the readiness checks run.
const readyEvery = 5 * time.Second

// run checks Kafka and the store until ctx ends.
func (r *readiness) run(ctx context.Context, log *slog.Logger) {
	wasReady := true
	for {
		err := r.check(ctx)
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.last = err
		r.mu.Unlock()
		if (err == nil) != wasReady {
			if err != nil {
				log.Warn("not ready", "err", err)
			} else {
				log.Info("ready")
			}
			wasReady = err == nil
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(readyEvery):
		}
	}
}

func (r *readiness) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyEvery)
	defer cancel()
	r.mu.Lock()
	st, src, ch := r.store, r.source, r.migrateCH
	r.mu.Unlock()
	if err := src.Ping(ctx); err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	if err := st.Ping(ctx); err != nil {
		return err
	}
	if ch != nil {
		if err := ch.Migrate(ctx); err != nil {
			return fmt.Errorf("store: schema not migrated: %w", err)
		}
		r.mu.Lock()
		r.migrateCH = nil
		r.mu.Unlock()
	}
	return nil
}

package store

import (
	"context"
	"errors"
	"iter"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// Store is everything the rest of gatewatch keeps: the detectors' baselines (and what
// they were at a past time), the event archive, and the history of alerts and their
// deliveries. *ClickHouse and *Local both implement it, so a pipeline is wired the same
// whichever the config chooses.
type Store interface {
	detectors.BaselineStore // LoadBaselines, UpdateBaselines
	detectors.IncidentStore // LoadIncidents, SaveIncidents
	alerting.History        // RecordAlerts, RecordDeliveries

	// BaselinesAsOf reconstructs the baselines as they were at t, for replay and forensics.
	BaselinesAsOf(ctx context.Context, t time.Time) (detectors.Baselines, error)
	// ArchiveEvents stores events in batches; it returns once they are accepted.
	ArchiveEvents(ctx context.Context, evs []ingest.Event) error
	// ReadEvents yields archived events in [from, to) in time order; a non-empty key
	// keeps only the events whose client_key or token_fp is key.
	ReadEvents(ctx context.Context, from, to time.Time, key string) iter.Seq2[ingest.Event, error]
	// Alerts returns the latest version of each alert in [from, to) with its deliveries.
	Alerts(ctx context.Context, from, to time.Time, detector string) ([]AlertRecord, error)

	// What analysts decide (analyst.go): silences, acknowledgements, the audit log.
	alerting.SilenceStore
	alerting.AckStore
	RecordAudit(ctx context.Context, e AuditEntry) error
	Audit(ctx context.Context, limit int) ([]AuditEntry, error)
	// AlertByID returns one alert of the history with its deliveries.
	AlertByID(ctx context.Context, id string) (AlertRecord, bool, error)
	// RequestsPerMinute counts the requests of a key or a route, for charts.
	RequestsPerMinute(ctx context.Context, q RateQuery, from, to time.Time) ([]int64, error)

	// Ping reports whether the store answers: the pipeline is ready only while it does.
	Ping(ctx context.Context) error

	// Run keeps the store: batched writes, replay of what was spilled, retention. It
	// returns when ctx ends.
	Run(ctx context.Context) error
	// Flush writes what is buffered.
	Flush(ctx context.Context) error
	// Sync returns once every event archived before the call is durable (written, or
	// spilled to disk while the database fails).
	Sync(ctx context.Context) error
	// Close flushes what it can and releases the store.
	Close(ctx context.Context) error
}

var (
	_ Store = (*ClickHouse)(nil)
	_ Store = (*Local)(nil)
)

// Options are the runtime dependencies of Open.
type Options struct {
	Logger     *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // required: the store's metrics
	Baselines  BaselineSettings      // the detector settings behind the baselines: BaselineSettingsFrom(cfg)
}

// Open returns the store cfg asks for: ClickHouse when cfg.ClickHouse is set (it
// connects lazily, so a server that is down delays writes, not start-up), else the
// embedded store under cfg.DataDir.
func Open(cfg Config, o Options) (Store, error) {
	if o.Registerer == nil {
		return nil, errors.New("store: Options.Registerer is required")
	}
	if cfg.ClickHouse != nil {
		return NewClickHouse(cfg, ClickHouseOptions{Logger: o.Logger, Registerer: o.Registerer, Baselines: o.Baselines})
	}
	return NewLocal(cfg, LocalOptions{Logger: o.Logger, Registerer: o.Registerer, Baselines: o.Baselines})
}

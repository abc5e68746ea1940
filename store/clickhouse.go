package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/internal/config"
)

// ErrBufferFull is returned by ArchiveEvents when taking the events would hold more
// than buffer_size events in memory: ClickHouse is behind and the spill directory is
// not keeping up (or failing). None of the events was taken.
var ErrBufferFull = errors.New("store: archive buffer full")

// ErrClosed is returned by ArchiveEvents after Close.
var ErrClosed = errors.New("store: archive closed")

var errWriteTimeout = errors.New("store: clickhouse did not answer within write_timeout")

// ClickHouseOptions are the runtime dependencies of a ClickHouse store.
type ClickHouseOptions struct {
	Logger     *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // required: the archive and baseline metrics
	Now        func() time.Time      // nil: time.Now; ages batches and dates retention
	// MaxRetryInterval caps the wait between attempts to reach ClickHouse while it is
	// down (exponential backoff with jitter from 100ms); 0: 10s.
	MaxRetryInterval time.Duration
	// Baselines are the detector settings behind the stored baselines, for
	// BaselinesAsOf; zero fields: the detectors defaults.
	Baselines BaselineSettings
}

// ClickHouse is the production store, in a ClickHouse database over the native
// protocol. It archives events: ArchiveEvents buffers them and returns at once, Run
// writes them in batches, and whatever ClickHouse cannot take while it is slow or down
// waits in the spill directory and is written once it is back. Nothing taken is lost,
// and nothing is written twice: every batch has an id that ClickHouse records with
// it, and a batch that may have reached ClickHouse already is looked up before it is
// sent again (see migrations/0001_base.sql for the one gap and how reads close it).
//
// clickhouse-go v2.50.0, the newest release, talks to 18.16.1 (native protocol
// revision 54412), so it is not pinned back. Two things 18.16 needs of it: an INSERT
// names its columns (with a bare INSERT INTO t, 18.16 sends an empty header and every
// Append fails with "expected 0 arguments"), and single-row inserts go through
// INSERT ... SELECT, because Exec sends no data blocks and 18.16 waits for them.
//
// Lifecycle: NewClickHouse, Migrate (from `gatewatch migrate`, or at start), Run in a
// goroutine, ArchiveEvents and ReadEvents from any goroutine, then Close.
type ClickHouse struct {
	cfg      ClickHouseConfig // defaults applied
	chOpts   clickhouse.Options
	conn     driver.Conn
	log      *slog.Logger
	m        *archiveMetrics
	now      func() time.Time
	retryMax time.Duration

	mu        sync.Mutex
	open      *block          // filling; nil until the next event
	queue     []*block        // sealed, oldest first, waiting for the writer
	buffered  int             // events in open and queue
	sealed    uint64          // seq of the newest sealed block
	pending   map[uint64]bool // seqs of this process's blocks not yet in ClickHouse; true once spilled
	recovered int             // segments left by an earlier process, not replayed yet
	progress  chan struct{}   // closed and replaced whenever blocks reach ClickHouse
	free      [][]byte        // spare block buffers
	blockCap  int             // capacity of a new block buffer: what a full block took
	state     runState

	wake    chan struct{} // a block was sealed
	stop    chan struct{} // closed by Close
	runDone chan struct{} // closed when Run returns

	// Owned by whichever goroutine writes: Run, or Close once Run has returned.
	spill *spill
	cols  columns

	bl   *baselineState // the baselines: clickhouse_baselines.go
	hist *historyState  // the alert history: clickhouse_alerts.go
	inc  incidentState  // open incidents: incidents.go
}

type runState int

const (
	idle runState = iota
	running
	closed
)

// NewClickHouse checks cfg, fills defaults and opens the spill directory (creating it,
// and finding segments an earlier process left to replay). It connects to nothing:
// connections are made on first use, so a ClickHouse that is down at start delays
// writes rather than start-up.
func NewClickHouse(cfg Config, o ClickHouseOptions) (*ClickHouse, error) {
	if cfg.ClickHouse == nil {
		return nil, errors.New("store: no clickhouse section in the store config")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o.Registerer == nil {
		return nil, errors.New("store: ClickHouseOptions.Registerer is required")
	}
	chc := cfg.ClickHouse.withDefaults(cfg.DataDir)
	password, err := chc.password()
	if err != nil {
		return nil, fmt.Errorf("store: %w", config.Prefix("clickhouse", err))
	}
	tlsConfig, err := chc.TLS.Client(false)
	if err != nil {
		return nil, fmt.Errorf("store: %w", config.Prefix("clickhouse.tls", err))
	}
	opts := clickhouse.Options{
		Addr: chc.Addr,
		Auth: clickhouse.Auth{Database: chc.Database, Username: chc.Username, Password: password.Reveal()},
		// The dialer does TLS itself: clickhouse-go ignores TLS when DialContext is set.
		DialContext: dialer(chc.DialTimeout, chc.WriteTimeout, tlsConfig),
		// LZ4 costs little CPU and cuts the bytes of repetitive log fields several times.
		Compression:     &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
		DialTimeout:     chc.DialTimeout,
		ReadTimeout:     chc.WriteTimeout,
		MaxOpenConns:    4, // the writer, a retention pass and a couple of readers
		MaxIdleConns:    2,
		ConnMaxLifetime: time.Hour,
	}
	opts.ClientInfo.Products = append(opts.ClientInfo.Products, struct{ Name, Version string }{"gatewatch", ""})
	conn, err := clickhouse.Open(&opts)
	if err != nil {
		return nil, fmt.Errorf("store: clickhouse: %w", err)
	}
	sp, err := openSpill(chc.SpillDir)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxRetryInterval <= 0 {
		o.MaxRetryInterval = 10 * time.Second
	}
	c := &ClickHouse{
		cfg:       chc,
		chOpts:    opts,
		conn:      retryConn{conn},
		log:       o.Logger.With("component", "store"),
		m:         newArchiveMetrics(o.Registerer),
		now:       o.Now,
		retryMax:  o.MaxRetryInterval,
		pending:   map[uint64]bool{},
		blockCap:  min(chc.BatchSize*256, 8<<20),
		recovered: len(sp.segs),
		progress:  make(chan struct{}),
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		runDone:   make(chan struct{}),
		spill:     sp,
	}
	if c.bl, err = newBaselineState(c, o); err != nil {
		_ = conn.Close()
		return nil, err
	}
	if c.hist, err = newHistoryState(c); err != nil {
		_ = conn.Close()
		return nil, err
	}
	c.m.spilled.Set(float64(sp.events()))
	if n := sp.events(); n > 0 {
		c.log.Info("archive events wait in the spill directory from an earlier run", "spilled_events", n, "dir", chc.SpillDir)
	}
	if n := len(c.bl.spill.segs); n > 0 {
		c.log.Info("baseline updates wait in the spill directory from an earlier run", "spilled_updates", n, "dir", chc.SpillDir)
	}
	return c, nil
}

// Migrate creates the configured database if it is missing, brings the schema up to
// date (see the package-level Migrate) and applies the archive's retention: a table
// TTL on servers that have one, else nothing here, because Run then drops expired day
// partitions. `gatewatch migrate` calls it.
func (c *ClickHouse) Migrate(ctx context.Context) error {
	if err := c.ensureDatabase(ctx); err != nil {
		return err
	}
	res, err := migrate(ctx, c.conn)
	if err != nil {
		return err
	}
	if len(res.applied) > 0 {
		c.log.Info("clickhouse schema migrated", "applied", res.applied, "server", res.server.String())
	}
	if len(res.skipped) > 0 {
		c.log.Info("clickhouse migrations wait for a newer server", "skipped", res.skipped, "server", res.server.String())
	}
	ttl, err := applyRetention(ctx, c.conn, c.cfg.Retention)
	if err != nil {
		return err
	}
	if !ttl && c.cfg.Retention > 0 {
		c.log.Info("clickhouse has no table TTL; the archive drops expired day partitions itself", "server", res.server.String())
	}
	return nil
}

// ensureDatabase creates the database when it does not exist. It connects without
// naming the database, since a session cannot start in a database that is missing,
// and creates only after looking, so a user without CREATE DATABASE rights can migrate
// a database an administrator made.
func (c *ClickHouse) ensureDatabase(ctx context.Context) error {
	opts := c.chOpts
	opts.Auth.Database = ""
	opts.MaxOpenConns, opts.MaxIdleConns = 1, 1
	conn, err := clickhouse.Open(&opts)
	if err != nil {
		return fmt.Errorf("store: clickhouse: %w", err)
	}
	defer conn.Close()
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", c.cfg.Database).Scan(&n); err != nil {
		return fmt.Errorf("store: looking for database %s: %w", c.cfg.Database, err)
	}
	if n > 0 {
		return nil
	}
	// The name passed Validate (an identifier), so it needs no quoting.
	if err := execIdempotent(ctx, conn, "CREATE DATABASE IF NOT EXISTS "+c.cfg.Database); err != nil {
		return fmt.Errorf("store: creating database %s: %w", c.cfg.Database, err)
	}
	return nil
}

// ArchiveEvents copies evs into the archive's buffer and returns without waiting for
// ClickHouse; evs may be reused at once. When the buffer cannot take them all, it
// takes none and returns an error wrapping ErrBufferFull, and the caller goes on
// without archiving them (detection does not wait for the archive). It never blocks.
func (c *ClickHouse) ArchiveEvents(_ context.Context, evs []ingest.Event) error {
	if len(evs) == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == closed {
		c.m.events.WithLabelValues(resultRejected).Add(float64(len(evs)))
		return ErrClosed
	}
	if c.buffered+len(evs) > c.cfg.BufferSize {
		c.m.events.WithLabelValues(resultRejected).Add(float64(len(evs)))
		return fmt.Errorf("%w: %d events held, %d more do not fit in buffer_size %d", ErrBufferFull, c.buffered, len(evs), c.cfg.BufferSize)
	}
	for i := range evs {
		if c.open == nil {
			c.open = c.newBlockLocked()
		}
		c.open.data = appendRecord(c.open.data, &evs[i])
		c.open.n++
		if c.open.n >= c.cfg.BatchSize {
			c.sealLocked()
		}
	}
	c.buffered += len(evs)
	c.m.buffered.Set(float64(c.buffered))
	return nil
}

func (c *ClickHouse) newBlockLocked() *block {
	var id [8]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand since Go 1.24)
	b := &block{id: binary.LittleEndian.Uint64(id[:]), opened: c.now()}
	if n := len(c.free); n > 0 {
		b.data, c.free = c.free[n-1], c.free[:n-1]
	} else {
		// Sized like the last full block, so filling it does not copy it over and over.
		b.data = make([]byte, 0, c.blockCap)
	}
	return b
}

// sealLocked moves the open block to the queue and wakes the writer.
func (c *ClickHouse) sealLocked() {
	if c.open == nil {
		return
	}
	if c.open.n >= c.cfg.BatchSize {
		c.blockCap = max(c.blockCap, cap(c.open.data))
	}
	c.sealed++
	c.open.seq = c.sealed
	c.pending[c.sealed] = false
	c.queue = append(c.queue, c.open)
	c.open = nil
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Flush returns once every event ArchiveEvents took before the call is in ClickHouse,
// including events that went through the spill, and any that an earlier process left
// there, and so is every baseline update spilled before the call. It needs Run to be
// running; while ClickHouse is down it waits until ctx ends and returns its error (the
// events and updates stay safe in the spill).
func (c *ClickHouse) Flush(ctx context.Context) error {
	c.bl.mu.Lock()
	baselineTarget := c.bl.spill.next
	c.bl.mu.Unlock()
	c.mu.Lock()
	c.sealLocked()
	target := c.sealed
	c.mu.Unlock()
	for {
		// Take the progress channel before looking, so no progress is missed.
		c.mu.Lock()
		progress := c.progress
		done := c.recovered == 0
		for seq := range c.pending {
			if seq <= target {
				done = false
				break
			}
		}
		c.mu.Unlock()
		c.bl.mu.Lock()
		if len(c.bl.spill.segs) > 0 && c.bl.spill.segs[0].num < baselineTarget {
			done = false
		}
		c.bl.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return fmt.Errorf("store: flushing the archive: %w", context.Cause(ctx))
		}
	}
}

// Ping reports whether ClickHouse answers a round trip within write_timeout.
func (c *ClickHouse) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	if err := c.conn.Ping(ctx); err != nil {
		return fmt.Errorf("store: clickhouse: %w", err)
	}
	return nil
}

// Sync returns once every event ArchiveEvents took before the call is durable: in
// ClickHouse, or in the spill while ClickHouse fails. The live pipeline calls it before
// it commits the offsets of archived events, so a crash never leaves committed events
// out of the archive. It needs Run to be running.
func (c *ClickHouse) Sync(ctx context.Context) error {
	c.mu.Lock()
	c.sealLocked()
	target := c.sealed
	c.mu.Unlock()
	for {
		c.mu.Lock()
		progress := c.progress
		done := true
		for seq, onDisk := range c.pending {
			if seq <= target && !onDisk {
				done = false
				break
			}
		}
		c.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return fmt.Errorf("store: syncing the archive: %w", context.Cause(ctx))
		}
	}
}

// Run writes buffered events to ClickHouse until ctx ends or Close is called, and
// returns nil then; it returns an error only when called twice or after Close. Batches
// go out when they reach batch_size events or flush_interval age. When an insert
// fails, the batch is spilled to disk and so is every later batch, until an attempt
// (after an exponential backoff) succeeds; then spilled batches are replayed, oldest
// first, interleaved with new ones. On servers without table TTL it also drops expired
// day partitions, hourly.
func (c *ClickHouse) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.state != idle {
		c.mu.Unlock()
		return errors.New("store: ClickHouse.Run called twice or after Close")
	}
	c.state = running
	c.mu.Unlock()
	defer close(c.runDone)

	// Close cancels work in flight, so it need not wait out a write_timeout.
	ctx, cancel := context.WithCancel(ctx)
	var watch sync.WaitGroup
	defer watch.Wait() // after cancel, which ends the watcher
	defer cancel()
	watch.Go(func() {
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	})
	watch.Go(func() { c.runBaselineReplay(ctx) })
	watch.Go(func() { c.runHistory(ctx) })

	w := writer{c: c, bo: &backoff.ExponentialBackOff{
		InitialInterval:     100 * time.Millisecond,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         c.retryMax,
	}}
	w.bo.Reset()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		now := c.now()
		c.sealOld(now)
		if w.step(ctx, now) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		timer.Reset(max(w.idleFor(now), time.Millisecond))
		select {
		case <-ctx.Done():
		case <-c.wake:
		case <-timer.C:
		}
	}
	return nil
}

// sealOld seals the open block once it is flush_interval old.
func (c *ClickHouse) sealOld(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open != nil && now.Sub(c.open.opened) >= c.cfg.FlushInterval {
		c.sealLocked()
	}
}

// writer is Run's state: whether ClickHouse is reachable, when to try it again.
type writer struct {
	c           *ClickHouse
	bo          *backoff.ExponentialBackOff
	retryAt     time.Time // zero while ClickHouse takes writes
	spillBroken time.Time // until when not to try the spill directory again
	spillFirst  bool      // alternates replaying the spill with writing new blocks
	nextMaint   time.Time
}

// step does one unit of work and reports whether there may be more at once.
func (w *writer) step(ctx context.Context, now time.Time) bool {
	c := w.c
	up := w.retryAt.IsZero() || !now.Before(w.retryAt)
	if up && c.cfg.Retention > 0 && !now.Before(w.nextMaint) {
		w.maintain(ctx, now)
	}
	hasSpill := len(c.spill.segs) > 0
	if up {
		w.spillFirst = !w.spillFirst
		if hasSpill && w.spillFirst {
			return w.replay(ctx, now)
		}
		if b := c.take(); b != nil {
			return w.write(ctx, now, b)
		}
		if hasSpill {
			return w.replay(ctx, now)
		}
		return false
	}
	// ClickHouse is down: move sealed blocks to disk, so memory stays free for new events.
	if now.Before(w.spillBroken) {
		return false
	}
	if b := c.take(); b != nil {
		return w.toSpill(now, b)
	}
	return false
}

// idleFor returns how long Run may sleep when step found nothing to do: until the open
// block is due, ClickHouse is due for another try with work waiting, or maintenance.
func (w *writer) idleFor(now time.Time) time.Duration {
	c := w.c
	wait := time.Hour
	c.mu.Lock()
	if c.open != nil {
		wait = min(wait, c.open.opened.Add(c.cfg.FlushInterval).Sub(now))
	}
	work := len(c.queue) > 0 || len(c.spill.segs) > 0
	c.mu.Unlock()
	if work && !w.retryAt.IsZero() {
		wait = min(wait, w.retryAt.Sub(now))
	}
	if work && !w.spillBroken.IsZero() {
		wait = min(wait, w.spillBroken.Sub(now))
	}
	if c.cfg.Retention > 0 {
		wait = min(wait, w.nextMaint.Sub(now))
	}
	return wait
}

// write inserts a block from memory; if that fails, it spills the block.
func (w *writer) write(ctx context.Context, now time.Time, b *block) bool {
	c := w.c
	err := c.insert(ctx, b)
	if err == nil {
		w.up()
		c.done(b.seq, b.n, b)
		return true
	}
	if ctx.Err() != nil {
		c.requeue(b) // stopping: Close writes or spills it
		return false
	}
	w.down(now, err)
	return w.toSpill(now, b)
}

// toSpill moves a block from memory to disk, or back to the queue if the disk fails.
func (w *writer) toSpill(now time.Time, b *block) bool {
	c := w.c
	if err := c.spill.write(b); err != nil {
		if w.spillBroken.IsZero() {
			c.log.Error("cannot spill archive events to disk; they wait in memory", "err", err, "dir", c.cfg.SpillDir)
		}
		w.spillBroken = now.Add(w.bo.NextBackOff())
		c.requeue(b)
		return false
	}
	w.spillBroken = time.Time{}
	c.spilled(b)
	return true
}

// replay writes the oldest spilled block and deletes its segment.
func (w *writer) replay(ctx context.Context, now time.Time) bool {
	c := w.c
	seg := c.spill.segs[0]
	b, err := c.spill.read(seg)
	if errors.Is(err, errCorrupt) {
		return w.setAside(now, seg, err)
	}
	if err != nil {
		w.down(now, err)
		return false
	}
	if err := c.insert(ctx, b); err != nil {
		if errors.Is(err, errCorrupt) { // the checksum passed, so the encoder is at fault
			return w.setAside(now, seg, err)
		}
		if ctx.Err() == nil {
			w.down(now, err)
		}
		return false
	}
	w.up()
	if err := c.spill.remove(); err != nil {
		// The block is written; the segment stays, and its next replay is a no-op.
		w.down(now, err)
		return false
	}
	c.segmentDone(seg)
	return true
}

// setAside quarantines the oldest spill segment, which cannot be decoded.
func (w *writer) setAside(now time.Time, seg segment, err error) bool {
	c := w.c
	c.log.Error("spill segment is corrupt; set aside as .corrupt", "err", err, "events", seg.n)
	if qerr := c.spill.quarantine(); qerr != nil {
		w.down(now, qerr)
		return false
	}
	c.m.events.WithLabelValues(resultLost).Add(float64(seg.n))
	c.segmentDone(seg)
	return true
}

func (w *writer) down(now time.Time, err error) {
	if w.retryAt.IsZero() {
		w.c.log.Warn("clickhouse archive writes fail; spilling to disk until they succeed", "err", err)
	}
	w.retryAt = now.Add(w.bo.NextBackOff())
}

func (w *writer) up() {
	if !w.retryAt.IsZero() {
		w.c.log.Info("clickhouse archive writes succeed again", "spilled_events", w.c.spill.events())
	}
	w.retryAt = time.Time{}
	w.bo.Reset()
}

// maintain keeps the retention: a TTL where the server has one (re-applied in case the
// config changed), else dropping expired day partitions.
func (w *writer) maintain(ctx context.Context, now time.Time) {
	c := w.c
	w.nextMaint = now.Add(time.Minute) // sooner after a failure
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	ttl, err := applyRetention(ctx, c.conn, c.cfg.Retention)
	if err == nil && !ttl {
		var n int
		n, err = dropExpiredPartitions(ctx, c.conn, c.cfg.Retention, now)
		if n > 0 {
			c.log.Info("dropped expired archive partitions", "partitions", n)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("archive retention pass failed", "err", err)
		}
		return
	}
	w.nextMaint = now.Add(time.Hour)
}

// take pops the oldest sealed block. It still counts as buffered until done or spilled.
func (c *ClickHouse) take() *block {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		return nil
	}
	b := c.queue[0]
	c.queue[0] = nil
	c.queue = c.queue[1:]
	return b
}

func (c *ClickHouse) requeue(b *block) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = append([]*block{b}, c.queue...)
}

// maxFree is how many block buffers wait for reuse: enough for the writer and the
// block filling meanwhile, without keeping a full batch's worth of idle memory more.
const maxFree = 2

// done records that a block from memory is in ClickHouse and recycles its buffer.
func (c *ClickHouse) done(seq uint64, n int, b *block) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buffered -= n
	c.m.buffered.Set(float64(c.buffered))
	delete(c.pending, seq)
	if len(c.free) < maxFree {
		c.free = append(c.free, b.data[:0])
	}
	c.notifyLocked()
}

// spilled records that a block left memory for the spill; Flush still waits for it.
func (c *ClickHouse) spilled(b *block) {
	c.m.events.WithLabelValues(resultSpilled).Add(float64(b.n))
	c.m.spilled.Add(float64(b.n))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buffered -= b.n
	c.m.buffered.Set(float64(c.buffered))
	if len(c.free) < maxFree {
		c.free = append(c.free, b.data[:0])
	}
	if _, ok := c.pending[b.seq]; ok {
		c.pending[b.seq] = true
	}
	c.notifyLocked()
}

// segmentDone records that a spilled block is in ClickHouse (or set aside as corrupt).
func (c *ClickHouse) segmentDone(seg segment) {
	c.m.spilled.Sub(float64(seg.n))
	c.mu.Lock()
	defer c.mu.Unlock()
	if seg.seq == 0 {
		c.recovered--
	} else {
		delete(c.pending, seg.seq)
	}
	c.notifyLocked()
}

func (c *ClickHouse) notifyLocked() {
	close(c.progress)
	c.progress = make(chan struct{})
}

// pieceRows is how many rows an archive insert sends per data block. One INSERT streams
// a whole block in pieces: ClickHouse takes in one piece while the next is encoded, and
// clickhouse-go reuses its column buffers from piece to piece instead of growing them
// row by row to the size of the block. Sent as a single data block, 100,000 rows went
// in at a little over half the rate.
const pieceRows = 16384

// insert writes one block into events, unless ClickHouse has it already. Piece k of the
// block has batch_id id+k. ClickHouse squashes an INSERT's pieces into one block before
// writing by default (min_insert_block_size_rows), but a server set to squash less
// commits them one by one, so an insert that failed may have left some pieces behind:
// a block that was sent before (attempts > 0) has its pieces looked up in
// archive_batches, and only the missing ones are sent.
//
// The lookup must not race the failed insert: the server may still be writing a piece
// it received before the connection broke. Every insert of a block runs under one
// query id, derived from the block (so also across a restart, for a block replayed from
// the spill), and a retry first kills that query and waits until it is gone.
func (c *ClickHouse) insert(ctx context.Context, b *block) error {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	queryID := fmt.Sprintf("gatewatch-archive-%016x", b.id)
	var (
		written []bool // by piece
		dup     int    // rows of the written pieces
	)
	if b.attempts > 0 {
		var err error
		if err = c.killQuery(ctx, queryID); err == nil {
			written, dup, err = c.writtenPieces(ctx, b)
		}
		if err != nil {
			c.m.insertErrors.Inc()
			return err
		}
		if dup == b.n {
			c.m.events.WithLabelValues(resultDuplicate).Add(float64(dup))
			return nil
		}
	}
	start := time.Now()
	batch, err := c.conn.PrepareBatch(clickhouse.Context(ctx, clickhouse.WithQueryID(queryID)), "INSERT INTO events ("+insertColumns+")")
	if err != nil {
		c.m.insertErrors.Inc()
		return fmt.Errorf("store: archive insert: %w", err)
	}
	// Abort closes the connection of an insert left unfinished, so ClickHouse drops
	// the rest of it; after Send it does nothing.
	defer func() { _ = batch.Abort() }()
	data := b.data
	for k := range c.pieces(b) {
		first := k * pieceRows
		if data, err = c.cols.decode(data, min(pieceRows, b.n-first), b.id+uint64(k), first); err != nil {
			return err
		}
		if written != nil && written[k] {
			continue
		}
		for i, v := range c.cols.values() {
			if err := batch.Column(i).Append(v); err != nil {
				return fmt.Errorf("store: archive insert: column %d: %w", i, err)
			}
		}
		b.attempts++ // from here on the server may commit pieces whatever we hear back
		// Flush has no context watchdog, unlike Send: a server that stops reading is
		// caught by the connection's write deadline (see dialer), ctx between pieces.
		if err := batch.Flush(); err != nil {
			return c.insertFailed(ctx, err)
		}
		if ctx.Err() != nil {
			return c.insertFailed(ctx, context.Cause(ctx))
		}
	}
	if len(data) != 0 {
		return fmt.Errorf("%w: %d bytes after the last event", errCorrupt, len(data))
	}
	if err := batch.Send(); err != nil { // ends the INSERT; ClickHouse confirms every piece
		return c.insertFailed(ctx, err)
	}
	c.m.insertDuration.Observe(time.Since(start).Seconds())
	c.m.events.WithLabelValues(resultDuplicate).Add(float64(dup))
	c.m.events.WithLabelValues(resultWritten).Add(float64(b.n - dup))
	return nil
}

// pieces is how many pieces insert sends b in.
func (c *ClickHouse) pieces(b *block) int { return (b.n + pieceRows - 1) / pieceRows }

func (c *ClickHouse) insertFailed(ctx context.Context, err error) error {
	c.m.insertErrors.Inc()
	if cause := context.Cause(ctx); errors.Is(cause, errWriteTimeout) && !errors.Is(err, errWriteTimeout) {
		err = fmt.Errorf("%w: %w", cause, err)
	}
	return fmt.Errorf("store: archive insert: %w", err)
}

// codeCannotKill is ClickHouse's answer to KILL QUERY while the query is in a stage that
// cannot be interrupted, such as writing the rows it received.
const codeCannotKill = 380

// killQuery stops the query with id, if the server still runs it, and returns once it
// has stopped. A user may always kill their own queries. An insert still writing what
// it received cannot be killed; that ends on its own, so the KILL is tried again.
func (c *ClickHouse) killQuery(ctx context.Context, id string) error {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		// id is gatewatch-archive- and hex digits, safe in the statement. Exec, not
		// Query: 18.16 answers a KILL that found nothing with no header, which Query
		// takes for EOF. SYNC answers once the query is gone.
		err := c.conn.Exec(ctx, "KILL QUERY WHERE query_id = '"+id+"' SYNC")
		var ex *clickhouse.Exception
		switch {
		case err == nil:
			return nil
		case !errors.As(err, &ex) || ex.Code != codeCannotKill:
			return fmt.Errorf("store: stopping an earlier insert %s: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("store: waiting for an earlier insert %s to end: %w", id, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// writtenPieces looks up which of b's pieces are in events, and how many rows they hold.
// archive_batches has a marker for every piece ClickHouse committed, written by a
// materialized view in the same INSERT.
func (c *ClickHouse) writtenPieces(ctx context.Context, b *block) ([]bool, int, error) {
	n := c.pieces(b)
	ids := make([]string, n)
	for k := range n {
		ids[k] = strconv.FormatUint(b.id+uint64(k), 10)
	}
	rows, err := c.conn.Query(ctx, "SELECT batch_id, sum(rows) FROM archive_batches WHERE batch_id IN ("+strings.Join(ids, ",")+") GROUP BY batch_id")
	if err != nil {
		return nil, 0, fmt.Errorf("store: looking up archive batch %016x: %w", b.id, err)
	}
	defer rows.Close()
	written, dup := make([]bool, n), 0
	for rows.Next() {
		var id, got uint64
		if err := rows.Scan(&id, &got); err != nil {
			return nil, 0, fmt.Errorf("store: looking up archive batch %016x: %w", b.id, err)
		}
		k := int(id - b.id)
		if k < 0 || k >= n {
			continue
		}
		if want := min(pieceRows, b.n-k*pieceRows); got >= uint64(want) {
			written[k], dup = true, dup+want
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("store: looking up archive batch %016x: %w", b.id, err)
	}
	return written, dup, nil
}

// Close stops Run (cancelling an insert in flight), writes what is still in memory to
// ClickHouse, or to the spill once an insert fails or ctx ends, and closes the
// connections. Spilled events are written by the next process's Run. It returns an
// error if events could be neither written nor spilled.
func (c *ClickHouse) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.state == closed {
		c.mu.Unlock()
		return nil
	}
	wasRunning := c.state == running
	c.state = closed
	c.sealLocked()
	c.mu.Unlock()
	close(c.stop)
	if wasRunning {
		<-c.runDone // prompt: Run's work in flight is cancelled
	}
	var errs []error
	tryInsert := true
	for b := c.take(); b != nil; b = c.take() {
		if tryInsert && ctx.Err() == nil {
			if err := c.insert(ctx, b); err == nil {
				c.done(b.seq, b.n, b)
				continue
			}
			tryInsert = false // ClickHouse is failing: spill the rest without waiting on it
		}
		if err := c.spill.write(b); err != nil {
			c.m.events.WithLabelValues(resultLost).Add(float64(b.n))
			errs = append(errs, fmt.Errorf("store: %d archive events lost: %w", b.n, err))
			c.done(b.seq, b.n, b)
			continue
		}
		c.spilled(b)
	}
	if n := c.spill.events(); n > 0 {
		c.log.Info("archive events wait in the spill directory for the next run", "spilled_events", n)
	}
	errs = append(errs, c.closeHistory(ctx))
	errs = append(errs, c.conn.Close())
	return errors.Join(errs...)
}

// isClosed reports whether Close has begun: the side stores (baselines, alert history)
// then take nothing more.
func (c *ClickHouse) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == closed
}

// brokenConn reports whether err says that the connection to ClickHouse broke (it was
// closed, reset or cut short) rather than that the statement failed or took too long.
// clickhouse-go drops such a connection from its pool, so the statement may run again
// on another.
func brokenConn(err error) bool {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// onceMoreIfBroken runs f, and once more when it failed on a broken connection (see
// brokenConn) while ctx lives, as database/sql runs a statement again after
// driver.ErrBadConn.
func onceMoreIfBroken[T any](ctx context.Context, f func() (T, error)) (T, error) {
	v, err := f()
	if err != nil && ctx.Err() == nil && brokenConn(err) {
		return f()
	}
	return v, err
}

// retryConn is the store's connection pool: a statement that fails before it reaches
// the server because the pooled connection it got had broken runs once more, on
// another. clickhouse-go hands out, now and then, a connection that a query cancelled
// elsewhere (a rebalance ends a generation's context) has just closed: "send data:
// write error ... use of closed network connection". Seen in TestRunCluster (a
// console page answered 503) and TestRunClusterKill (a Slack thread lookup failed, and
// an incident got a second message). Queries and batches are run again on any broken
// connection, before any row is read or sent; Exec only when the connection was
// closed before the statement went out, since a reset may come after the server ran
// it.
type retryConn struct{ driver.Conn }

func (c retryConn) Query(ctx context.Context, query string, args ...any) (driver.Rows, error) {
	return onceMoreIfBroken(ctx, func() (driver.Rows, error) { return c.Conn.Query(ctx, query, args...) })
}

func (c retryConn) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	row, _ := onceMoreIfBroken(ctx, func() (driver.Row, error) {
		r := c.Conn.QueryRow(ctx, query, args...)
		return r, r.Err() // the row carries its error
	})
	return row
}

func (c retryConn) PrepareBatch(ctx context.Context, query string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	return onceMoreIfBroken(ctx, func() (driver.Batch, error) { return c.Conn.PrepareBatch(ctx, query, opts...) })
}

func (c retryConn) Exec(ctx context.Context, query string, args ...any) error {
	err := c.Conn.Exec(ctx, query, args...)
	if err != nil && ctx.Err() == nil && errors.Is(err, net.ErrClosed) {
		return c.Conn.Exec(ctx, query, args...)
	}
	return err
}

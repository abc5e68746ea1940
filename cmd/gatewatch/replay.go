package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafka"
	"github.com/gatewatch/gatewatch/replay"
	"github.com/gatewatch/gatewatch/store"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (s *listFlag) String() string     { return strings.Join(*s, " ") }
func (s *listFlag) Set(v string) error { *s = append(*s, v); return nil }

// timeFlag is a flag.Value for --from and --to: an RFC 3339 time, its seconds optional
// (what people type when they mean a minute), or a date, meaning its midnight UTC.
type timeFlag struct{ time.Time }

// timeLayouts are the forms timeFlag reads, after upper-casing (RFC 3339 allows a
// lower-case t and z). A fraction of a second is read with any of the first.
var timeLayouts = []string{time.RFC3339, "2006-01-02T15:04Z07:00", time.DateOnly}

func (t *timeFlag) String() string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339)
}

func (t *timeFlag) Set(v string) error {
	for _, layout := range timeLayouts {
		if p, err := time.Parse(layout, strings.ToUpper(v)); err == nil {
			t.Time = p.UTC()
			return nil
		}
	}
	return errors.New("want an RFC 3339 time with its zone, such as 2026-11-02T08:00:00Z, 2026-11-02T08:00+01:00, or a date, 2026-11-02 (its midnight UTC)")
}

// durationFlag is a flag.Value for --warmup that says which form it takes: flag's own
// says only "parse error" to a --warmup 1d.
type durationFlag time.Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }

func (d *durationFlag) Set(v string) error {
	p, err := time.ParseDuration(v)
	if err != nil {
		return errors.New("want a duration in hours, minutes or seconds, such as 24h (a day), 90m or 30s")
	}
	*d = durationFlag(p)
	return nil
}

// kafkaMargin is how far before --from and after --to a Kafka range reads by record
// timestamp: shippers stamp records a little after their event time (and a gateway's
// clock may run a little ahead), so the records of the events wanted lie around the
// range; replay then cuts by event time.
const kafkaMargin = 10 * time.Minute

// replayFlags are replay's flags.
type replayFlags struct {
	config                  string
	in                      inputFlags
	kafka, topic            string
	archive                 bool
	from, to                timeFlag
	warmup                  durationFlag
	emptyBaselines          bool
	out                     string
	updates                 bool
	sets                    listFlag
	compare, sweep, labels  string
	report                  string
	keys, routes, clientIPs listFlag
	events, send            bool
	maxLate                 ratioFlag
}

const replayUsage = "replay --config FILE (--input PATH|- | --kafka BROKERS --topic T[,T] | --archive) [--from T] [--to T] [--format F]\n" +
	"         [--warmup D] [--out FILE] [--updates] [--set detectors.NAME.PARAM=VALUE]...\n" +
	"         [--compare FILE | --sweep detectors.NAME.PARAM=V1,V2,... [--labels FILE]] [--report FILE.html]\n" +
	"         [--key K] [--route R] [--client-ip IP] [--events] [--send] [--max-reject-ratio R] [--max-late-ratio R]"

func runReplay(ctx context.Context, env *cmdEnv, args []string) error {
	f, paths, err := parseReplayFlags(env, args)
	if err != nil {
		return err
	}
	cfg, err := loadConfigFile(f.config)
	if err != nil {
		return err
	}
	if err := applySets(&cfg.Detectors, f.sets); err != nil {
		fmt.Fprintf(env.stderr, "replay: %v\n", err) // a flag's value: a usage mistake
		return errUsage
	}
	r := &replayRun{env: env, f: f, cfg: cfg, paths: paths, args: args, from: f.from.Time, to: f.to.Time, warmup: time.Duration(f.warmup)}
	if err := r.tuning(); err != nil {
		return err
	}
	return r.run(ctx)
}

// tuning prepares the engines --compare or --sweep run beside the config's. A sweep
// that does not parse or apply is a usage mistake, as the same mistakes in --set are.
func (r *replayRun) tuning() error {
	f := r.f
	switch {
	case f.compare != "":
		other, err := loadConfigFile(f.compare)
		if err != nil {
			return fmt.Errorf("--compare: %w", err)
		}
		r.variants = []replay.Variant{{Name: f.compare, Detectors: other.Detectors}}
	case f.sweep != "":
		sw, err := replay.ParseSweep(f.sweep)
		if err == nil {
			if r.variants, err = sw.Variants(r.cfg.Detectors); err != nil {
				err = fmt.Errorf("--sweep: %w", err)
			}
		}
		if err != nil {
			fmt.Fprintf(r.env.stderr, "replay: %v\n", err)
			return errUsage
		}
		r.sweep = &sw
	}
	return nil
}

// parseReplayFlags parses replay's command line and checks how its flags combine; it
// returns the flags and the input paths.
func parseReplayFlags(env *cmdEnv, args []string) (*replayFlags, []string, error) {
	fs := newFlagSet(env, "replay", replayUsage)
	f := &replayFlags{}
	fs.StringVar(&f.config, "config", "", "config file (required): detectors, token secret, store, Kafka topics and formats")
	f.in.define(fs)
	fs.StringVar(&f.kafka, "kafka", "", "read a time range of Kafka topics from these brokers (comma-separated); needs --from and --to")
	fs.StringVar(&f.topic, "topic", "", "with --kafka: the topics (comma-separated); default: the config's ingest.kafka.topics")
	fs.BoolVar(&f.archive, "archive", false, "read the time range from the store's event archive (ClickHouse or embedded)")
	fs.Var(&f.from, "from", "skip events before this `time` (RFC 3339, seconds optional, such as 2026-11-02T08:00Z; or a date, its midnight UTC)")
	fs.Var(&f.to, "to", "skip events at or after this `time` (as --from)")
	fs.Var(&f.warmup, "warmup", "read this `duration` before --from first, to learn baselines (such as 24h); its alerts are not printed")
	fs.BoolVar(&f.emptyBaselines, "empty-baselines", false, "start from empty baselines, not those the store had at --from")
	fs.StringVar(&f.out, "out", "", "write alerts (or --events) to this file instead of stdout")
	fs.BoolVar(&f.updates, "updates", false, "print every version of an incident as it is raised, not only its final state")
	fs.Var(&f.sets, "set", "override a detector setting, e.g. detectors.forbidden_burst.threshold=10 (repeatable)")
	fs.StringVar(&f.compare, "compare", "", "also run the detectors section of this config over the same events, and report what differs")
	fs.StringVar(&f.sweep, "sweep", "", "also run one engine per value of a setting, e.g. detectors.forbidden_burst.threshold=10,20,50")
	fs.StringVar(&f.labels, "labels", "", "with --sweep: JSON lines {\"id\": ALERT_ID, \"attack\": true|false} marking alerts, to count the attacks each value catches")
	fs.StringVar(&f.report, "report", "", "write an HTML report (a timeline per alert, the sweep chart) to this file")
	fs.Var(&f.keys, "key", "with --events: only events of this client key or token fingerprint (repeatable)")
	fs.Var(&f.routes, "route", "with --events: only events of this route, \"METHOD /route\" or \"/route\" (repeatable)")
	fs.Var(&f.clientIPs, "client-ip", "with --events: only events of this client IP, or network in CIDR notation (an IPv6 client's /64 as alerts name it) (repeatable)")
	fs.BoolVar(&f.events, "events", false, "print the normalised events (with --key, --route, --client-ip) instead of running the detectors")
	fs.BoolVar(&f.send, "send", false, "send the alerts through the configured routes and receivers, as notify does")
	f.maxLate = defaultMaxLateRatio
	fs.Var(&f.maxLate, "max-late-ratio", "exit 1 when more than this share of events came later than detectors.allowed_lateness (files out of order)")
	rest, err := parseFlagsArgs(fs, args)
	if err != nil {
		return nil, nil, err
	}
	paths := append(slices.Clone([]string(f.in.inputs)), rest...)
	if msg := f.usageError(paths); msg != "" {
		fmt.Fprintln(env.stderr, "replay: "+msg)
		fs.Usage()
		return nil, nil, errUsage
	}
	return f, paths, nil
}

// usageError says what is wrong with the combination of flags, "" when nothing is.
func (f *replayFlags) usageError(paths []string) string {
	sources := 0
	for _, set := range []bool{len(paths) > 0, f.kafka != "", f.archive} {
		if set {
			sources++
		}
	}
	switch {
	case f.config == "":
		return "--config is required"
	case sources == 0:
		return "name what to replay: --input, --kafka or --archive"
	case sources > 1:
		return "--input, --kafka and --archive are alternatives: name one"
	case f.kafka != "" && (f.from.IsZero() || f.to.IsZero()):
		return "--kafka reads a time range: give --from and --to"
	case f.archive && (f.from.IsZero() || f.to.IsZero()):
		return "--archive reads a time range: give --from and --to"
	case !f.from.IsZero() && !f.to.IsZero() && !f.to.After(f.from.Time):
		return fmt.Sprintf("--to %s is not after --from %s", f.to.Format(time.RFC3339), f.from.Format(time.RFC3339))
	case f.topic != "" && f.kafka == "":
		return "--topic goes with --kafka"
	case f.warmup < 0:
		return "--warmup must not be negative"
	case f.warmup > 0 && f.from.IsZero():
		return "--warmup reads before --from: give --from"
	case f.compare != "" && f.sweep != "":
		// Which config would the sweep vary? Each question is a replay of its own.
		return "--compare and --sweep are alternatives (a sweep varies the config's own detectors, not --compare's): run one replay for each"
	case f.labels != "" && f.sweep == "":
		return "--labels goes with --sweep"
	case f.events && (f.compare != "" || f.sweep != "" || f.report != "" || f.send):
		return "--events prints events: it takes no --compare, --sweep, --report or --send"
	case !f.events && !f.archive && len(f.keys)+len(f.routes)+len(f.clientIPs) > 0:
		// The detectors need all the traffic: a route's baseline learnt from one client's
		// requests, or a client's failure ratio over one route, raise alerts live never
		// raised, some under live's ids with other evidence.
		return "--key, --route and --client-ip choose the events --events prints: add --events, " +
			"or drop them to replay what live saw (detection needs all the traffic: a route's baseline counts every client's requests)"
	case f.report != "" && slices.Contains(paths, "-"):
		return "--report reads the input twice: give files, --kafka or --archive, not stdin"
	}
	// A value that can match no event would pass for a quiet stretch: an alert's key
	// pasted whole, or an address cut short.
	for _, k := range f.keys {
		if msg := keyMistake(k); msg != "" {
			return msg
		}
	}
	for _, c := range f.clientIPs {
		if msg := clientIPMistake(c); msg != "" {
			return msg
		}
	}
	return ""
}

// keyMistake says what to give instead of --key k when k is an alert's key that names
// no client key or token fingerprint, "" when it may be one.
func keyMistake(k string) string {
	switch {
	case isIPOrNetwork(k):
		return fmt.Sprintf("--key %s is an IP address: --key takes a client key or token fingerprint, and alerts on a client known by its address "+
			"(route_scan, auth_failure_spray, and the others for a client without a key) have the address as their key: give --client-ip %s", k, k)
	case strings.Contains(k, " "):
		return "--key takes a client key or token fingerprint, an alert's key only when it is one: " +
			"for an alert keyed by client and route (object_enumeration) give --key CLIENT --route \"METHOD /route\" " +
			"(--client-ip ADDRESS for a client known by its address), for one keyed by route (quiet_endpoint_spike) --route \"METHOD /route\""
	}
	return ""
}

// clientIPMistake says what is wrong with --client-ip c, "" when it is an address or
// a network. Three numbers of an IPv4 address read as the network they begin.
func clientIPMistake(c string) string {
	if isIPOrNetwork(c) {
		return ""
	}
	msg := fmt.Sprintf("--client-ip %s is no IP address or network: give an address (203.0.113.7, 2001:db8::1) "+
		"or a network in CIDR notation (203.0.113.0/24; 2001:db8:1:2::/64 for an IPv6 client, as alerts name it)", c)
	parts := strings.Split(c, ".")
	if len(parts) > 3 {
		return msg
	}
	for _, p := range parts {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 255 || p != strconv.Itoa(n) {
			return msg
		}
	}
	octets := slices.Clone(parts)
	for len(octets) < 4 {
		octets = append(octets, "0")
	}
	return msg + fmt.Sprintf("; every address that begins %s. is --client-ip %s/%d", c, strings.Join(octets, "."), 8*len(parts))
}

// isIPOrNetwork reports whether s is an IP address or a network in CIDR notation.
func isIPOrNetwork(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	_, err := netip.ParsePrefix(s)
	return err == nil
}

// applySets applies --set detectors.NAME.PARAM=VALUE flags and checks the result.
func applySets(d *detectors.Config, sets []string) error {
	for _, s := range sets {
		path, value, ok := strings.Cut(s, "=")
		if !ok || !strings.HasPrefix(path, "detectors.") {
			return fmt.Errorf("--set %q: want detectors.NAME.PARAM=VALUE", s)
		}
		if err := d.Set(path, value); err != nil {
			return fmt.Errorf("--set %s: %w", s, err)
		}
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("after --set: %w", err)
	}
	return nil
}

// replayRun is one replay command being carried out.
type replayRun struct {
	env      *cmdEnv
	f        *replayFlags
	cfg      *config
	paths    []string
	args     []string // the command line after "replay", for the report
	from, to time.Time
	warmup   time.Duration
	popts    ingest.ParserOptions
	variants []replay.Variant // of --compare or --sweep
	sweep    *replay.Sweep    // nil: no --sweep

	st        store.Store // nil: none opened
	closeSt   func() error
	baseline  detectors.Baselines
	incidents []detectors.IncidentState // open at the start, from the alert history
	dead      *countingDeadLetters
	files     *fileInput         // the file input read, when it is files
	kafka     *replay.KafkaRange // the Kafka range read, when it is one
	closers   []func() error     // of the sources opened
	progress  *progressBar       // nil: stderr is no terminal
	report    *os.File           // --report, created before the replay and written after it
	labels    []replay.Label     // --labels, read before the replay and placed after it
	span      replay.Span        // every event read, before --key, --route and --client-ip
}

func (r *replayRun) run(ctx context.Context) (err error) {
	env, f := r.env, r.f
	defer func() {
		for _, c := range r.closers {
			err = errors.Join(err, c())
		}
		if r.closeSt != nil {
			err = errors.Join(err, r.closeSt())
		}
	}()
	if f.labels != "" {
		// Read now: a labels file that cannot be used fails before the replay runs, not
		// after its alerts were printed.
		if r.labels, err = readLabels(env.stderr, f.labels); err != nil {
			return err
		}
	}
	if r.popts, err = r.cfg.Ingest.ParserOptions(true); err != nil {
		return err
	}
	if r.popts.Secret.Random() {
		var note string
		if r.popts.Secret, note, err = dataDirSecret(r.cfg); err != nil {
			return err
		}
		fmt.Fprintln(env.stderr, "replay: "+note)
	}
	if err := r.openStore(ctx); err != nil {
		return err
	}
	if !f.events {
		if err := r.loadBaselines(ctx); err != nil {
			return err
		}
	}
	if f.report != "" {
		// Created now, so that a path that cannot be written fails before the replay
		// runs, not after; removed again when the replay ends before writing it.
		if r.report, err = os.Create(f.report); err != nil {
			return fmt.Errorf("--report: %w", err)
		}
		defer func() {
			if r.report != nil {
				r.report.Close()
				os.Remove(f.report)
			}
		}()
	}
	w := env.stdout
	if f.out != "" {
		out, err := os.Create(f.out)
		if err != nil {
			return err
		}
		defer out.Close()
		bw := bufio.NewWriterSize(out, 1<<16)
		defer bw.Flush()
		w = bw
	}
	src, err := r.open(ctx, false)
	if err != nil {
		return err
	}
	// SIGINT or SIGTERM (ctx) ends the input, not the engine: the batch in hand is
	// finished and what was raised so far is written before the command exits 130.
	var input detectors.EventSource = &untilCancelled{ctx: ctx, src: src}
	if f.events {
		n, err := replay.WriteEvents(context.WithoutCancel(ctx), input, r.from, r.to, w)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "replay: %d events from %s\n", n, r.sourceName())
		r.noneMatched(n)
		return r.verdicts(ctx, nil)
	}
	opts := replay.Options{
		Source: input, Detectors: r.cfg.Detectors, Baselines: r.baseline, Incidents: r.incidents, RunbookBase: r.cfg.Alerting.RunbookBaseURL,
		From: r.from, To: r.to, Warmup: r.warmup, Out: w, Updates: f.updates, Variants: r.variants,
	}
	r.progress = newProgressBar(env.stderr, r.from.Add(-r.warmup), r.to)
	if r.progress != nil {
		opts.Progress = r.progress.update
	}
	sum, err := replay.Run(context.WithoutCancel(ctx), opts)
	r.progress.finish()
	if err != nil {
		return err
	}
	sum.WriteSummary(env.stderr, "replay")
	if countryOnRead(f.in.format) {
		if w := noCountryWarning(r.cfg, sum.KeyedNoCountry); w != "" {
			fmt.Fprintln(env.stderr, "replay: "+w)
		}
	}
	r.noneMatched(sum.Events)
	r.subsetWarning()
	var rows []replay.SweepRow
	var diff *replay.Diff
	switch {
	case f.compare != "":
		d := replay.WriteCompare(env.stderr, f.config, sum.Results[0], f.compare, sum.Results[1])
		diff = &d
	case r.sweep != nil:
		if err := replay.ResolveLabels(r.labels, sum.Results[0].Alerts); err != nil {
			return fmt.Errorf("--labels %s: %w", f.labels, err)
		}
		rows = replay.SweepRows(*r.sweep, sum.Results[1:], r.labels)
		replay.WriteSweep(env.stderr, *r.sweep, rows, r.labels)
	}
	if f.report != "" && ctx.Err() == nil {
		rep := &replay.Report{Title: "gatewatch replay of " + r.sourceName(), Command: "gatewatch replay " + strings.Join(r.args, " "),
			Summary: sum, Detectors: r.cfg.Detectors, Alerts: sum.Results[0].Alerts, Labels: r.labels, SweepRows: rows, Compare: diff, Sweep: r.sweep}
		if err := r.writeReport(ctx, rep); err != nil {
			return err
		}
	}
	if err := r.verdicts(ctx, sum); err != nil || ctx.Err() != nil {
		return err
	}
	if f.send {
		return r.sendAlerts(ctx, sum.Results[0].Alerts)
	}
	return nil
}

// verdicts judges what was read (rejects, damage, lateness) and reports a signal.
func (r *replayRun) verdicts(ctx context.Context, sum *replay.Summary) error {
	var verdict error
	var stats []ingest.FileStats
	if r.dead != nil {
		fmt.Fprintf(r.env.stderr, "  %d records rejected, %d repaired\n", r.dead.rejected(), r.dead.kept)
	}
	switch {
	case r.files != nil:
		stats = r.files.src.Stats()
		verdict = r.files.verdict(r.env.stderr, "replay", r.f.in.maxReject)
	case r.kafka != nil:
		verdict = kafkaVerdict(r.env.stderr, r.kafka, r.dead, float64(r.f.in.maxReject))
	}
	if sum != nil {
		verdict = errors.Join(verdict, lateVerdict(r.env.stderr, sum, stats, r.cfg.Detectors, float64(r.f.maxLate)))
	}
	verdict = errors.Join(verdict, r.rangeVerdict())
	if ctx.Err() != nil {
		fmt.Fprintln(r.env.stderr, "replay: interrupted: what is above was raised by the events read before the signal")
		return ctx.Err()
	}
	return verdict
}

// rangeVerdict is an error when events were read and none of them fell within --from
// and --to: a range beside the data is a mistake (a wrong year, the wrong file), not a
// quiet stretch, as a Kafka range without a record is. From the archive, which reads
// only the range, reading nothing at all is that mistake, unless one --key narrowed the
// read (then noneMatched says so).
func (r *replayRun) rangeVerdict() error {
	s := &r.span
	switch {
	case s.Read > 0 && s.Within == 0:
		return fmt.Errorf("no event within %s: the %d events read run from %s to %s",
			r.rangeFlags(), s.Read, s.First.UTC().Format(time.RFC3339), s.Last.UTC().Format(time.RFC3339))
	case s.Read == 0 && r.f.archive && len(r.f.keys) != 1:
		return fmt.Errorf("the archive holds no event within %s: check the range, and that store.archive was on then (gatewatch run archives only with it)", r.rangeFlags())
	}
	return nil
}

// rangeFlags names the range asked for, as the flags that set it.
func (r *replayRun) rangeFlags() string {
	var fl []string
	if !r.from.IsZero() {
		fl = append(fl, "--from "+r.from.Format(time.RFC3339))
	}
	if !r.to.IsZero() {
		fl = append(fl, "--to "+r.to.Format(time.RFC3339))
	}
	return strings.Join(fl, " ")
}

// kafkaVerdict is inputVerdict for a Kafka range, each partition an input. A range that
// holds no record is an error: a replay asked for a stretch of a topic, and reading
// nothing there is a wrong topic or a stretch past the topic's retention.
func kafkaVerdict(w io.Writer, k *replay.KafkaRange, dead *countingDeadLetters, maxReject float64) error {
	var stats []ingest.FileStats
	var records int64
	for _, p := range k.Partitions() {
		stats = append(stats, ingest.FileStats{Name: fmt.Sprintf("%s (offsets %d to %d)", p.Partition, p.Start, p.End),
			Records: p.Records, Events: p.Events, Rejected: p.Rejected, First: p.First, Last: p.Last})
		records += p.Records
	}
	err := inputVerdict(w, "replay", stats, dead, maxReject)
	if records == 0 {
		err = errors.Join(err, fmt.Errorf("%s holds no record in the range: check --topic, and that the range is within the topics' retention", k))
	}
	return err
}

// openStore opens the store when the replay needs it: to read the archive, or for the
// baselines as of --from. The embedded store is opened only when it exists; a
// ClickHouse store gets a spill directory of its own, so a replay never touches the
// live service's.
func (r *replayRun) openStore(ctx context.Context) error {
	f := r.f
	wantBaselines := !f.events && !f.emptyBaselines && !r.from.IsZero()
	if !f.archive && !wantBaselines {
		return nil
	}
	sc := r.cfg.Store
	var spill string
	if sc.ClickHouse != nil {
		ch := *sc.ClickHouse
		dir, err := os.MkdirTemp("", "gatewatch-replay-spill-")
		if err != nil {
			return err
		}
		spill, ch.SpillDir = dir, dir
		sc.ClickHouse = &ch
	} else if _, err := os.Stat(store.LocalPath(sc)); err != nil {
		if f.archive {
			return fmt.Errorf("--archive: no embedded store at %s (store.data_dir): the archive is kept by gatewatch run", store.LocalPath(sc))
		}
		return nil // no store: nothing learned to start from
	}
	st, err := store.Open(sc, store.Options{Registerer: prometheus.NewRegistry(), Baselines: store.BaselineSettingsFrom(r.cfg.Detectors)})
	switch {
	case err != nil && sc.ClickHouse == nil && !f.archive:
		// Most likely gatewatch run holds it. Detection can go on from empty
		// baselines, or a warm-up, but not silently.
		fmt.Fprintf(r.env.stderr, "replay: warning: cannot read the baselines of the embedded store (%v): is gatewatch run using it? "+
			"It opens in one process at a time. Baselines start empty: new_country and the detectors that learn may stay quiet (--warmup 24h learns from the day before)\n", err)
		return nil
	case err != nil && sc.ClickHouse == nil:
		return fmt.Errorf("--archive: %w: is gatewatch run using %s? The embedded store opens in one process at a time: stop it, or replay from files or Kafka", err, store.LocalPath(sc))
	case err != nil:
		os.RemoveAll(spill)
		return err
	}
	r.st = st
	r.closeSt = func() error {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		err := st.Close(cctx)
		if spill != "" {
			os.RemoveAll(spill)
		}
		return err
	}
	return nil
}

// loadBaselines takes the baselines the store had at the start of the replay (--from,
// or --from minus --warmup).
func (r *replayRun) loadBaselines(ctx context.Context) error {
	w := r.env.stderr
	at := r.from.Add(-r.warmup)
	switch {
	case r.f.emptyBaselines:
		fmt.Fprintln(w, "replay: baselines start empty"+warmupNote(r.warmup))
		return nil
	case r.from.IsZero():
		fmt.Fprintln(w, "replay: baselines start empty (no --from to take them as of)")
		return nil
	case r.st == nil:
		fmt.Fprintf(w, "replay: baselines start empty: no store to read them from%s\n", warmupNote(r.warmup))
		return nil
	}
	b, err := r.st.BaselinesAsOf(ctx, at)
	if err != nil {
		return fmt.Errorf("baselines as of %s: %w", at.Format(time.RFC3339), err)
	}
	r.baseline = b
	recs, err := r.st.Alerts(ctx, at.Add(-incidentLookback), at, "")
	if err != nil {
		return fmt.Errorf("incidents open at %s: %w", at.Format(time.RFC3339), err)
	}
	alerts := make([]detectors.Alert, len(recs))
	for i := range recs {
		alerts[i] = recs[i].Alert
	}
	r.incidents = replay.IncidentsAsOf(alerts, at)
	since := "no traffic before it"
	if !b.TrafficSince.IsZero() {
		since = "traffic since " + b.TrafficSince.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "replay: baselines as the store had them at %s: %s, %d keys, %d routes, %d %s open%s\n",
		at.Format(time.RFC3339), since, len(b.Keys), len(b.Routes), len(r.incidents), plural(len(r.incidents), "incident", "incidents"), warmupNote(r.warmup))
	return nil
}

// incidentLookback is how far before the start of a replay the alert history is read
// for incidents still open then: their detectors' cooldowns (an hour at most by
// default) decide which of them a firing continues.
const incidentLookback = 24 * time.Hour

func warmupNote(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return fmt.Sprintf(", then learned from the %s before --from", d)
}

// open opens the source of events named by the flags, filtered by --key, --route and
// --client-ip. The report reads the input again: then what it rejects is not kept or
// counted a second time, and the first reading's stats stay.
func (r *replayRun) open(ctx context.Context, again bool) (detectors.EventSource, error) {
	f := r.f
	filter := replay.Filter{Keys: f.keys, Routes: f.routes, ClientIPs: f.clientIPs}
	start := r.from.Add(-r.warmup)
	var src detectors.EventSource
	switch {
	case f.archive:
		key := ""
		if len(f.keys) == 1 {
			key = f.keys[0] // the store reads one key's events by its index
		}
		a := replay.NewArchive(r.st.ReadEvents(ctx, start, r.to, key))
		src = a
		r.closers = append(r.closers, a.Close)
	case f.kafka != "":
		var dead ingest.DeadLetters
		if !again {
			// Rejected records are reported and counted, not stored again: the live
			// service kept them in its dead-letter sink when it read them.
			r.dead = &countingDeadLetters{next: &ingest.ReportDeadLetters{W: r.env.stderr}}
			dead = r.dead
		}
		k, err := r.openKafka(ctx, start, dead)
		if err != nil {
			return nil, err
		}
		src = k
		r.closers = append(r.closers, k.Close)
		if !again {
			r.kafka = k
		}
	case again:
		fs, err := ingest.NewFileSource(r.paths, ingest.FileOptions{Format: f.in.format, Parser: r.popts, Registerer: prometheus.NewRegistry()})
		if err != nil {
			return nil, err
		}
		src = fs
		r.closers = append(r.closers, fs.Close)
	default:
		// Whether records of some formats carry a country is known once they are read:
		// see the summary.
		if w := countryWarning(r.cfg, f.in.format); w != "" && !countryOnRead(f.in.format) {
			fmt.Fprintln(r.env.stderr, "replay: "+w)
		}
		fi, err := f.in.open(r.env, r.cfg, r.popts, r.paths, r.cfg.Detectors.AllowedLateness)
		if err != nil {
			return nil, err
		}
		r.files, r.dead, src = fi, fi.dead, fi.src
		r.closers = append(r.closers, fi.Close)
	}
	if !again {
		r.span = replay.Span{From: r.from, To: r.to}
		src = r.span.Source(src)
	}
	return replay.Filtered(src, filter), nil
}

// openKafka opens the Kafka range of --kafka and --topic (the config's topics and
// formats when --topic is not given; --format for topics the config does not name).
func (r *replayRun) openKafka(ctx context.Context, start time.Time, dead ingest.DeadLetters) (*replay.KafkaRange, error) {
	f := r.f
	kc := r.cfg.Ingest.Kafka
	kc.Brokers = strings.Split(f.kafka, ",")
	var topics []ingest.TopicConfig
	if f.topic == "" {
		topics = kc.Topics
		if len(topics) == 0 {
			return nil, errors.New("--kafka: name the topics with --topic (the config's ingest.kafka.topics is empty)")
		}
	}
	for _, name := range strings.Split(f.topic, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		format := f.in.format
		if i := slices.IndexFunc(kc.Topics, func(t ingest.TopicConfig) bool { return t.Name == name }); i >= 0 && format == ingest.FormatAuto {
			format = kc.Topics[i].Format
		}
		topics = append(topics, ingest.TopicConfig{Name: name, Format: format})
	}
	dialer, err := kafka.NewDialer(kc)
	if err != nil {
		return nil, err
	}
	return replay.NewKafkaRange(ctx, replay.KafkaOptions{
		Brokers: kc.Brokers, Dialer: dialer, Topics: topics, Start: start.Add(-kafkaMargin), End: r.to.Add(kafkaMargin),
		Parser: r.popts, DeadLetters: dead,
	})
}

// sourceName names what was replayed, for messages and the report.
func (r *replayRun) sourceName() string {
	switch {
	case r.f.archive:
		return "the archive"
	case r.kafka != nil:
		return r.kafka.String()
	}
	return strings.Join(r.paths, ", ")
}

// filterNames returns the --key, --route and --client-ip filters set, as "--key K",
// and the flags among those three that were given.
func (f *replayFlags) filterNames() (names, flags []string) {
	for _, l := range []struct {
		flag string
		vs   listFlag
	}{{"--key", f.keys}, {"--route", f.routes}, {"--client-ip", f.clientIPs}} {
		for _, v := range l.vs {
			names = append(names, l.flag+" "+v)
		}
		if len(l.vs) > 0 {
			flags = append(flags, l.flag)
		}
	}
	return names, flags
}

// noneMatched says so when --key, --route or --client-ip left no event of those read:
// a value that names nothing (a typo, an address in another form) looks like a quiet
// stretch otherwise. A range beside the data is rangeVerdict's to report.
func (r *replayRun) noneMatched(events int) {
	names, _ := r.f.filterNames()
	if events > 0 || len(names) == 0 || (r.span.Read > 0 && r.span.Within == 0) {
		return
	}
	fmt.Fprintf(r.env.stderr, "replay: warning: no event in the range matched %s (keys are fingerprints as events and alerts show them; routes are \"METHOD /route\" or \"/route\" as the gateway logs them)\n",
		strings.Join(names, ", "))
}

// partialDetectors names, per filter, the detectors that count traffic beyond the
// events it keeps: a route's requests come from many keys and addresses (--key,
// --client-ip), a client's from many routes (--route) and addresses (--client-ip), an
// address's from many keys (--key), and a token's from many clients.
var partialDetectors = map[string][]string{
	"--key": {detectors.TokenReuse, detectors.QuietEndpointSpike, detectors.AuthFailureSpray, detectors.RouteScan},
	"--route": {detectors.NewCountry, detectors.TokenReuse, detectors.ForbiddenBurst, detectors.AuthFailureSpray,
		detectors.PrivilegeAnomaly, detectors.ClientVolumeSpike, detectors.RouteScan},
	"--client-ip": {detectors.NewCountry, detectors.TokenReuse, detectors.ForbiddenBurst, detectors.QuietEndpointSpike,
		detectors.ObjectEnumeration, detectors.PrivilegeAnomaly, detectors.ClientVolumeSpike},
}

// subsetWarning says, when the detectors ran on part of the archive (the only source
// that takes --key, --route or --client-ip without --events: with one --key it reads
// only that key's events, which makes a long range quick), that their alerts need not
// be live's, and which detectors saw only part of what they count.
func (r *replayRun) subsetWarning() {
	names, flags := r.f.filterNames()
	if r.f.events || len(names) == 0 {
		return
	}
	var partial []string
	for _, f := range flags {
		partial = append(partial, partialDetectors[f]...)
	}
	slices.Sort(partial)
	fmt.Fprintf(r.env.stderr, "replay: warning: the detectors ran on the events of %s alone, not on all the traffic: "+
		"%s count traffic beyond them and saw only part of it, so alerts may differ from live's, even those with live's ids; "+
		"replay without %s for what live raised\n",
		strings.Join(names, ", "), strings.Join(slices.Compact(partial), ", "), strings.Join(flags, ", "))
}

// writeReport reads the input again for the timelines and writes the report.
func (r *replayRun) writeReport(ctx context.Context, rep *replay.Report) error {
	alerts := rep.Alerts[:min(len(rep.Alerts), replay.MaxReportAlerts)]
	if len(alerts) > 0 {
		src, err := r.open(ctx, true)
		if err != nil {
			return fmt.Errorf("--report: %w", err)
		}
		if rep.Timelines, err = replay.Timelines(ctx, src, alerts); err != nil {
			return fmt.Errorf("--report: %w", err)
		}
	}
	out := r.report
	r.report = nil
	bw := bufio.NewWriter(out)
	err := errors.Join(replay.WriteReport(bw, rep), bw.Flush(), out.Close())
	if err == nil {
		fmt.Fprintf(r.env.stderr, "replay: report written to %s\n", r.f.report)
	}
	return err
}

// readLabels reads --labels, warning on w when the file holds none: the sweep then
// counts no attacks, as if --labels had not been given, and an empty export or a wrong
// file should not pass for that unnoticed.
func readLabels(w io.Writer, path string) ([]replay.Label, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--labels: %w", err)
	}
	defer fd.Close()
	labels, err := replay.ReadLabels(fd)
	if err != nil {
		return nil, fmt.Errorf("--labels %s: %w", path, err)
	}
	if len(labels) == 0 {
		fmt.Fprintf(w, "replay: warning: --labels %s holds no labels: the sweep counts no attacks\n", path)
	}
	return labels, nil
}

// sendAlerts sends the replay's alerts through the configured routes, outbox and
// receivers, as notify does (the store is closed first: delivery opens it again).
func (r *replayRun) sendAlerts(ctx context.Context, alerts []detectors.Alert) error {
	if r.closeSt != nil {
		if err := r.closeSt(); err != nil {
			return err
		}
		r.closeSt = nil
	}
	d, err := openDelivery(ctx, r.env, r.cfg)
	if err != nil {
		return fmt.Errorf("--send: %w", err)
	}
	s, err := send(ctx, d.Router(), alerts, 2*time.Minute)
	if err == nil {
		err = d.StopRouter(stopTimeout)
	}
	if err == nil {
		// Where each alert went is for the person: stdout holds only the alerts.
		env := *r.env
		env.stdout = r.env.stderr
		err = report(ctx, &env, d.Router(), alerts, s, r.f.config, outboxDir(r.cfg))
	}
	return errors.Join(err, d.Close(stopTimeout))
}

// disorderLag is the most a line of one log may lag behind a newer one for replay to
// take it as the log's own disorder rather than logs of several sources mixed.
const disorderLag = 10 * time.Minute

// latenessFor returns the allowed_lateness that takes an event lag behind a newer one,
// rounded up (to ten seconds under a minute, else to whole minutes), in the form --set
// reads; false when the lag is more than disorderLag, or the value is not above dcfg's
// or dcfg with it does not validate.
func latenessFor(lag time.Duration, dcfg detectors.Config) (string, bool) {
	if lag > disorderLag {
		return "", false
	}
	unit := time.Minute
	if lag < time.Minute {
		unit = 10 * time.Second
	}
	d := (lag + unit - 1).Truncate(unit)
	if d <= dcfg.AllowedLateness {
		return "", false
	}
	dcfg.AllowedLateness = d
	if dcfg.Validate() != nil {
		return "", false
	}
	if d%time.Minute == 0 {
		return fmt.Sprintf("%dm", d/time.Minute), true
	}
	return fmt.Sprintf("%ds", d/time.Second), true
}

// lateWarnShare is the share of late events from which replay names the files that
// brought them, below --max-late-ratio's limit as well as above it.
const lateWarnShare = 0.001

// lateVerdict warns, naming the inputs that brought them, when a noticeable share of
// events came later than the detectors' allowed lateness (their windows had closed, so
// they counted for baselines only), and returns an error when the share passes maxLate.
// When the latest of them came within what dcfg could allow, it says what
// allowed_lateness would take them all: a log whose lines are a little out of order
// (Apache's %t is when a request started, its line is written when it ends) needs only
// that.
func lateVerdict(w io.Writer, sum *replay.Summary, stats []ingest.FileStats, dcfg detectors.Config, maxLate float64) error {
	events := sum.Events + sum.WarmupEvents
	if events == 0 || sum.Late == 0 {
		return nil
	}
	share := float64(sum.Late) / float64(events)
	if share < lateWarnShare {
		return nil
	}
	late := slices.Clone(stats)
	slices.SortStableFunc(late, func(a, b ingest.FileStats) int { return int(b.Late - a.Late) })
	var files []string
	var lag time.Duration
	for _, st := range late {
		if st.Late > 0 && len(files) < 5 {
			files = append(files, fmt.Sprintf("%s (%d late of %d)", st.Name, st.Late, st.Events))
		}
		lag = max(lag, st.MaxLag)
	}
	fmt.Fprintf(w, "replay: warning: %d of %d events (%s) came more than the allowed lateness behind newer ones, so the detectors' windows had closed for them",
		sum.Late, events, percent(int64(sum.Late), int64(events)))
	if len(files) > 0 {
		fmt.Fprintf(w, "; they came from %s", strings.Join(files, ", "))
	}
	if d, ok := latenessFor(lag, dcfg); ok {
		fmt.Fprintf(w, ": the latest came %s behind a newer one, as in a log whose lines are a little out of order; with --set detectors.allowed_lateness=%s (or that in the config, which delays live alerts as much) none would be late\n",
			lag.Round(time.Second), d)
	} else {
		fmt.Fprintln(w, ": does a file mix the lines of several gateways or hosts, or hold them out of order, or did a gateway's clock run ahead for minutes? Replay one stream at a time, or raise detectors.allowed_lateness")
	}
	if share <= maxLate {
		return nil
	}
	return fmt.Errorf("%d of %d events late (%s, over --max-late-ratio %g): attacks in them may have been missed", sum.Late, events, percent(int64(sum.Late), int64(events)), maxLate)
}

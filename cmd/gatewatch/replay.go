package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/replay"
)

// setFlags collects repeated --set detectors.NAME.PARAM=VALUE flags.
type setFlags []string

func (s *setFlags) String() string     { return strings.Join(*s, " ") }
func (s *setFlags) Set(v string) error { *s = append(*s, v); return nil }

func runReplay(ctx context.Context, env *cmdEnv, args []string) error {
	const usage = "replay --config FILE --input PATH|- [--format F] [--from T] [--to T] [--out FILE] [--updates] [--set detectors.NAME.PARAM=VALUE]... [--max-reject-ratio R] [--max-late-ratio R]"
	fs := newFlagSet(env, "replay", usage)
	configPath := fs.String("config", "", "config file (required; the detectors section is used)")
	var in inputFlags
	in.define(fs)
	from := fs.String("from", "", "skip events before this time (RFC 3339)")
	to := fs.String("to", "", "skip events at or after this time (RFC 3339)")
	out := fs.String("out", "", "write alerts to this file instead of stdout")
	updates := fs.Bool("updates", false, "print every version of an incident as it is raised, not only its final state")
	maxLate := ratioFlag(defaultMaxLateRatio)
	fs.Var(&maxLate, "max-late-ratio", "exit 1 when more than this share of events came later than detectors.allowed_lateness (files out of order)")
	var sets setFlags
	fs.Var(&sets, "set", "override a detector setting, e.g. detectors.forbidden_burst.threshold=10 (repeatable)")
	rest, err := parseFlagsArgs(fs, args)
	if err != nil {
		return err
	}
	paths, err := in.paths(env, fs, rest)
	if err != nil {
		return err
	}
	if *configPath == "" {
		fmt.Fprintln(env.stderr, "replay: --config is required")
		fs.Usage()
		return errUsage
	}
	cfg, err := loadConfigFile(*configPath)
	if err != nil {
		return err
	}
	for _, s := range sets {
		path, value, ok := strings.Cut(s, "=")
		if !ok || !strings.HasPrefix(path, "detectors.") {
			return fmt.Errorf("--set %q: want detectors.NAME.PARAM=VALUE", s)
		}
		if err := cfg.Detectors.Set(path, value); err != nil {
			return fmt.Errorf("--set %s: %w", s, err)
		}
	}
	if err := cfg.Detectors.Validate(); err != nil {
		return fmt.Errorf("after --set: %w", err)
	}
	var t0, t1 time.Time
	for _, f := range []struct {
		flag, v string
		t       *time.Time
	}{{"--from", *from, &t0}, {"--to", *to, &t1}} {
		if f.v == "" {
			continue
		}
		if *f.t, err = time.Parse(time.RFC3339, f.v); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	popts, err := cfg.Ingest.ParserOptions(true)
	if err != nil {
		return err
	}
	if popts.Secret.Random() {
		var note string
		if popts.Secret, note, err = dataDirSecret(cfg); err != nil {
			return err
		}
		fmt.Fprintln(env.stderr, "replay: "+note)
	}
	if w := countryWarning(cfg, in.format); w != "" {
		fmt.Fprintln(env.stderr, "replay: "+w)
	}
	input, err := in.open(env, cfg, popts, paths, cfg.Detectors.AllowedLateness)
	if err != nil {
		return err
	}
	defer input.Close()
	w := env.stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	// SIGINT or SIGTERM (ctx) ends the input, not the engine: the batch in hand is
	// finished and the alerts raised so far are written before the command exits 130.
	sum, err := replay.Run(context.WithoutCancel(ctx), replay.Options{
		Source: &untilCancelled{ctx: ctx, src: input.src}, Detectors: cfg.Detectors, RunbookBase: cfg.Alerting.RunbookBaseURL,
		From: t0, To: t1, Out: w, Updates: *updates,
	})
	if err != nil {
		return err
	}
	sum.WriteSummary(env.stderr, "replay")
	fmt.Fprintf(env.stderr, "  %d records rejected, %d repaired\n", input.dead.rejected(), input.dead.kept)
	verdict := errors.Join(input.verdict(env.stderr, "replay", in.maxReject),
		lateVerdict(env.stderr, sum, input.src.Stats(), float64(maxLate)))
	if ctx.Err() != nil {
		fmt.Fprintln(env.stderr, "replay: interrupted: the alerts above are those raised by the events read before the signal")
		return ctx.Err()
	}
	return verdict
}

// lateWarnShare is the share of late events from which replay names the files that
// brought them, below --max-late-ratio's limit as well as above it.
const lateWarnShare = 0.001

// lateVerdict warns, naming the inputs that brought them, when a noticeable share of
// events came later than the detectors' allowed lateness (their windows had closed, so
// they counted for baselines only), and returns an error when the share passes maxLate.
func lateVerdict(w io.Writer, sum *replay.Summary, stats []ingest.FileStats, maxLate float64) error {
	if sum.Events == 0 || sum.Late == 0 {
		return nil
	}
	share := float64(sum.Late) / float64(sum.Events)
	if share < lateWarnShare {
		return nil
	}
	late := slices.Clone(stats)
	slices.SortStableFunc(late, func(a, b ingest.FileStats) int { return int(b.Late - a.Late) })
	var files []string
	for _, st := range late {
		if st.Late > 0 && len(files) < 5 {
			files = append(files, fmt.Sprintf("%s (%d late of %d)", st.Name, st.Late, st.Events))
		}
	}
	fmt.Fprintf(w, "replay: warning: %d of %d events (%.1f%%) came more than the allowed lateness behind newer ones, so the detectors' windows had closed for them",
		sum.Late, sum.Events, 100*share)
	if len(files) > 0 {
		fmt.Fprintf(w, "; they came from %s", strings.Join(files, ", "))
	}
	fmt.Fprintln(w, ": are files of several gateways or hosts mixed, or out of order? Replay one stream at a time, or raise detectors.allowed_lateness")
	if share <= maxLate {
		return nil
	}
	return fmt.Errorf("%d of %d events late (%.1f%%, over --max-late-ratio %g): attacks in them may have been missed", sum.Late, sum.Events, 100*share, maxLate)
}

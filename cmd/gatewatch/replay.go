package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/replay"
)

// setFlags collects repeated --set detectors.NAME.PARAM=VALUE flags.
type setFlags []string

func (s *setFlags) String() string     { return strings.Join(*s, " ") }
func (s *setFlags) Set(v string) error { *s = append(*s, v); return nil }

func runReplay(ctx context.Context, env *cmdEnv, args []string) error {
	const usage = "replay --config FILE --input PATH|- [--format F] [--from T] [--to T] [--out FILE] [--updates] [--set detectors.NAME.PARAM=VALUE]..."
	fs := newFlagSet(env, "replay", usage)
	configPath := fs.String("config", "", "config file (required; the detectors section is used)")
	input := fs.String("input", "", "file, directory or - for stdin (gzip is recognised)")
	format := fs.String("format", ingest.FormatAuto, "log format: "+strings.Join(ingest.Formats, ", "))
	from := fs.String("from", "", "skip events before this time (RFC 3339)")
	to := fs.String("to", "", "skip events at or after this time (RFC 3339)")
	out := fs.String("out", "", "write alerts to this file instead of stdout")
	updates := fs.Bool("updates", false, "print every version of an incident as it is raised, not only its final state")
	var sets setFlags
	fs.Var(&sets, "set", "override a detector setting, e.g. detectors.forbidden_burst.threshold=10 (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *configPath == "" || *input == "" {
		fmt.Fprintln(env.stderr, "replay: --config and --input are required")
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
		fmt.Fprintln(env.stderr, "replay: no token secret configured: fingerprints (and so alert keys) use a random key for this run only")
	}
	dl := &countingDeadLetters{next: &ingest.ReportDeadLetters{W: env.stderr}}
	src, err := ingest.NewFileSource([]string{*input}, ingest.FileOptions{Format: *format, Parser: popts, DeadLetters: dl, Stdin: env.stdin, Registerer: prometheus.NewRegistry()})
	if err != nil {
		return err
	}
	defer src.Close()
	w := env.stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	sum, err := replay.Run(ctx, replay.Options{
		Source: src, Detectors: cfg.Detectors, RunbookBase: cfg.Alerting.RunbookBaseURL, From: t0, To: t1, Out: w, Updates: *updates,
	})
	if err != nil {
		return err
	}
	sum.WriteSummary(env.stderr, "replay")
	fmt.Fprintf(env.stderr, "  %d records rejected, %d repaired\n", dl.n-dl.kept, dl.kept)
	return nil
}

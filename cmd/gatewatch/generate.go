package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

func runGenerate(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "generate", "generate [--duration D] [--rate R] [--format F] [--seed N] [--attacks LIST] [--start T]")
	duration := fs.Duration("duration", 3*time.Hour, "span of event time to generate")
	rate := fs.Float64("rate", 20, "background requests per second of event time")
	format := fs.String("format", ingest.FormatAWSWAF, "output format: "+strings.Join(synth.Formats, ", "))
	seed := fs.Uint64("seed", 1, "random seed; the same flags give the same bytes")
	attacks := fs.String("attacks", strings.Join(synth.Attacks, ","), "comma-separated attacks to inject (empty for none): "+strings.Join(synth.Attacks, ", "))
	clients := fs.Int("clients", 300, "number of API clients")
	start := timeFlag{synth.DefaultStart}
	fs.Var(&start, "start", "event time of the first request (RFC 3339, seconds optional, such as 2026-11-02T08:00Z; or a date, its midnight UTC)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, bad := range []struct {
		flag string
		bad  bool
	}{{"--duration", *duration <= 0}, {"--rate", !(*rate > 0)}, {"--clients", *clients <= 0}} {
		if bad.bad {
			fmt.Fprintf(env.stderr, "generate: %s must be positive\n", bad.flag)
			return errUsage
		}
	}
	if !synth.CanWrite(*format) {
		fmt.Fprintf(env.stderr, "generate: cannot write format %q (want one of %s)\n", *format, strings.Join(synth.Formats, ", "))
		return errUsage
	}
	cfg := synth.Config{Start: start.Time, Duration: *duration, Rate: *rate, Seed: *seed, Clients: *clients}
	if *attacks != "" {
		cfg.Attacks = strings.Split(*attacks, ",")
	}
	reqs, injected, err := synth.Generate(cfg)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(env.stdout, 256<<10)
	var line []byte
	for i := range reqs {
		if i%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if line, err = synth.AppendRecord(line[:0], *format, &reqs[i]); err != nil {
			return err
		}
		line = append(line, '\n')
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	// The span the records cover: an attack near the end of --duration runs past it.
	first, last := cfg.Start, cfg.Start
	for i := range reqs {
		if i == 0 || reqs[i].Time.Before(first) {
			first = reqs[i].Time
		}
		if reqs[i].Time.After(last) {
			last = reqs[i].Time
		}
	}
	fmt.Fprintf(env.stderr, "generate: %d %s records from %s to %s, attacks injected:\n", len(reqs), *format,
		first.Format(time.RFC3339), last.Format(time.RFC3339))
	enc := json.NewEncoder(env.stderr)
	for _, inj := range injected {
		if err := enc.Encode(inj); err != nil {
			return err
		}
	}
	return nil
}

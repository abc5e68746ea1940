package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
)

func runParse(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "parse", "parse [--config FILE] [--format F] --input PATH|- [--max-reject-ratio R]")
	configPath := fs.String("config", "", "config file (token secret, GeoIP database, headers, dead-letter file)")
	var in inputFlags
	in.define(fs)
	rest, err := parseFlagsArgs(fs, args)
	if err != nil {
		return err
	}
	paths, err := in.paths(env, fs, rest)
	if err != nil {
		return err
	}
	cfg, err := loadConfigFile(*configPath)
	if err != nil {
		return err
	}
	popts, err := cfg.Ingest.ParserOptions(true)
	if err != nil {
		return err
	}
	switch {
	case !popts.Secret.Random():
	case *configPath != "":
		// As replay and fingerprint do, so that an alert's key is found in what parse prints.
		var note string
		if popts.Secret, note, err = dataDirSecret(cfg); err != nil {
			return err
		}
		fmt.Fprintln(env.stderr, "parse: "+note)
	default:
		fmt.Fprintln(env.stderr, "parse: no token secret configured: fingerprints use a random key for this run only")
	}
	if *configPath != "" && !countryOnRead(in.format) { // else known once read, below
		if w := countryWarning(cfg, in.format); w != "" {
			fmt.Fprintln(env.stderr, "parse: "+w)
		}
	}
	input, err := in.open(env, cfg, popts, paths, 0)
	if err != nil {
		return err
	}
	defer input.Close()

	// SIGINT or SIGTERM (ctx) ends the reading; the events read so far are written and
	// the summary printed before the command exits 130.
	w := bufio.NewWriterSize(env.stdout, 256<<10)
	var buf []byte
	events, noCountry := 0, 0
	for {
		b, err := input.src.Next(ctx)
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				break
			}
			return err
		}
		for i := range b.Events {
			if ev := &b.Events[i]; ev.ClientKey != "" && ev.Country == "" {
				noCountry++
			}
			buf = b.Events[i].AppendJSON(buf[:0])
			buf = append(buf, '\n')
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
		events += len(b.Events)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "parse: %d events, %d rejected, %d repaired\n", events, input.dead.rejected(), input.dead.kept)
	if *configPath != "" && countryOnRead(in.format) {
		if w := noCountryWarning(cfg, noCountry); w != "" {
			fmt.Fprintln(env.stderr, "parse: "+w)
		}
	}
	verdict := input.verdict(env.stderr, "parse", in.maxReject)
	if ctx.Err() != nil {
		fmt.Fprintln(env.stderr, "parse: interrupted: the events above are those read before the signal")
		return ctx.Err()
	}
	return verdict
}

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
)

func runParse(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "parse", "parse [--config FILE] [--format F] --input PATH|-")
	configPath := fs.String("config", "", "config file (token secret, GeoIP database, headers, dead-letter file)")
	format := fs.String("format", ingest.FormatAuto, "log format: "+strings.Join(ingest.Formats, ", "))
	input := fs.String("input", "", "file, directory or - for stdin (gzip is recognised)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *input == "" {
		fmt.Fprintln(env.stderr, "parse: --input is required")
		fs.Usage()
		return errUsage
	}
	cfg, err := loadConfigFile(*configPath)
	if err != nil {
		return err
	}
	popts, err := cfg.Ingest.ParserOptions(true)
	if err != nil {
		return err
	}
	if popts.Secret.Random() {
		fmt.Fprintln(env.stderr, "parse: no token secret configured: fingerprints use a random key for this run only")
	}
	report := &countingDeadLetters{next: &ingest.ReportDeadLetters{W: env.stderr}}
	var dl ingest.DeadLetters = report
	if cfg.Ingest.DeadLetter.File != "" {
		f, err := ingest.OpenFileDeadLetters(cfg.Ingest.DeadLetter.File)
		if err != nil {
			return err
		}
		defer f.Close()
		dl = ingest.TeeDeadLetters{f, report}
	}
	src, err := ingest.NewFileSource([]string{*input}, ingest.FileOptions{
		Format: *format, Parser: popts, DeadLetters: dl, Stdin: env.stdin, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		return err
	}
	defer src.Close()
	w := bufio.NewWriterSize(env.stdout, 256<<10)
	var buf []byte
	events := 0
	for {
		b, err := src.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		for i := range b.Events {
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
	fmt.Fprintf(env.stderr, "parse: %d events, %d rejected, %d repaired\n", events, report.n-report.kept, report.kept)
	return nil
}

// countingDeadLetters counts the records passed on to next.
type countingDeadLetters struct {
	next ingest.DeadLetters
	n    int // letters, repaired ones included
	kept int // repaired records whose events were kept
}

func (c *countingDeadLetters) Put(ctx context.Context, letters []ingest.DeadLetter) error {
	c.n += len(letters)
	for _, l := range letters {
		if l.Kept {
			c.kept++
		}
	}
	return c.next.Put(ctx, letters)
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/internal/pipeline"
)

// This file holds what the commands that read logs (parse and replay, and run) share:
// their inputs, token secret and dead-letter sinks, and the verdict on what they read.
// Each ends in an error (exit status 1) when the input cannot be trusted: too many
// records rejected, damaged files, too many events late. A run that says "0 rejected"
// and exits 0 must mean the detectors saw the traffic.

// Defaults of --max-reject-ratio and --max-late-ratio: a healthy log rejects or delays
// next to nothing, a wrong --format or a wrong file order nearly everything.
const (
	defaultMaxRejectRatio = 0.01
	defaultMaxLateRatio   = 0.01
)

// inputList collects repeated --input flags.
type inputList []string

func (l *inputList) String() string     { return strings.Join(*l, " ") }
func (l *inputList) Set(v string) error { *l = append(*l, v); return nil }

// ratioFlag is a flag.Value for a share between 0 and 1.
type ratioFlag float64

func (r *ratioFlag) String() string { return strconv.FormatFloat(float64(*r), 'g', -1, 64) }
func (r *ratioFlag) Set(v string) error {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 0 && f <= 1) { // NaN too: no count is over it, and the check would be off
		return errors.New("want a share between 0 and 1, such as 0.01")
	}
	*r = ratioFlag(f)
	return nil
}

// percent formats n of total as a percentage with the digits it takes to differ from a
// ratio it is compared with: 25 of 2429 is 1.03%, not 1.0% (over 1%?).
func percent(n, total int64) string {
	p := 100 * float64(n) / float64(total)
	if p >= 10 || p == math.Trunc(p) {
		return strconv.FormatFloat(p, 'f', 1, 64) + "%"
	}
	return strconv.FormatFloat(p, 'g', 3, 64) + "%"
}

// inputFlags defines the flags that name what parse and replay read and how strictly
// they judge it.
type inputFlags struct {
	inputs    inputList
	format    string
	maxReject ratioFlag
}

func (f *inputFlags) define(fs *flag.FlagSet) {
	f.maxReject = defaultMaxRejectRatio
	fs.Var(&f.inputs, "input", "file, directory or - for stdin (gzip is recognised); repeatable, and paths after the flags are inputs too")
	f.format = ingest.FormatAuto
	fs.Func("format", "log format: "+strings.Join(ingest.Formats, ", ")+" (default auto)", func(v string) error {
		if !slices.Contains(ingest.Formats, v) {
			return fmt.Errorf("unknown format %q (want one of %s)", v, strings.Join(ingest.Formats, ", "))
		}
		f.format = v
		return nil
	})
	fs.Var(&f.maxReject, "max-reject-ratio", "exit 1 when more than this share of records is rejected")
}

// paths returns every input named, or a usage error when there is none.
func (f *inputFlags) paths(env *cmdEnv, fs *flag.FlagSet, args []string) ([]string, error) {
	paths := append(slices.Clone([]string(f.inputs)), args...)
	if len(paths) == 0 {
		fmt.Fprintf(env.stderr, "%s: --input is required\n", fs.Name())
		fs.Usage()
		return nil, errUsage
	}
	if len(paths) > 1 && slices.Contains(paths, "-") {
		fmt.Fprintf(env.stderr, "%s: stdin (-) cannot be read together with other inputs\n", fs.Name())
		return nil, errUsage
	}
	return paths, nil
}

// fileInput is what parse and replay read: the files, with the dead-letter sinks of the
// config behind a count of what they rejected.
type fileInput struct {
	src        *ingest.FileSource
	dead       *countingDeadLetters
	closeSinks func() error
}

// open opens the inputs named on the command line. lateness is the detectors'
// allowed_lateness, for the late counts of each input.
func (f *inputFlags) open(env *cmdEnv, cfg *config, popts ingest.ParserOptions, paths []string, lateness time.Duration) (*fileInput, error) {
	dead := &countingDeadLetters{next: &ingest.ReportDeadLetters{W: env.stderr}}
	sinks, closeSinks, err := pipeline.OpenDeadLetters(cfg.Ingest, dead)
	if err != nil {
		return nil, err
	}
	src, err := ingest.NewFileSource(paths, ingest.FileOptions{
		Format: f.format, Parser: popts, DeadLetters: sinks, Stdin: env.stdin, Lateness: lateness,
		Registerer: prometheus.NewRegistry(), // a one-off command: nothing serves its metrics
	})
	if err != nil {
		closeSinks()
		return nil, err
	}
	return &fileInput{src: src, dead: dead, closeSinks: closeSinks}, nil
}

// Close stops reading and closes the dead-letter sinks.
func (f *fileInput) Close() error {
	return errors.Join(f.src.Close(), f.closeSinks())
}

// verdict is inputVerdict for what f read.
func (f *fileInput) verdict(w io.Writer, label string, maxReject ratioFlag) error {
	return inputVerdict(w, label, f.src.Stats(), f.dead, float64(maxReject))
}

// dataDirSecret returns the token secret kept under store.data_dir (made on first use)
// and the note to print about it. Commands use it when no secret is configured, so
// fingerprints, and the alert keys and ids built on them, are the same in every run.
func dataDirSecret(cfg *config) (ingest.TokenSecret, string, error) {
	s, created, err := ingest.DataDirTokenSecret(cfg.Store.DataDir)
	if err != nil {
		return s, "", err
	}
	path := filepath.Join(cfg.Store.DataDir, ingest.DataDirSecretFile)
	if created {
		return s, "no token secret configured: fingerprints use a key created now in " + path + " and kept for later runs", nil
	}
	return s, "no token secret configured: fingerprints use the key kept in " + path, nil
}

// countryWarning says what to tell the operator at start-up, once, when new_country is
// enabled but records of the formats read carry no country and no GeoIP database is
// configured: new_country would then never fire. "" when all is well.
func countryWarning(cfg *config, formats ...string) string {
	var none, maybe []string
	for _, f := range formats {
		switch {
		case ingest.LogsCountry(f):
		case countryOnRead(f):
			if !slices.Contains(maybe, f) {
				maybe = append(maybe, f)
			}
		case !slices.Contains(none, f):
			none = append(none, f)
		}
	}
	switch {
	case len(none) > 0:
		return countryBlind(cfg, strings.Join(none, ", ")+" records carry no country ("+countryFormats+")")
	case len(maybe) > 0:
		return countryBlind(cfg, "records read as "+strings.Join(maybe, ", ")+" carry a country only if their log has one ("+countryFormats+")")
	}
	return ""
}

// countryFormats says which formats carry a country.
const countryFormats = "awswaf and cloudflare records log one; nginx and envoy ones when the log format has a country field such as http_cf_ipcountry"

// countryOnRead reports whether records of format may or may not carry a country, which
// is known once they are read: --format auto, whose records may be of any format, and
// nginx and Envoy, whose log format the operator writes. parse and replay judge them by
// what they read (noCountryWarning), not before.
func countryOnRead(format string) bool {
	return format == ingest.FormatAuto || format == ingest.FormatNginx || format == ingest.FormatEnvoy
}

// noCountryWarning is countryWarning once the records were read, for the formats of
// countryOnRead: n events with a client key had no country. "" when all is well.
func noCountryWarning(cfg *config, n int) string {
	if n == 0 {
		return ""
	}
	return countryBlind(cfg, fmt.Sprintf("%d events with a client key carry no country (%s)", n, countryFormats))
}

// countryBlind returns the warning that new_country cannot judge what which says, when
// it is enabled and no GeoIP database gives records a country; else "".
func countryBlind(cfg *config, which string) string {
	if !cfg.Detectors.NewCountry.Enabled || cfg.Ingest.GeoIP.Database != "" {
		return ""
	}
	return "new_country is enabled, but " + which + ", and no GeoIP database is configured: " +
		"set ingest.geoip.database to a country database, or new_country cannot fire for them"
}

// countingDeadLetters counts the records passed on to next, by reason. Put is called
// by the goroutine that calls the source's Next.
type countingDeadLetters struct {
	next     ingest.DeadLetters
	n        int            // letters, repaired ones included
	kept     int            // repaired records whose events were kept
	byReason map[string]int // rejected records (not repaired ones) by reason
	example  map[string]string
}

func (c *countingDeadLetters) Put(ctx context.Context, letters []ingest.DeadLetter) error {
	if c.byReason == nil {
		c.byReason, c.example = map[string]int{}, map[string]string{}
	}
	c.n += len(letters)
	for _, l := range letters {
		if l.Kept {
			c.kept++
			continue
		}
		if c.byReason[l.Reason]++; c.example[l.Reason] == "" {
			c.example[l.Reason] = strings.TrimPrefix(l.Error, "ingest: "+l.Reason+": ")
		}
	}
	return c.next.Put(ctx, letters)
}

// rejected returns how many records were rejected, not counting repaired ones.
func (c *countingDeadLetters) rejected() int { return c.n - c.kept }

// writeReasons writes one line per rejection reason, most frequent first, with the
// first rejection's explanation.
func (c *countingDeadLetters) writeReasons(w io.Writer) {
	for _, r := range c.reasons() {
		fmt.Fprintf(w, "  rejected as %s: %d (%s)\n", r, c.byReason[r], c.example[r])
	}
}

// reasons returns the rejection reasons seen, most frequent first.
func (c *countingDeadLetters) reasons() []string {
	var rs []string
	for r := range c.byReason {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b string) int {
		if d := c.byReason[b] - c.byReason[a]; d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	return rs
}

// inputVerdict writes what each input gave (when there are several, or one is damaged)
// and returns the error that ends the command with status 1, if any: an input was
// damaged, or more records were rejected than maxReject allows.
func inputVerdict(w io.Writer, label string, stats []ingest.FileStats, dead *countingDeadLetters, maxReject float64) error {
	var records int64
	var damaged []error
	for _, st := range stats {
		records += st.Records
		if st.Err != nil {
			damaged = append(damaged, st.Err)
		}
	}
	if len(stats) > 1 || len(damaged) > 0 {
		fmt.Fprintf(w, "%s: %d inputs, read in event-time order:\n", label, len(stats))
		for _, st := range stats {
			fmt.Fprintf(w, "  %s: %d records, %d events", st.Name, st.Records, st.Events)
			if !st.First.IsZero() {
				fmt.Fprintf(w, " from %s to %s", st.First.Format(time.RFC3339), st.Last.Format(time.RFC3339))
			}
			fmt.Fprintf(w, ", %d rejected", st.Rejected)
			if st.Err != nil {
				fmt.Fprintf(w, ", DAMAGED: %v", st.Err)
			}
			fmt.Fprintln(w)
		}
	}
	dead.writeReasons(w)
	if records == 0 {
		fmt.Fprintf(w, "%s: warning: the input holds no records\n", label)
	}
	var errs []error
	if len(damaged) > 0 {
		errs = append(errs, fmt.Errorf("%d of %d inputs damaged (the records before the damage were read): %w", len(damaged), len(stats), errors.Join(damaged...)))
	}
	// Lines containers wrote to stderr are set aside, not counted against the input: an
	// ingress controller's pod log holds its own log next to its access log.
	stderr := dead.byReason[ingest.ReasonStderr]
	events := records - int64(dead.rejected())
	switch rej := dead.rejected() - stderr; {
	case records > 0 && float64(rej) > maxReject*float64(records):
		top := slices.DeleteFunc(dead.reasons(), func(r string) bool { return r == ingest.ReasonStderr })[0]
		hint := ""
		if int64(rej) == records {
			hint = "; not one record was accepted: is --format right? (auto recognises each record's format)"
		}
		errs = append(errs, fmt.Errorf("%d of %d records rejected (%s, over --max-reject-ratio %g), most as %s (%d): %s%s",
			rej, records, percent(int64(rej), records), maxReject, top, dead.byReason[top], dead.example[top], hint))
	case stderr > 0 && events <= 0:
		errs = append(errs, fmt.Errorf("all %d records are lines containers wrote to stderr, none an access log record: are these the right containers' logs?", records))
	}
	return errors.Join(errs...)
}

// untilCancelled reads src until ctx is cancelled (SIGINT, SIGTERM), then reports the
// end of the input, so what consumes it finishes the batch in hand and flushes what it
// has instead of being cut off.
type untilCancelled struct {
	ctx context.Context
	src interface {
		Next(context.Context) (*ingest.Batch, error)
	}
}

func (u *untilCancelled) Next(context.Context) (*ingest.Batch, error) {
	if u.ctx.Err() != nil {
		return nil, io.EOF
	}
	b, err := u.src.Next(u.ctx)
	if err != nil && u.ctx.Err() != nil {
		return nil, io.EOF
	}
	return b, err
}

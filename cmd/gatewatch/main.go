// Command gatewatch watches API-gateway and WAF access logs for abuse: it parses the
// vendor formats into normalised events, runs sliding-window detectors over them and
// reports alerts. See DESIGN.md for the subcommands and their contracts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// command is one subcommand: its flags are defined on fs, run does the work. summary
// is the line of the overview, description and example complete its --help.
type command struct {
	name        string
	summary     string
	usage       string
	description string
	example     string
	run         func(ctx context.Context, env *cmdEnv, args []string) error
}

// cmdEnv carries the process's streams so tests can run commands in-process.
type cmdEnv struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

func commands() []command {
	return []command{
		{"run", "run the live service: Kafka to the detectors to Slack and the SIEM",
			"run --config FILE [--log-format text|json] [--log-level debug|info|warn|error]",
			"Runs the live pipeline: consumes the configured Kafka topics, parses each record, runs the detectors by\n" +
				"event time and routes the alerts through the durable outbox to the receivers, serving /metrics,\n" +
				"/healthz and /readyz. SIGHUP, or a change of the config file, reloads the config; SIGINT or SIGTERM\n" +
				"stops it in order.",
			"gatewatch run --config /etc/gatewatch/gatewatch.yaml --log-format json", runRun},
		{"demo", "run the pipeline on an embedded broker with synthetic attacks and print the alerts",
			"demo [--duration D] [--rate R] [--seed N] [--json]",
			"Runs the live pipeline (run's) on a Kafka-protocol broker and a store of its own, fed two hours of synthetic\n" +
				"traffic from three gateways (AWS WAF, Kong, nginx) with one attack of each kind, and prints each alert as\n" +
				"it is delivered (--json: as JSON lines). stderr says which incident each injected attack raised.",
			"gatewatch demo --json > alerts.jsonl", runDemo},
		{"replay", "run history (log files, a Kafka time range, the event archive) through the detectors and print the alerts",
			"replay --config FILE (--input PATH|- | --kafka BROKERS --topic T[,T] | --archive) [--from T] [--to T] [--set detectors.NAME.PARAM=VALUE]...",
			"Reads history (log files: a directory, several files, gzip, or stdin; a time range of Kafka topics; or\n" +
				"the store's event archive) through the same parsers and detectors as the live pipeline and prints each\n" +
				"incident as a JSON alert on stdout, the summary on stderr. Files are read in the order of their event\n" +
				"time, so rotated logs replay oldest first; Kafka partitions are merged by event time. It exits 1 when\n" +
				"more records are rejected than --max-reject-ratio allows, more events come late than --max-late-ratio\n" +
				"allows, or an input is damaged; 130 after SIGINT or SIGTERM, with the alerts raised so far written.",
			"gatewatch replay --config gatewatch.yaml --input /var/log/nginx/ --from 2025-06-14T00:00:00Z --to 2025-06-15T00:00:00Z", runReplay},
		{"notify", "send alerts from a file through the configured routes and receivers",
			"notify --config FILE --input ALERTS.jsonl|- [--dry-run] | --requeue [--receiver NAME]",
			"Sends alerts (what replay and demo print) through the configured routes, outbox and receivers, as live\n" +
				"alerts go. Running it twice with the same alerts delivers nothing new; --dry-run prints the receivers\n" +
				"each alert would reach and sends nothing; --requeue re-sends the deliveries parked as failed.",
			"gatewatch notify --config gatewatch.yaml --input alerts.jsonl --dry-run", runNotify},
		{"parse", "print normalised events of a log file as JSON lines",
			"parse [--config FILE] [--format F] --input PATH|-",
			"Parses log files (a directory, several files, gzip, or stdin) and prints one normalised event per line\n" +
				"on stdout; each rejected record gets a line on stderr (never the record itself), then the counts by\n" +
				"reason. Container-runtime and shipper envelopes (Docker, Kubernetes, Filebeat, Vector, Fluent Bit) are\n" +
				"taken off. It exits 1 when more records are rejected than --max-reject-ratio allows or an input is\n" +
				"damaged; 130 after SIGINT or SIGTERM, with the events read so far written.",
			"gatewatch parse --input /var/log/nginx/access.log.1.gz | head", runParse},
		{"generate", "write synthetic traffic with known attacks in a vendor format",
			"generate [--duration D] [--rate R] [--format F] [--seed N] [--attacks LIST]",
			"Writes synthetic API traffic with known attacks injected, as log records of one vendor format, on stdout;\n" +
				"what was injected (kind, client, route, time) goes to stderr as JSON. The same flags give the same bytes.",
			"gatewatch generate --duration 3h --format nginx > /tmp/nginx.log", runGenerate},
		{"migrate", "create or upgrade the ClickHouse schema",
			"migrate --config FILE",
			"Creates or upgrades the ClickHouse schema named by store.clickhouse; safe to run again and from several\n" +
				"instances at once.",
			"gatewatch migrate --config gatewatch.yaml", runMigrate},
		{"check-config", "validate a config file and print it with defaults applied",
			"check-config FILE",
			"Validates a config file, reporting every mistake with its line, column and key, reads what it names\n" +
				"(secrets, TLS files, the GeoIP database) as run would at start-up, warns about what is valid but likely\n" +
				"a mistake, and prints the config with the defaults applied.",
			"gatewatch check-config gatewatch.yaml", runCheckConfig},
		{"fingerprint", "print the client_key / token_fp of a raw API key or token read from stdin",
			"fingerprint [--config FILE] [--kind key|token] < RAW",
			"Reads raw API keys (--kind key) or bearer tokens (--kind token), one per line, on standard input, never\n" +
				"from the command line, and prints for each the fingerprint events carry for it under the configured\n" +
				"token secret (or the one kept under store.data_dir): a key's client_key and token_fp, a token's token_fp.\n" +
				"Use it to write allowlists, overrides and silences, and to map an alert back to a customer.",
			"printf '%s\\n' \"$API_KEY\" | gatewatch fingerprint --config gatewatch.yaml", runFingerprint},
		{"version", "print the version and commit gatewatch was built from",
			"version",
			"Prints the version and commit gatewatch was built from (set with -ldflags \"-X main.version=V -X main.commit=C\",\n" +
				"else read from the build information Go records), and the Go version and platform.",
			"gatewatch version", runVersion},
	}
}

// errUsage marks a mistake on the command line: exit status 2 and no extra noise.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal ends the process at once
	}()
	code := run(ctx, &cmdEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, env *cmdEnv, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(env.stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, env, args[1:])
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		case errors.Is(err, context.Canceled) && ctx.Err() != nil:
			return 130
		}
		// The replay package's errors name it, as the command is named: once is enough.
		fmt.Fprintf(env.stderr, "gatewatch %s: %s\n", c.name, strings.TrimPrefix(err.Error(), c.name+": "))
		return 1
	}
	fmt.Fprintf(env.stderr, "gatewatch: unknown command %q\n\n", args[0])
	printUsage(env.stderr)
	return 2
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "gatewatch catches API abuse in gateway and WAF access logs.")
	fmt.Fprintln(w, "\nUsage:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  gatewatch %-60s %s\n", c.usage, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'gatewatch COMMAND --help' for a command's flags.")
}

// newFlagSet returns a flag set whose errors and --help go to env.stderr. Its help is
// the usage line, the command's description, its flags and an example.
func newFlagSet(env *cmdEnv, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: gatewatch %s\n", usage)
		i := slices.IndexFunc(commands(), func(c command) bool { return c.name == name })
		if i >= 0 {
			fmt.Fprintf(env.stderr, "\n%s\n", commands()[i].description)
		}
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(env.stderr, "\nFlags:")
			fs.PrintDefaults()
		}
		if i >= 0 {
			fmt.Fprintf(env.stderr, "\nExample:\n  %s\n", commands()[i].example)
		}
	}
	return fs
}

// parseFlags parses args, turning a flag mistake into errUsage (already reported).
func parseFlags(fs *flag.FlagSet, args []string) error {
	rest, err := parseFlagsArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", rest[0])
		fs.Usage()
		return errUsage
	}
	return nil
}

// parseFlagsArgs parses args, flags and other arguments in any order (a shell glob such
// as --input access.log* leaves paths before the next flag), and returns the arguments
// that are no flags.
func parseFlagsArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			return rest, nil
		}
		if used := len(args) - fs.NArg(); used > 0 && args[used-1] == "--" {
			return append(rest, fs.Args()...), nil // after "--" nothing is a flag
		}
		rest, args = append(rest, fs.Arg(0)), fs.Args()[1:]
	}
}

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
	"syscall"
)

// command is one subcommand: its flags are defined on fs, run does the work.
type command struct {
	name    string
	summary string
	usage   string
	run     func(ctx context.Context, env *cmdEnv, args []string) error
}

// cmdEnv carries the process's streams so tests can run commands in-process.
type cmdEnv struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

func commands() []command {
	return []command{
		{"run", "run the live service: Kafka to the detectors to Slack and the SIEM", "run --config FILE", runRun},
		{"demo", "run the pipeline on an embedded broker with synthetic attacks and print the alerts", "demo [--duration D] [--rate R] [--seed N]", runDemo},
		{"replay", "run log files through the detectors and print the alerts", "replay --config FILE --input PATH|- [--format F] [--from T] [--to T] [--set detectors.NAME.PARAM=VALUE]...", runReplay},
		{"notify", "send alerts from a file through the configured routes and receivers", "notify --config FILE --input ALERTS.jsonl|- [--dry-run]", runNotify},
		{"parse", "print normalised events of a log file as JSON lines", "parse [--config FILE] [--format F] --input PATH|-", runParse},
		{"generate", "write synthetic traffic with known attacks in a vendor format", "generate [--duration D] [--rate R] [--format F] [--seed N] [--attacks LIST]", runGenerate},
		{"migrate", "create or upgrade the ClickHouse schema", "migrate --config FILE", runMigrate},
		{"check-config", "validate a config file and print it with defaults applied", "check-config FILE", runCheckConfig},
	}
}

// errUsage marks a mistake on the command line: exit status 2 and no extra noise.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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
		fmt.Fprintf(env.stderr, "gatewatch %s: %v\n", c.name, err)
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

// newFlagSet returns a flag set whose errors and --help go to env.stderr.
func newFlagSet(env *cmdEnv, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: gatewatch %s\n\nFlags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, turning a flag mistake into errUsage (already reported).
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

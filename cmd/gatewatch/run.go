package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gatewatch/gatewatch/internal/cluster"
	"github.com/gatewatch/gatewatch/internal/pipeline"
)

// runRun is the live service: Kafka to the detectors to the receivers, until SIGTERM
// or SIGINT. SIGHUP, or a change of the config file, reloads the config.
func runRun(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "run", "run --config FILE [--log-format text|json] [--log-level debug|info|warn|error]")
	configPath := fs.String("config", "", "config file (required)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *configPath == "" {
		fmt.Fprintln(env.stderr, "run: --config is required")
		fs.Usage()
		return errUsage
	}
	logger, err := newLogger(env.stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintf(env.stderr, "run: %v\n", err)
		return errUsage
	}
	cfg, err := loadConfigFile(*configPath)
	if err != nil {
		return err
	}
	// What start-up reads (secrets, TLS files, the GeoIP database), read first, as
	// check-config does: a missing secret is reported at its place in the file before
	// any listener has started.
	if err := cfg.check(); err != nil {
		return err
	}
	var formats []string
	for _, t := range cfg.Ingest.Kafka.Topics {
		formats = append(formats, t.Format)
	}
	if w := countryWarning(cfg, formats...); w != "" {
		logger.Warn(w)
	}
	version, commit := buildVersion()
	p, err := pipeline.New(pipelineConfig(cfg), pipeline.Options{
		Receivers: buildReceivers,
		Logger:    logger,
		Version:   version,
		Commit:    commit,
	})
	if err != nil {
		return err
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go watchConfig(watchCtx, *configPath, p, logger)
	return p.Run(ctx)
}

// pipelineConfig is the part of the config file the pipeline runs.
func pipelineConfig(cfg *config) pipeline.Config {
	pc := pipeline.Config{
		Ingest:    cfg.Ingest,
		Detectors: cfg.Detectors,
		Store:     cfg.Store,
		Alerting:  cfg.Alerting,
		Admin:     cfg.Admin,
		Console:   cfg.Console,
	}
	if cl := cfg.Cluster; cl != nil {
		pc.Cluster = &cluster.Config{InternalTopicPrefix: cl.InternalTopicPrefix, Partitions: cl.Partitions}
	}
	return pc
}

// configPoll is how often run looks at the config file for a change: a ConfigMap
// update in Kubernetes swaps the file without any signal.
const configPoll = 5 * time.Second

// watchConfig reloads the config on SIGHUP and when the file's contents change. A file
// that does not load is refused with its file:line:col errors; the config in force
// keeps running.
func watchConfig(ctx context.Context, path string, p *pipeline.Pipeline, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	sum := fileSum(path)
	tick := time.NewTicker(configPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading the config", "file", path)
		case <-tick.C:
			s := fileSum(path)
			if s == nil || bytes.Equal(s, sum) {
				continue
			}
			log.Info("the config file changed: reloading it", "file", path)
		}
		sum = fileSum(path)
		cfg, err := loadConfigFile(path)
		if err != nil {
			p.ReloadFailed(err)
			continue
		}
		if err := p.Reload(ctx, pipelineConfig(cfg)); err != nil {
			log.Error("config reload refused; the config in force keeps running", "err", err)
		}
	}
}

func fileSum(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	s := sha256.Sum256(b)
	return s[:]
}

// buildVersion is what gatewatch_build_info reports: the version and commit.
func buildVersion() (v, c string) {
	v, c, _ = versionInfo()
	return v, c
}

// newLogger returns the logger of a long-running command.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/outbox"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/store"
)

func runNotify(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "notify", "notify --config FILE --input ALERTS.jsonl|- [--dry-run] [--timeout D]")
	configPath := fs.String("config", "", "config file whose alerting section names the routes and receivers (required)")
	input := fs.String("input", "", "alerts as JSON lines (what replay prints), or - for stdin")
	dryRun := fs.Bool("dry-run", false, "print the receivers each alert would reach; send nothing")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to keep retrying before leaving what is undelivered in the outbox")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *configPath == "" || *input == "" {
		fmt.Fprintln(env.stderr, "notify: --config and --input are required")
		fs.Usage()
		return errUsage
	}
	cfg, err := loadConfigFile(*configPath)
	if err != nil {
		return err
	}
	alerts, err := readAlerts(env, *input)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if *dryRun {
		return planAlerts(env, cfg, alerts)
	}

	dir := outboxDir(cfg)
	ob, err := outbox.Open(dir, outbox.Options{Logger: logger})
	if err != nil {
		return err
	}
	defer ob.Close()
	// The store keeps the alert history next to the event archive; it is best effort
	// and never holds up delivery.
	st, err := store.Open(cfg.Store, store.Options{Logger: logger.With("component", "store"), Registerer: prometheus.NewRegistry(), Baselines: store.BaselineSettingsFrom(cfg.Detectors)})
	if err != nil {
		return err
	}
	storeCtx, stopStore := context.WithCancel(context.WithoutCancel(ctx))
	storeDone := make(chan error, 1)
	go func() { storeDone <- st.Run(storeCtx) }()
	defer func() {
		stopStore()
		<-storeDone
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		if err := st.Close(closeCtx); err != nil {
			logger.Warn("closing the store", "component", "store", "err", err)
		}
	}()
	receivers, closer, err := buildReceivers(cfg, logger)
	if err != nil {
		return err
	}
	defer closer.Close()
	router, err := alerting.NewRouter(cfg.Alerting, alerting.RouterOptions{
		Outbox: ob, Receivers: receivers, History: st, Logger: logger.With("component", "alerting"), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(runCtx) }()

	if err := router.Put(ctx, alerts); err != nil {
		return err
	}
	flushCtx, cancel := context.WithTimeoutCause(ctx, *timeout, errors.New("notify: --timeout reached"))
	flushErr := router.Flush(flushCtx)
	cancel()
	closeCtx, cancelClose := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancelClose()
	if err := router.Close(closeCtx); err != nil {
		return err
	}
	if err := <-runErr; err != nil {
		return err
	}

	pending, parked := 0, 0
	for _, a := range alerts {
		ds, err := router.Deliveries(ctx, a)
		if err != nil {
			return err
		}
		for _, d := range ds {
			line := fmt.Sprintf("%s %s -> %s: %s", a.ID, a.Detector, d.Receiver, d.State)
			switch d.State {
			case alerting.Pending:
				pending++
			case alerting.Failed:
				parked++
			}
			if d.LastError != "" && d.State != alerting.Delivered {
				line += " (" + d.LastError + ")"
			}
			fmt.Fprintln(env.stdout, line)
		}
	}
	switch {
	case parked > 0:
		return fmt.Errorf("%d deliveries failed for good and are parked in the outbox at %s", parked, dir)
	case pending > 0:
		return fmt.Errorf("%d deliveries still pending (%v); they stay in the outbox at %s and the next run or notify retries them", pending, context.Cause(flushCtx), dir)
	case flushErr != nil && !errors.Is(flushErr, context.DeadlineExceeded):
		return flushErr
	}
	return nil
}

// outboxDir is where the durable outbox lives: alerting.outbox.dir, else
// <store.data_dir>/outbox. run and notify share it, so notify's parked deliveries are
// the live service's.
func outboxDir(cfg *config) string {
	if cfg.Alerting.Outbox.Dir != "" {
		return cfg.Alerting.Outbox.Dir
	}
	return filepath.Join(cfg.Store.DataDir, "outbox")
}

// readAlerts reads alerts as JSON lines, naming the line of any that does not decode.
func readAlerts(env *cmdEnv, input string) ([]detectors.Alert, error) {
	var r io.Reader = env.stdin
	if input != "-" {
		f, err := os.Open(input)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	var alerts []detectors.Alert
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var a detectors.Alert
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			return nil, fmt.Errorf("%s:%d: not an alert: %w", input, n, err)
		}
		if a.ID == "" || a.Detector == "" || a.LastSeen.IsZero() {
			return nil, fmt.Errorf("%s:%d: an alert needs id, detector and last_seen", input, n)
		}
		alerts = append(alerts, a)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return alerts, nil
}

// planAlerts prints, per alert, the receivers it would reach after silences and routes.
// No receiver is built, so no secret is needed and nothing is sent.
func planAlerts(env *cmdEnv, cfg *config, alerts []detectors.Alert) error {
	receivers := map[string]alerting.Receiver{}
	for _, rc := range cfg.Alerting.Receivers {
		receivers[rc.Name] = unbuilt(rc.Name)
	}
	router, err := alerting.NewRouter(cfg.Alerting, alerting.RouterOptions{
		Outbox: alerting.NewMemoryOutbox(), Receivers: receivers, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		return err
	}
	for _, a := range alerts {
		to := router.Plan(a)
		target := strings.Join(to, ", ")
		if len(to) == 0 {
			target = "nobody (silenced or no route matches)"
		}
		fmt.Fprintf(env.stdout, "%s %s %s %s -> %s\n", a.ID, a.Detector, a.Severity, a.Key, target)
	}
	return nil
}

// unbuilt stands for a configured receiver in --dry-run, where the router only plans.
type unbuilt string

func (u unbuilt) Name() string { return string(u) }

func (u unbuilt) Notify(context.Context, []detectors.Alert) (bool, error) {
	return false, fmt.Errorf("receiver %s is not built in --dry-run", string(u))
}

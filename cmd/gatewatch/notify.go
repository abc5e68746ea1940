package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/pipeline"
)

// stopTimeout bounds how long a stopping notify waits for the attempts in flight and
// for the store to flush the alert history.
const stopTimeout = 15 * time.Second

func runNotify(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "notify", "notify --config FILE --input ALERTS.jsonl|- [--dry-run] [--timeout D]\n"+
		"       gatewatch notify --config FILE --requeue [--receiver NAME] [--timeout D]")
	configPath := fs.String("config", "", "config file whose alerting section names the routes and receivers (required)")
	input := fs.String("input", "", "alerts as JSON lines (what replay prints), or - for stdin")
	dryRun := fs.Bool("dry-run", false, "print the receivers each alert would reach; send nothing")
	requeue := fs.Bool("requeue", false, "re-send the deliveries parked as failed (all receivers', or --receiver's)")
	receiver := fs.String("receiver", "", "with --requeue: only this receiver's parked deliveries")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to keep retrying before leaving what is undelivered in the outbox")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var usage string
	switch {
	case *configPath == "":
		usage = "--config is required"
	case *requeue && (*input != "" || *dryRun):
		usage = "--requeue takes no --input or --dry-run"
	case !*requeue && *input == "":
		usage = "--input (or --requeue) is required"
	case !*requeue && *receiver != "":
		usage = "--receiver goes with --requeue"
	}
	if usage != "" {
		fmt.Fprintln(env.stderr, "notify:", usage)
		fs.Usage()
		return errUsage
	}
	cfg, err := loadConfigFile(*configPath)
	if err != nil {
		return err
	}
	if *requeue {
		return requeueParked(ctx, env, cfg, *configPath, *receiver, *timeout)
	}
	alerts, err := readAlerts(env, *input)
	if err != nil {
		return err
	}
	if *dryRun {
		return planAlerts(env, cfg, alerts)
	}
	d, err := openDelivery(ctx, env, cfg)
	if err != nil {
		return err
	}
	sent, err := send(ctx, d.Router(), alerts, *timeout)
	if err == nil {
		err = d.StopRouter(stopTimeout) // the states reported are final
	}
	if err == nil {
		err = report(ctx, env, d.Router(), alerts, sent, *configPath, outboxDir(cfg))
	}
	// Whether the sending worked or not, the router stops, and Run returns, before
	// anything it uses is closed.
	return errors.Join(err, d.Close(stopTimeout))
}

// openDelivery opens the delivery part of the pipeline, as run wires it: the alert
// history in the store, the outbox, the receivers and the router, running.
func openDelivery(ctx context.Context, env *cmdEnv, cfg *config) (*pipeline.Delivery, error) {
	p, err := pipeline.New(pipelineConfig(cfg), pipeline.Options{
		Receivers: buildReceivers,
		Logger:    slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	return p.OpenDelivery(ctx)
}

// sent says what became of the alerts put: those no route matched, and those a
// silence muted.
type sent struct {
	unrouted, silenced []detectors.Alert
	stale              map[alerting.DeliveryKey]time.Time // versions never sent (Receiver empty) → the later one that went out before
	at                 time.Time                          // when the alerts were put: a delivery done before was an earlier run's
}

// send puts alerts through the router and waits, up to timeout, until every delivery
// is done (delivered or parked). An alert no route matches reaches nobody; send
// returns those and the silenced ones for the report.
func send(ctx context.Context, router *alerting.Router, alerts []detectors.Alert, timeout time.Duration) (sent, error) {
	var out sent
	for _, a := range alerts {
		if len(router.Plan(a)) > 0 {
			continue
		}
		if router.Silenced(a) {
			out.silenced = append(out.silenced, a)
		} else {
			out.unrouted = append(out.unrouted, a)
		}
	}
	// A version older than one that went out is not sent after it, unless the outbox
	// holds it already (sent before its successor: the dedup reports it).
	newest, err := router.Newest(ctx, alerts)
	if err != nil {
		return out, err
	}
	out.stale = map[alerting.DeliveryKey]time.Time{}
	for _, a := range alerts {
		if !newest[a.ID].After(a.LastSeen) {
			continue
		}
		ds, err := router.Deliveries(ctx, a)
		if err != nil {
			return out, err
		}
		if !slices.ContainsFunc(ds, func(d alerting.Delivery) bool { return d.State != 0 }) { // no state: the outbox does not hold it
			out.stale[alerting.KeyOf("", &a)] = newest[a.ID]
		}
	}
	alerts = slices.DeleteFunc(slices.Clone(alerts), func(a detectors.Alert) bool {
		_, ok := out.stale[alerting.KeyOf("", &a)]
		return ok
	})
	out.at = time.Now()
	if err := router.Put(ctx, alerts); err != nil {
		return out, err
	}
	return out, flush(ctx, router, timeout)
}

// flush waits up to timeout until no delivery is pending. Running out of time is no
// error: what is pending stays in the outbox, and the report says so.
func flush(ctx context.Context, router *alerting.Router, timeout time.Duration) error {
	flushCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := router.Flush(flushCtx)
	switch {
	case ctx.Err() != nil:
		return ctx.Err() // interrupted
	case flushCtx.Err() != nil:
		return nil // --timeout
	}
	return err
}

// report prints, per alert and receiver, where its delivery stands, and returns an
// error when an alert reached nobody, a delivery is parked or one is still pending.
func report(ctx context.Context, env *cmdEnv, router *alerting.Router, alerts []detectors.Alert, s sent, configPath, dir string) error {
	pending, parked := 0, map[string]int{}
	for _, a := range alerts {
		switch {
		case slices.ContainsFunc(s.unrouted, func(u detectors.Alert) bool { return u.ID == a.ID }):
			fmt.Fprintf(env.stdout, "%s %s -> nobody: no route matches\n", a.ID, a.Detector)
			continue
		case slices.ContainsFunc(s.silenced, func(u detectors.Alert) bool { return u.ID == a.ID }):
			fmt.Fprintf(env.stdout, "%s %s -> nobody: silenced\n", a.ID, a.Detector)
			continue
		}
		if later, ok := s.stale[alerting.KeyOf("", &a)]; ok {
			fmt.Fprintf(env.stdout, "%s %s (last_seen %s) -> not sent: a later version (last_seen %s) went out before\n",
				a.ID, a.Detector, a.LastSeen.UTC().Format(time.RFC3339Nano), later.Format(time.RFC3339Nano))
			continue
		}
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
				parked[d.Receiver]++
			}
			if d.LastError != "" && d.State != alerting.Delivered {
				line += " (" + d.LastError + ")"
			}
			if d.State == alerting.Delivered && !d.Done.IsZero() && d.Done.Before(s.at) {
				line += " (by an earlier run: not sent again)"
			}
			fmt.Fprintln(env.stdout, line)
		}
	}
	var errs []error
	if n := len(s.unrouted); n > 0 {
		errs = append(errs, fmt.Errorf("%d %s matched no route and reached nobody: add a route for them, or a last route without match in %s",
			n, plural(n, "alert", "alerts"), configPath))
	}
	for _, r := range slices.Sorted(maps.Keys(parked)) {
		errs = append(errs, fmt.Errorf("%d %s to %s failed for good and %s parked in the outbox at %s; once %s is fixed, re-send with: gatewatch notify --config %s --requeue --receiver %s",
			parked[r], plural(parked[r], "delivery", "deliveries"), r, plural(parked[r], "is", "are"), dir, r, configPath, r))
	}
	if pending > 0 {
		errs = append(errs, fmt.Errorf("%d %s still pending after --timeout; they stay in the outbox at %s and the next run or notify retries them",
			pending, plural(pending, "delivery", "deliveries"), dir))
	}
	return errors.Join(errs...)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// requeueParked sets the parked deliveries of receiver (every receiver when empty)
// pending again, delivers them, and reports how each receiver's went.
func requeueParked(ctx context.Context, env *cmdEnv, cfg *config, configPath, receiver string, timeout time.Duration) error {
	var names []string
	for _, rc := range cfg.Alerting.Receivers {
		if receiver == "" || rc.Name == receiver {
			names = append(names, rc.Name)
		}
	}
	if len(names) == 0 {
		if receiver != "" {
			return fmt.Errorf("no receiver %q in %s", receiver, configPath)
		}
		return fmt.Errorf("%s configures no receivers", configPath)
	}
	d, err := openDelivery(ctx, env, cfg)
	if err != nil {
		return err
	}
	err = requeue(ctx, env, d.Router(), names, timeout, configPath, outboxDir(cfg))
	return errors.Join(err, d.Close(stopTimeout))
}

// requeue is requeueParked on a running router.
func requeue(ctx context.Context, env *cmdEnv, router *alerting.Router, names []string, timeout time.Duration, configPath, dir string) error {
	requeued := map[string]int{}
	for _, n := range names {
		k, err := router.Requeue(ctx, n)
		if err != nil {
			return err
		}
		requeued[n] = k
	}
	if err := flush(ctx, router, timeout); err != nil {
		return err
	}
	stats, err := router.Stats(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		st := stats[n]
		delivered := max(requeued[n]-st.Parked-st.Pending, 0)
		fmt.Fprintf(env.stdout, "%s: %d requeued, %d delivered, %d parked again, %d pending\n", n, requeued[n], delivered, st.Parked, st.Pending)
		if st.Parked > 0 || st.Pending > 0 {
			errs = append(errs, fmt.Errorf("%s: %d parked and %d pending deliveries remain in the outbox at %s (the destination still fails?); re-send with: gatewatch notify --config %s --requeue --receiver %s",
				n, st.Parked, st.Pending, dir, configPath, n))
		}
	}
	return errors.Join(errs...)
}

// outboxDir is where the durable outbox lives, the live service's.
func outboxDir(cfg *config) string {
	pc := pipelineConfig(cfg)
	return pipeline.OutboxDir(&pc)
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
// No receiver is built, so no secret is needed and nothing is sent. An alert that no
// route matches is an error, as it is when sending.
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
	unrouted := 0
	for _, a := range alerts {
		to := router.Plan(a)
		target := strings.Join(to, ", ")
		switch {
		case len(to) > 0:
		case router.Silenced(a):
			target = "nobody (silenced)"
		default:
			target = "nobody (no route matches)"
			unrouted++
		}
		fmt.Fprintf(env.stdout, "%s %s %s %s -> %s\n", a.ID, a.Detector, a.Severity, a.Key, target)
	}
	if unrouted > 0 {
		return fmt.Errorf("%d %s would match no route and reach nobody", unrouted, plural(unrouted, "alert", "alerts"))
	}
	return nil
}

// unbuilt stands for a configured receiver in --dry-run, where the router only plans.
type unbuilt string

func (u unbuilt) Name() string { return string(u) }

func (u unbuilt) Notify(context.Context, []detectors.Alert) (bool, error) {
	return false, fmt.Errorf("receiver %s is not built in --dry-run", string(u))
}

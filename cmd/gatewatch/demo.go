package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/internal/pipeline"
)

//go:embed demo.yaml
var demoConfig []byte

// demoTopics are the gateways of the demo: each client is served by one of them, and
// each logs in its own format to its own topic.
var demoTopics = []ingest.TopicConfig{
	{Name: "waf-logs", Format: ingest.FormatAWSWAF},
	{Name: "kong-logs", Format: ingest.FormatKong},
	{Name: "nginx-logs", Format: ingest.FormatNginx},
}

// demoPartitions is how many partitions each demo topic has.
const demoPartitions = 3

// demoSecret keys the demo's fingerprints: the traffic is synthetic, and a fixed key
// keeps alert ids the same from one demo run to the next.
const demoSecret = "gatewatch-demo: synthetic traffic only, never a production secret"

// runDemo is gatewatch on its embedded default: `run`'s pipeline on a Kafka-protocol
// broker in the process (kfake) and the embedded store in a temporary directory, fed
// two hours of synthetic traffic with one attack of each kind from three gateways (AWS
// WAF, Kong and nginx, each to its own topic of several partitions). Each alert is
// printed as the pipeline delivers it; stderr gets what was injected and whether each
// attack was caught.
func runDemo(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "demo", "demo [--duration D] [--rate R] [--seed N] [--json]")
	duration := fs.Duration("duration", 2*time.Hour, "event time of synthetic traffic to generate")
	rate := fs.Float64("rate", 10, "background requests per second of event time")
	seed := fs.Uint64("seed", 1, "random seed of the traffic")
	asJSON := fs.Bool("json", false, "print alerts as JSON lines (the Alert contract) instead of for a person")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *duration < time.Hour {
		fmt.Fprintln(env.stderr, "demo: --duration must be at least 1h: the detectors learn for the first 30 minutes")
		return errUsage
	}
	if !(*rate > 0) { // synth would take 0 for its own default
		fmt.Fprintln(env.stderr, "demo: --rate must be positive")
		return errUsage
	}
	cfg, err := loadConfig("demo.yaml (embedded)", demoConfig)
	if err != nil {
		return err
	}
	reqs, injected, err := synth.Generate(synth.Config{Duration: *duration, Rate: *rate, Seed: *seed, Attacks: synth.Attacks})
	if err != nil {
		return err
	}
	byTopic := splitByGateway(reqs, injected)

	names := make([]string, len(demoTopics))
	for i, t := range demoTopics {
		names[i] = t.Name
	}
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(demoPartitions, names...))
	if err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	defer broker.Close()
	dir, err := os.MkdirTemp("", "gatewatch-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	secret := filepath.Join(dir, "token-secret")
	if err := os.WriteFile(secret, []byte(demoSecret), 0o600); err != nil {
		return err
	}
	tokenSecret, err := ingest.LoadTokenSecret(secret, "") // as the pipeline reads it
	if err != nil {
		return err
	}
	keys, err := alertKeys(tokenSecret, injected)
	if err != nil {
		return err
	}
	cfg.Ingest.Kafka.Brokers = broker.ListenAddrs()
	cfg.Ingest.Kafka.Group = "gatewatch-demo"
	cfg.Ingest.Kafka.Topics = demoTopics
	cfg.Ingest.Kafka.BatchWait = 20 * time.Millisecond
	cfg.Ingest.TokenSecretFile = secret
	cfg.Ingest.DeadLetter = ingest.DeadLetterConfig{File: filepath.Join(dir, "dead-letters.jsonl")}
	cfg.Store.DataDir = filepath.Join(dir, "data")
	cfg.Alerting.Receivers, cfg.Alerting.Routes = nil, nil

	fmt.Fprintf(env.stderr, "demo: %d records over %s of event time from 3 gateways (AWS WAF, Kong, nginx), %d attacks injected\n",
		len(reqs), *duration, len(injected))
	fmt.Fprintf(env.stderr, "demo: Kafka-protocol broker on %s: topics %s, %d partitions each; the pipeline of `gatewatch run`\n",
		broker.ListenAddrs()[0], strings.Join(names, ", "), demoPartitions)

	console := &consoleReceiver{w: env.stdout, json: *asJSON, color: !*asJSON && isTerminal(env.stdout)}
	reg := prometheus.NewRegistry()
	p, err := pipeline.New(pipelineConfig(cfg), pipeline.Options{
		Receivers: func(alerting.Config, pipeline.ReceiverEnv, *slog.Logger) (map[string]alerting.Receiver, io.Closer, error) {
			return map[string]alerting.Receiver{console.Name(): console}, io.NopCloser(nil), nil
		},
		Logger:   slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Registry: reg,
		WrapSource: func(src detectors.EventSource) detectors.EventSource {
			return &untilConsumed{src: src, want: float64(len(reqs)), reg: reg}
		},
	})
	if err != nil {
		return err
	}
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return produceDemo(gctx, broker.ListenAddrs(), byTopic) })
	g.Go(func() error { return p.Run(gctx) })
	if err := g.Wait(); err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "demo: %d records through the pipeline in %s, %d incidents\n",
		len(reqs), time.Since(start).Round(100*time.Millisecond), len(console.incidents()))
	return reportCaught(env.stderr, injected, keys, console.incidents())
}

// splitByGateway assigns each client to one of the demo's gateways, so each client's
// key is logged in one format, and returns the records of each topic.
func splitByGateway(reqs []synth.Request, injected []synth.Injected) map[string][]synth.Request {
	waf := wafClients(injected)
	out := map[string][]synth.Request{}
	for _, r := range reqs {
		t := gatewayOf(r.Consumer, waf)
		out[t.Name] = append(out[t.Name], r)
	}
	return out
}

// wafClients are the clients that go through AWS WAF whatever their hash: the client
// of the new_country attack, since WAF's log carries the country (the others need a
// GeoIP database, which the demo does not have).
func wafClients(injected []synth.Injected) map[string]bool {
	waf := map[string]bool{}
	for _, inj := range injected {
		if inj.Kind == synth.AttackNewCountry {
			waf[inj.Client] = true
		}
	}
	return waf
}

// gatewayOf returns the gateway that serves consumer.
func gatewayOf(consumer string, waf map[string]bool) ingest.TopicConfig {
	if waf[consumer] {
		return demoTopics[0]
	}
	h := fnv.New32a()
	h.Write([]byte(consumer))
	return demoTopics[h.Sum32()%uint32(len(demoTopics))]
}

// templateID matches a route template's id segment such as {id}, which a probe's path
// fills with a number.
var templateID = regexp.MustCompile(`\{[^/}]*\}`)

// alertKeys returns the key of the incident each attack must raise: its credentials
// read by the parser of its gateway's format under the demo's secret, as the pipeline
// reads its records.
func alertKeys(secret ingest.TokenSecret, injected []synth.Injected) ([]string, error) {
	waf := wafClients(injected)
	keys := make([]string, len(injected))
	for i := range injected {
		inj := &injected[i]
		format := gatewayOf(inj.Client, waf).Format
		p, err := ingest.NewParser(format, ingest.ParserOptions{Secret: secret, Now: func() time.Time { return inj.End }})
		if err != nil {
			return nil, err
		}
		var perr error
		probe := func(apiKey, token, methodRoute string) ingest.Event {
			method, route, _ := strings.Cut(methodRoute, " ")
			r := synth.Request{Time: inj.Start, ClientIP: "192.0.2.1", Method: method, Host: "api.example.com",
				Path: templateID.ReplaceAllString(route, "1234"), Route: route, Status: 200, Action: "ALLOW",
				APIKey: apiKey, Token: token, Consumer: inj.Client, RequestID: "req-probe-0000000000000000"}
			var ev ingest.Event
			line, err := synth.AppendRecord(nil, format, &r)
			if err == nil {
				err = p.Parse(&ev, line)
			}
			if err != nil && perr == nil {
				perr = fmt.Errorf("demo: the key of the %s attack: %w", inj.Kind, err)
			}
			return ev // its strings point into line, which is not reused
		}
		keys[i] = inj.AlertKey(
			func(k string) string { return probe(k, "", "GET /").ClientKey },
			func(tok string) string { return probe("", tok, "GET /").TokenFP },
			func(route string) string { ev := probe("", "", route); return ev.Method + " " + ev.Route })
		if perr != nil {
			return nil, perr
		}
	}
	return keys, nil
}

// produceDemo writes each topic's records as its gateway's log shipper would, stamping
// each with the time it was logged.
func produceDemo(ctx context.Context, addrs []string, byTopic map[string][]synth.Request) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, t := range demoTopics {
		reqs := byTopic[t.Name]
		g.Go(func() error {
			w := &kafkago.Writer{
				Addr:         kafkago.TCP(addrs...),
				Topic:        t.Name,
				Balancer:     &kafkago.RoundRobin{},
				RequiredAcks: kafkago.RequireAll,
				BatchSize:    2000,
				BatchBytes:   900_000,
				BatchTimeout: 5 * time.Millisecond,
				Compression:  compress.Lz4,
			}
			defer w.Close()
			msgs := make([]kafkago.Message, 0, 2000)
			for i := range reqs {
				v, err := synth.AppendRecord(nil, t.Format, &reqs[i])
				if err != nil {
					return err
				}
				msgs = append(msgs, kafkago.Message{Value: v, Time: reqs[i].Time})
				if len(msgs) == cap(msgs) || i == len(reqs)-1 {
					if err := w.WriteMessages(ctx, msgs...); err != nil {
						return fmt.Errorf("produce to %s: %w", t.Name, err)
					}
					msgs = msgs[:0]
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// untilConsumed ends the demo's unbounded Kafka source once every produced record has
// come through: as an event, counted here, or as a dead letter, counted by the source's
// metrics, which are read only when no batch comes.
type untilConsumed struct {
	src    detectors.EventSource
	want   float64
	reg    *prometheus.Registry
	events float64

	first, last time.Time // when the first events came, and when the last did (benchmarks)
}

func (u *untilConsumed) Next(ctx context.Context) (*ingest.Batch, error) {
	for {
		if u.events >= u.want {
			return nil, io.EOF
		}
		wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		b, err := u.src.Next(wctx)
		cancel()
		switch {
		case b != nil && len(b.Events) > 0:
			if u.first.IsZero() {
				u.first = time.Now()
			}
			u.events += float64(len(b.Events))
			if u.events >= u.want {
				u.last = time.Now()
			}
			return b, err
		case ctx.Err() != nil:
			return b, err
		case counterTotal(u.reg, "gatewatch_ingest_records_total") >= u.want:
			return nil, io.EOF // the rest were rejected
		case b != nil:
			return b, err // a tick: the engine looks at the clock
		}
	}
}

// counterTotal adds up every series of a counter in reg.
func counterTotal(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// reportCaught says, per injected attack, which incident it raised: one of its
// detector, on the key it must raise (keys[i], see alertKeys), whose span overlaps the
// attack's.
func reportCaught(w io.Writer, injected []synth.Injected, keys []string, incidents []detectors.Alert) error {
	fmt.Fprintln(w, "demo: attacks injected, and the incidents raised for them:")
	missed := 0
	matched := map[string]bool{}
	for j, inj := range injected {
		var hit *detectors.Alert
		for i := range incidents {
			a := &incidents[i]
			if a.Detector == inj.Kind && a.Key == keys[j] &&
				!a.FirstSeen.After(inj.End.Add(5*time.Minute)) && !a.LastSeen.Before(inj.Start.Add(-5*time.Minute)) {
				hit = a
				break
			}
		}
		verdict := "MISSED"
		if hit != nil {
			verdict = "caught " + hit.ID[:8]
			matched[hit.ID] = true
		} else {
			missed++
		}
		from := inj.Client
		if from == "" { // an attack by address alone: a spray, a scan
			from = inj.ClientIP
		}
		fmt.Fprintf(w, "  %-22s %s  %-15s %s (%d requests from %s)\n", inj.Kind, inj.Start.Format("15:04:05"), verdict, inj.Route, inj.Count, from)
	}
	var extra []string
	for _, a := range incidents {
		if !matched[a.ID] {
			extra = append(extra, fmt.Sprintf("%s %s %s", a.ID[:8], a.Detector, a.Key))
		}
	}
	if len(extra) > 0 {
		fmt.Fprintf(w, "demo: %d incidents matched no injected attack (false positives): %s\n", len(extra), strings.Join(extra, "; "))
	}
	switch {
	case missed > 0:
		return fmt.Errorf("%d of %d attacks raised no alert", missed, len(injected))
	case len(extra) > 0:
		return fmt.Errorf("%d incidents matched no injected attack", len(extra))
	}
	return nil
}

// consoleReceiver is the demo's receiver: it prints each alert as the pipeline
// delivers it, for a person (with colour on a terminal) or as JSON lines.
type consoleReceiver struct {
	w     io.Writer
	json  bool
	color bool

	mu   sync.Mutex
	seen map[string]detectors.Alert // latest version of each incident
}

func (c *consoleReceiver) Name() string { return "console" }

func (c *consoleReceiver) Notify(_ context.Context, alerts []detectors.Alert) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]detectors.Alert{}
	}
	for _, a := range alerts {
		_, update := c.seen[a.ID]
		c.seen[a.ID] = a
		var err error
		if c.json {
			var b []byte
			if b, err = json.Marshal(a); err == nil {
				_, err = c.w.Write(append(b, '\n'))
			}
		} else {
			_, err = io.WriteString(c.w, c.format(a, update))
		}
		if err != nil {
			return true, err
		}
	}
	return false, nil
}

// incidents returns the latest version of each incident, by first_seen.
func (c *consoleReceiver) incidents() []detectors.Alert {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]detectors.Alert, 0, len(c.seen))
	for _, a := range c.seen {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b detectors.Alert) int {
		if c := a.FirstSeen.Compare(b.FirstSeen); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

var severityColor = map[detectors.Severity]string{
	detectors.SeverityLow: "\033[36m", detectors.SeverityMedium: "\033[33m",
	detectors.SeverityHigh: "\033[31m", detectors.SeverityCritical: "\033[1;31m",
}

// format is an alert for a person: severity, detector and summary on one line, then the
// key facts and the runbook. An update of an open incident is one line.
func (c *consoleReceiver) format(a detectors.Alert, update bool) string {
	sev, reset, dim := strings.ToUpper(string(a.Severity)), "", ""
	if c.color {
		sev, reset, dim = severityColor[a.Severity]+sev, "\033[0m", "\033[2m"
	}
	span := a.FirstSeen.UTC().Format("15:04:05") + "–" + a.LastSeen.UTC().Format("15:04:05")
	if update {
		return fmt.Sprintf("  %s↳ update %s %s %s (%s)%s\n", dim, a.ID[:8], a.Detector, span, a.Summary, reset)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s%s %s: %s\n", sev, reset, a.Detector, a.Summary)
	fmt.Fprintf(&b, "         %sid %s  key %s  %s UTC%s\n", dim, a.ID[:16], a.Key, span, reset)
	if facts := keyFacts(a.Evidence); facts != "" {
		fmt.Fprintf(&b, "         %s%s%s\n", dim, facts, reset)
	}
	fmt.Fprintf(&b, "         runbook: %s\n", a.RunbookURL)
	return b.String()
}

// keyFacts is the evidence worth a glance, from its JSON: every scalar and short list.
func keyFacts(ev detectors.Evidence) string {
	b, err := json.Marshal(ev)
	if err != nil {
		return ""
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return ""
	}
	var facts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch v := m[k].(type) {
		case string, float64, bool:
			facts = append(facts, fmt.Sprintf("%s=%v", k, v))
		case []any:
			if len(v) > 0 && len(v) <= 4 {
				if _, scalar := v[0].(string); scalar {
					facts = append(facts, fmt.Sprintf("%s=%v", k, v))
				}
			}
		}
	}
	return strings.Join(facts, "  ")
}

// isTerminal reports whether w is a terminal (and NO_COLOR is not set).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

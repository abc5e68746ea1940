package deploy_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite metrics.txt from the dashboard and the rules")

const (
	rulesFile     = "prometheus/gatewatch.rules.yml"
	rulesTestFile = "prometheus/gatewatch.rules.test.yml"
	dashboardFile = "grafana/gatewatch.json"
	// metricsFile lists the metric names the dashboard and the rules use;
	// cmd/gatewatch's TestDeployCompose checks that gatewatch run exports each one not
	// marked, and TestRunCluster that a replica with a cluster section exports each one
	// not external.
	metricsFile = "metrics.txt"
	// clusterOnly starts the names of the metrics only a replica with a cluster section
	// exports (internal/cluster's): a run without one, as TestDeployCompose's, has none.
	clusterOnly = "gatewatch_cluster_"
	// consoleOnly starts the names of the metrics only a run with console.listen exports.
	consoleOnly = "gatewatch_console_"
)

// external are the metric names the rules may use that gatewatch does not export,
// with who does.
var external = map[string]string{
	"up":                    "Prometheus, for every scrape target",
	"kube_pod_status_ready": "kube-state-metrics",
}

var promql = parser.NewParser(parser.Options{})

// metricNames returns the metric names expr selects.
func metricNames(expr string) ([]string, error) {
	e, err := promql.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names, nil
}

// TestPrometheusRules: promtool accepts the rules and passes their unit tests, and every
// alerting rule has a unit test that sees it fire.
func TestPrometheusRules(t *testing.T) {
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, rulesTestFile)), &tests); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			} else {
				quiet[at.Alertname] = true
			}
		}
	}
	n := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("alert %s: want a unit test in %s where it fires and one where it does not", r.Alert, rulesTestFile)
			}
			if sev := r.Labels["severity"]; sev != "critical" && sev != "warning" {
				t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, sev)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a summary and a description", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatal("no alerting rule")
	}

	promtool := requireTool(t, "promtool")
	run(t, ".", nil, promtool, "check", "rules", rulesFile)
	run(t, filepath.Dir(rulesTestFile), nil, promtool, "test", "rules", filepath.Base(rulesTestFile))
}

// grafanaVars stands in for the dashboard's variables so that its queries parse.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$job", "gatewatch", "$instance", ".+")

// panel is the part of a Grafana panel the test reads.
type panel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal([]byte(readFile(t, dashboardFile)), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// queries returns every PromQL query of the dashboard (panels' targets, and the
// selectors of its variables' label_values), variables substituted.
func (d dashboard) queries(t *testing.T) []string {
	t.Helper()
	var out []string
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_]+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: query %q, want label_values(selector, label)", v.Name, v.Definition)
			continue
		}
		out = append(out, grafanaVars.Replace(m[1]))
	}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, grafanaVars.Replace(tg.Expr))
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// TestDashboard: the dashboard is JSON Grafana loads: a uid, unique panel ids, panels
// on the grid without overlap, every query on the datasource variable, and every query
// parses.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: want both", d.UID, d.Title)
	}
	if !slices.ContainsFunc(d.Templating.List, func(v struct {
		Name       string `json:"name"`
		Type       string `json:"type"`
		Definition string `json:"definition"`
	}) bool {
		return v.Name == "datasource" && v.Type == "datasource"
	}) {
		t.Error("no datasource variable: the dashboard would be tied to one Prometheus")
	}
	ids := map[int]string{}
	type cell struct{ x, y int }
	used := map[cell]string{}
	queries := 0
	for _, p := range d.Panels {
		if other, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("panel %q: id %d (also %q)", p.Title, p.ID, other)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v off the 24-column grid", p.Title, p.GridPos)
		}
		for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
			for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
				if other, ok := used[cell{x, y}]; ok {
					t.Errorf("panel %q overlaps %q", p.Title, other)
					x, y = 1<<30, 1<<30
				} else {
					used[cell{x, y}] = p.Title
				}
			}
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			if !strings.Contains(string(tg.Datasource), "${datasource}") {
				t.Errorf("panel %q: query datasource %s, want ${datasource}", p.Title, tg.Datasource)
			}
		}
	}
	for _, q := range d.queries(t) {
		if _, err := metricNames(q); err != nil {
			t.Errorf("query %q does not parse: %v", q, err)
		}
	}
	if queries < 20 {
		t.Errorf("%d queries, want the dashboard the README describes", queries)
	}
}

// TestMetricsList: metrics.txt lists exactly the metric names the dashboard and the
// rules use, gatewatch's (those of a cluster section marked cluster-only, those of the
// console console-only) and the external ones marked with who exports them; every rule
// expression parses. cmd/gatewatch's TestDeployCompose checks gatewatch run exports the
// unmarked ones, and TestRunCluster that a cluster replica exports those and the
// cluster-only ones, and the console-only ones where it serves the console.
// -update rewrites the file.
func TestMetricsList(t *testing.T) {
	used := map[string]bool{}
	add := func(where, expr string) {
		names, err := metricNames(expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", where, expr, err)
		}
		for _, n := range names {
			used[n] = true
		}
	}
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			add(rulesFile+" "+r.Alert+r.Record, r.Expr)
		}
	}
	for _, q := range loadDashboard(t).queries(t) {
		add(dashboardFile, q)
	}
	var b strings.Builder
	b.WriteString("# Metric names deploy/'s Grafana dashboard and Prometheus rules use, written by\n" +
		"# `cd deploy && go test -run TestMetricsList -update`. cmd/gatewatch's TestDeployCompose\n" +
		"# checks that a running `gatewatch run` exports each one not marked, and TestRunCluster\n" +
		"# that a replica with a cluster section exports those and each one marked cluster-only,\n" +
		"# and the one serving the console each one marked console-only.\n")
	for _, n := range slices.Sorted(maps.Keys(used)) {
		if who, ok := external[n]; ok {
			fmt.Fprintf(&b, "%s # external: %s\n", n, who)
			continue
		}
		if strings.HasPrefix(n, clusterOnly) {
			b.WriteString(n + " # cluster-only\n")
			continue
		}
		if strings.HasPrefix(n, consoleOnly) {
			b.WriteString(n + " # console-only\n")
			continue
		}
		if !strings.HasPrefix(n, "gatewatch_") && !strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") {
			t.Errorf("%s is neither gatewatch's, nor the Go and process collectors' it serves, nor a known external metric", n)
		}
		b.WriteString(n + "\n")
	}
	if *update {
		if err := os.WriteFile(metricsFile, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := readFile(t, metricsFile); got != b.String() {
		t.Errorf("%s is not the metric names the dashboard and the rules use (go test -run TestMetricsList -update, review the diff):\n%s", metricsFile, b.String())
	}
}

package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/internal/chart"
)

// TimelineMargin is how much before an alert's first_seen and after its last_seen its
// timeline shows: the 30 minutes around it that the runbooks' first steps look at.
const TimelineMargin = 15 * time.Minute

// MaxReportAlerts bounds the alerts a report charts; the rest are listed without one.
const MaxReportAlerts = 500

// A Timeline is requests per minute of an alert's key or route around it.
type Timeline struct {
	Start  time.Time // the minute of Counts[0]
	Counts []float64
}

// Timelines reads src (the replay's input, read again) and counts, for each alert,
// the requests per minute of its key or route from TimelineMargin before its first_seen
// to TimelineMargin after its last_seen. An alert's key is matched against the events'
// client key, token fingerprint and client IP; "METHOD /route" against their route;
// "client METHOD /route" against both.
func Timelines(ctx context.Context, src detectors.EventSource, alerts []detectors.Alert) ([]Timeline, error) {
	out := make([]Timeline, len(alerts))
	type want struct {
		i             int
		method, route string // set when the key names a route
	}
	byClient := map[string][]want{} // client key, token fingerprint or client IP
	byRoute := map[string][]want{}  // route template, for keys that are only a route
	for i, a := range alerts {
		start := a.FirstSeen.Add(-TimelineMargin).Truncate(time.Minute)
		end := a.LastSeen.Add(TimelineMargin)
		out[i] = Timeline{Start: start, Counts: make([]float64, int(end.Sub(start)/time.Minute)+1)}
		client, method, route := splitKey(a.Key)
		w := want{i: i, method: method, route: route}
		if client != "" {
			byClient[client] = append(byClient[client], w)
		} else {
			byRoute[route] = append(byRoute[route], w)
		}
	}
	count := func(ws []want, ev *ingest.Event) {
		for _, w := range ws {
			if w.route != "" && (ev.Route != w.route || ev.Method != w.method) {
				continue
			}
			tl := &out[w.i]
			if m := int(ev.Time.Sub(tl.Start) / time.Minute); ev.Time.Compare(tl.Start) >= 0 && m < len(tl.Counts) {
				tl.Counts[m]++
			}
		}
	}
	for {
		b, err := src.Next(ctx)
		if b != nil {
			for i := range b.Events {
				ev := &b.Events[i]
				count(byClient[ev.ClientKey], ev)
				if ev.TokenFP != ev.ClientKey {
					count(byClient[ev.TokenFP], ev)
				}
				if ev.ClientIP != ev.ClientKey && ev.ClientIP != ev.TokenFP {
					count(byClient[ev.ClientIP], ev)
				}
				count(byRoute[ev.Route], ev)
			}
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("replay: reading the input for the report: %w", err)
		}
	}
}

// splitKey takes an alert key apart: "METHOD /route" is a route, "client METHOD
// /route" a client on a route (object_enumeration), anything else a client.
func splitKey(key string) (client, method, route string) {
	parts := strings.SplitN(key, " ", 3)
	switch {
	case len(parts) == 2 && isMethod(parts[0]):
		return "", parts[0], parts[1]
	case len(parts) == 3 && isMethod(parts[1]):
		return parts[0], parts[1], parts[2]
	}
	return key, "", ""
}

func isMethod(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// threshold returns what the alert's detector counts against in cfg, per minute, and
// how to label it; 0 when its threshold is no count of requests (devices, countries,
// a learned baseline).
func threshold(cfg detectors.Config, detector string) (float64, string) {
	perMinute := func(n int, w time.Duration) float64 { return float64(n) / max(w.Minutes(), 1.0/60) }
	switch detector {
	case detectors.ForbiddenBurst:
		c := cfg.ForbiddenBurst
		return perMinute(c.Threshold, c.Window), fmt.Sprintf("threshold: %d responses %v in %s", c.Threshold, c.Statuses, c.Window)
	case detectors.QuietEndpointSpike:
		c := cfg.QuietEndpointSpike
		return perMinute(c.MinCount, c.Window), fmt.Sprintf("min_count: %d requests in %s", c.MinCount, c.Window)
	}
	return 0, ""
}

// Report is what --report FILE.html shows.
type Report struct {
	Title     string
	Command   string // the command line that made it
	Summary   *Summary
	Detectors detectors.Config // the printed engine's, for the thresholds
	Alerts    []detectors.Alert
	Timelines []Timeline // one per alert, in order; nil: no charts
	Sweep     *Sweep
	SweepRows []SweepRow
	Labels    []Label
	Compare   *Diff
}

// WriteReport writes r as one self-contained HTML page: its styles inline, its charts
// inline SVG, no script, nothing loaded from elsewhere (it must open on an air-gapped
// analyst machine). Links to the runbooks are the only references out.
func WriteReport(w io.Writer, r *Report) error {
	page := reportPage{Report: r}
	for i, a := range r.Alerts {
		ra := reportAlert{Alert: a, N: i + 1}
		ev, err := json.MarshalIndent(a.Evidence, "", "  ")
		if err != nil {
			return fmt.Errorf("replay: report: evidence of %s: %w", a.ID, err)
		}
		ra.Evidence = string(ev)
		if i < len(r.Timelines) && i < MaxReportAlerts {
			tl := r.Timelines[i]
			th, label := threshold(r.Detectors, a.Detector)
			c := chart.Timeline{Title: a.Detector + " · " + a.Key, Start: tl.Start, Counts: tl.Counts,
				Threshold: th, ThresholdLabel: label, WindowStart: a.FirstSeen, WindowEnd: a.LastSeen}
			var svg bytes.Buffer
			if err := c.WriteSVG(&svg); err != nil {
				return fmt.Errorf("replay: report: timeline of %s: %w", a.ID, err)
			}
			ra.Chart = template.HTML(svg.String()) // our own SVG, drawn by gonum/plot from numbers
		}
		page.Alerts = append(page.Alerts, ra)
	}
	if r.Sweep != nil && len(r.SweepRows) > 0 {
		b := chart.Bars{Title: "incidents per value of " + r.Sweep.Param, XLabel: r.Sweep.Param, YLabel: "incidents"}
		inc := chart.Series{Name: r.Sweep.Detector() + " incidents"}
		caught := chart.Series{Name: "attacks caught (labelled)"}
		for _, row := range r.SweepRows {
			b.Labels = append(b.Labels, row.Value)
			inc.Values = append(inc.Values, float64(row.Incidents))
			caught.Values = append(caught.Values, float64(row.Caught))
		}
		b.Series = []chart.Series{inc}
		if len(r.Labels) > 0 {
			b.Series = append(b.Series, caught)
		}
		var svg bytes.Buffer
		if err := b.WriteSVG(&svg); err != nil {
			return fmt.Errorf("replay: report: sweep chart: %w", err)
		}
		page.SweepChart = template.HTML(svg.String())
	}
	if err := reportTemplate.Execute(w, page); err != nil {
		return fmt.Errorf("replay: report: %w", err)
	}
	return nil
}

type reportPage struct {
	*Report
	Alerts     []reportAlert
	SweepChart template.HTML
}

type reportAlert struct {
	detectors.Alert
	N        int
	Evidence string
	Chart    template.HTML
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"time": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.Title}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; text-align: left; border-bottom: 1px solid #eee; }
.sev-critical { color: #8b0000; } .sev-high { color: #c0392b; } .sev-medium { color: #d68910; } .sev-low { color: #555; }
.alert { margin-top: 2.5em; } .chart svg { max-width: 100%; height: auto; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
{{with .Command}}<p><code>{{.}}</code></p>{{end}}
{{with .Summary}}<p>{{.Events}} events{{if not .First.IsZero}} from {{time .First}} to {{time .Last}}{{end}}{{if .WarmupEvents}}, after a warm-up of {{.WarmupEvents}} events{{end}}; {{.Late}} late.</p>{{end}}
{{if .SweepRows}}<section id="sweep">
<h2>Sweep of {{.Sweep.Param}}</h2>
<div class="chart">{{.SweepChart}}</div>
<table><tr><th>value</th><th>{{.Sweep.Detector}} incidents</th><th>all incidents</th>{{if .Labels}}<th>attacks caught</th><th>false alarms</th><th>missed</th>{{end}}</tr>
{{range .SweepRows}}<tr><td>{{.Value}}</td><td>{{.Incidents}}</td><td>{{.All}}</td>{{if $.Labels}}<td>{{.Caught}}</td><td>{{.FalseAlarms}}</td><td>{{range .Missed}}<code>{{.}}</code> {{end}}</td>{{end}}</tr>
{{end}}</table>
</section>{{end}}
{{with .Compare}}<section id="compare">
<h2>Compare</h2>
<p>Only in A: {{len .OnlyA}}. Only in B: {{len .OnlyB}}.</p>
<table>{{range .OnlyA}}<tr><td>A</td><td><code>{{.ID}}</code></td><td>{{.Detector}}</td><td>{{.Key}}</td><td>{{.Summary}}</td></tr>{{end}}
{{range .OnlyB}}<tr><td>B</td><td><code>{{.ID}}</code></td><td>{{.Detector}}</td><td>{{.Key}}</td><td>{{.Summary}}</td></tr>{{end}}</table>
</section>{{end}}
<h2>Alerts ({{len .Alerts}})</h2>
{{if not .Alerts}}<p>No alert was raised.</p>{{end}}
{{range .Alerts}}<section class="alert" id="alert-{{.ID}}">
<h3>{{.N}}. <span class="sev-{{.Severity}}">{{.Severity}}</span> · {{.Detector}} · <code>{{.Key}}</code></h3>
<p>{{.Summary}}</p>
<p>id <code>{{.ID}}</code>, first seen {{time .FirstSeen}}, last seen {{time .LastSeen}}{{with .RunbookURL}} · <a href="{{.}}">Runbook: first 30 minutes</a>{{end}}</p>
{{if .Chart}}<div class="chart">{{.Chart}}</div>{{end}}
<details><summary>Evidence</summary><pre>{{.Evidence}}</pre></details>
</section>
{{end}}
</body>
</html>
`))

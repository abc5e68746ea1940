package replay_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/replay"
)

// external finds what would make a browser load something: scripts, style sheets,
// fonts, images, frames, and url() or @import in styles. Links (<a href>) load nothing.
var external = regexp.MustCompile(`(?i)<script|<link|<iframe|<img|<object|<embed|<image|<use|@import|@font-face|url\(|\ssrc=|xlink:href=`)

// report replays an hour with every attack, sweeps forbidden_burst's threshold, and
// writes the report; it returns the report and the alerts.
func report(t *testing.T) ([]byte, []detectors.Alert) {
	t.Helper()
	path := writeSample(t, synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}, ingest.FormatAWSWAF)
	sw, _ := replay.ParseSweep("detectors.forbidden_burst.threshold=5,20,80")
	variants, err := sw.Variants(demoDetectors())
	if err != nil {
		t.Fatal(err)
	}
	_, sum := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{Variants: variants, RunbookBase: "https://runbooks.example.com/gatewatch"})
	alerts := sum.Results[0].Alerts
	tls := timelines(t, path, alerts)
	var out bytes.Buffer
	err = replay.WriteReport(&out, &replay.Report{Title: "replay of " + filepath.Base(path), Summary: sum, Detectors: demoDetectors(),
		Alerts: alerts, Timelines: tls, Sweep: &sw, SweepRows: replay.SweepRows(sw, sum.Results[1:], nil)})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), alerts
}

// timelines draws the alerts' timelines from the file at path.
func timelines(t *testing.T, path string, alerts []detectors.Alert) []replay.Timeline {
	t.Helper()
	src := fileSource(t, path, ingest.FormatAWSWAF, 0)
	defer src.Close()
	tls, err := replay.Timelines(context.Background(), src, alerts)
	if err != nil {
		t.Fatal(err)
	}
	return tls
}

// TestReportIsSelfContained: one chart per alert and one for the sweep, inline SVG;
// nothing loaded from elsewhere; each alert's runbook linked; the timeline of the 403
// burst reaches its threshold inside the alert window.
func TestReportIsSelfContained(t *testing.T) {
	page, alerts := report(t)
	if m := external.FindAll(page, 5); m != nil {
		t.Errorf("the report refers outside itself: %q", m)
	}
	if n, want := bytes.Count(page, []byte("<svg")), len(alerts)+1; n != want {
		t.Errorf("%d charts, want one per alert (%d) and the sweep's", n, len(alerts))
	}
	for _, a := range alerts {
		for _, want := range []string{`id="alert-` + a.ID + `"`, `<a href="` + a.RunbookURL + `">`} {
			if !bytes.Contains(page, []byte(want)) {
				t.Errorf("the report lacks %s", want)
			}
		}
	}
	if !bytes.Contains(page, []byte("threshold: 20 responses [403] in 1m0s")) {
		t.Error("the forbidden_burst chart does not mark its threshold")
	}
}

func TestTimelineCountsTheKey(t *testing.T) {
	path := writeSample(t, synth.Config{Duration: time.Hour, Rate: 4, Seed: 5, Attacks: synth.Attacks}, ingest.FormatAWSWAF)
	_, sum := run(t, path, ingest.FormatAWSWAF, 2, replay.Options{})
	alerts := sum.Results[0].Alerts
	tls := timelines(t, path, alerts)
	for i, a := range alerts {
		tl := tls[i]
		if !tl.Start.Equal(a.FirstSeen.Add(-replay.TimelineMargin).Truncate(time.Minute)) || len(tl.Counts) < 30 {
			t.Errorf("%s: timeline from %s, %d minutes", a.Detector, tl.Start, len(tl.Counts))
		}
		// The minutes of the alert window hold its requests; a key with none is
		// matched wrongly.
		in := 0.0
		for m := int(a.FirstSeen.Sub(tl.Start) / time.Minute); m <= int(a.LastSeen.Sub(tl.Start)/time.Minute); m++ {
			in += tl.Counts[m]
		}
		if in == 0 {
			t.Errorf("%s %s: no request of its key in its window", a.Detector, a.Key)
		}
		if a.Detector == detectors.ForbiddenBurst && slices.Max(tl.Counts) < 20 {
			t.Errorf("forbidden_burst: the busiest minute has %v requests, under the threshold of 20 it passed", slices.Max(tl.Counts))
		}
	}
}

// TestReportEscapesWhatClientsSend: a key or route is what clients sent; it is text in
// the page and in the charts, never markup.
func TestReportEscapesWhatClientsSend(t *testing.T) {
	hostile := `GET /<script>alert(1)</script>`
	at := synth.DefaultStart
	a := detectors.Alert{ID: "x1", Detector: detectors.QuietEndpointSpike, Severity: detectors.SeverityHigh, Key: hostile,
		FirstSeen: at, LastSeen: at.Add(time.Minute), Summary: "<b>" + hostile, RunbookURL: "https://runbooks.example.com/q.md"}
	var out bytes.Buffer
	err := replay.WriteReport(&out, &replay.Report{Title: "t", Detectors: demoDetectors(), Alerts: []detectors.Alert{a},
		Timelines: []replay.Timeline{{Start: at.Add(-15 * time.Minute), Counts: make([]float64, 31)}}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out.Bytes(), []byte("<script>")) || bytes.Contains(out.Bytes(), []byte("<b>")) {
		t.Errorf("client text became markup:\n%s", out.String())
	}
}

// TestReportRendersInChromium opens the report in Debian's headless chromium: the page
// loads with every chart laid out (a chart that failed to parse would be missing from
// the DOM chromium serialises), and a screenshot of it is taken.
func TestReportRendersInChromium(t *testing.T) {
	bin := requireChromium(t)
	page, alerts := report(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "report.html")
	if err := os.WriteFile(file, page, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1200,900"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dom, err := exec.CommandContext(ctx, bin, append(args, "--dump-dom", "file://"+file)...).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	if n := strings.Count(string(dom), "<svg"); n != len(alerts)+1 {
		t.Errorf("chromium's DOM holds %d charts, want %d", n, len(alerts)+1)
	}
	if !strings.Contains(string(dom), "Alerts (") || !strings.Contains(string(dom), "requests / minute") {
		t.Errorf("chromium's DOM lacks the alerts or their charts:\n%.2000s", dom)
	}
	png := filepath.Join(dir, "report.png")
	out, err := exec.CommandContext(ctx, bin, append(args, "--screenshot="+png, "file://"+file)...).CombinedOutput()
	if err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	if fi, err := os.Stat(png); err != nil || fi.Size() < 10_000 {
		t.Errorf("screenshot: %v, %v", fi, err)
	}
}

// requireChromium returns Debian's chromium, or skips outside CI when it is missing.
func requireChromium(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	switch {
	case err != nil && os.Getenv("CI") != "":
		t.Fatalf("CI renders the report in chromium: %v (apt-get install chromium)", err)
	case err != nil:
		t.Skipf("chromium not installed: %v", err)
	}
	return bin
}

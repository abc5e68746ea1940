package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// requireChromium returns Debian's headless chromium, or skips the test when it is
// not installed, except in CI, where every test runs.
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI runs the console's browser test: install Debian's chromium (make deps)")
	}
	t.Skip("chromium not installed (apt-get install chromium)")
	return ""
}

// browser is a headless chromium driven by chromedp, as the machine doc says to start
// it here: no sandbox (root), no GPU, none of its background connections.
type browser struct {
	t    *testing.T
	ctx  context.Context
	base string // the console's URL
	dir  string // screenshots
}

func newBrowser(t *testing.T, exe, base string) *browser {
	t.Helper()
	// The profile is not a t.TempDir: chromium's helper processes may still write to it
	// for a moment after the browser exits, and TempDir's cleanup fails the test then.
	profile, err := os.MkdirTemp("", "gatewatch-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.NoFirstRun,
		chromedp.UserDataDir(profile), chromedp.WindowSize(1400, 1000))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		for range 50 {
			if err = os.RemoveAll(profile); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("chromium's profile %s is left: %v", profile, err)
	})
	// The console asks before destructive clicks (window.confirm): say yes.
	chromedp.ListenTarget(ctx, func(ev any) {
		if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			go chromedp.Run(ctx, page.HandleJavaScriptDialog(true))
		}
	})
	// Start the browser under ctx itself: the context of the first Run owns the
	// browser's process, and run's contexts, with their timeouts, end after each step.
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	b := &browser{t: t, ctx: ctx, base: base, dir: filepath.Join(t.TempDir(), "screenshots")}
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return b
}

// run runs actions within a minute.
func (b *browser) run(what string, actions ...chromedp.Action) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		// What the browser shows, if it still answers; a page without a main
		// element must not make the diagnosis wait for ever.
		var loc, html string
		dctx, dcancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer dcancel()
		_ = chromedp.Run(dctx, chromedp.Location(&loc), chromedp.OuterHTML("body", &html, chromedp.ByQuery))
		b.t.Fatalf("%s: %v (at %s)\n%s", what, err, loc, html)
	}
}

// waitFor waits until the expression is true on the page in force.
func (b *browser) waitFor(what, expr string) {
	b.t.Helper()
	var ok bool
	b.evalUntil(what, expr, &ok, func() bool { return ok })
}

// text returns the text of the page's main element. It reads it in one evaluation in
// the page, not by DOM node ids, which go stale when the page is replaced between the
// query and the read (the redirect after a form).
func (b *browser) text() string {
	b.t.Helper()
	var s *string
	b.evalUntil("the page's text", `document.querySelector("main")?.innerText ?? null`, &s, func() bool { return s != nil })
	return *s
}

// evalUntil evaluates expr into res until done says it holds what was waited for, for
// at most a minute; a navigation that comes meanwhile interrupts one evaluation, not
// the wait.
func (b *browser) evalUntil(what, expr string, res any, done func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		err := chromedp.Run(ctx, chromedp.Evaluate(expr, res))
		cancel()
		if err == nil && done() {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// screenshot keeps the whole page as name.png among the test's artefacts and, when
// GATEWATCH_SCREENSHOTS names a directory, there too, for review.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	var png []byte
	b.run("screenshot "+name, chromedp.FullScreenshot(&png, 100))
	dirs := []string{b.dir}
	if d := os.Getenv("GATEWATCH_SCREENSHOTS"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			b.t.Fatal(err)
		}
	}
}

// hook is a webhook endpoint that refuses (400) until it is fixed.
type hook struct {
	srv      *httptest.Server
	fixed    atomic.Bool
	mu       sync.Mutex
	accepted []string // bodies taken
}

func newHook(t *testing.T) *hook {
	h := &hook{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !h.fixed.Load() {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.accepted = append(h.accepted, string(body))
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hook) bodies() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.accepted)
}

const (
	consoleToken  = "console-e2e-token-0123456789abcdef"
	signingSecret = "e2e-slack-signing-secret-0123456789"
)

// TestConsoleInBrowser drives the console of a running `gatewatch run` in headless
// chromium: an attack produced through the loopback broker raises incidents (one Slack
// message per detector, grouped); the analyst logs in, sees them open, silences one
// incident's key from its page, sees the next alert of that key suppressed, expires
// the silence, and re-sends a delivery parked by a broken webhook. Requests without the
// token or without the CSRF token are refused; Slack's buttons, signed with the app's
// secret, act through the same console (a wrongly signed one is refused, a replayed
// one does nothing twice). Screenshots of each page are kept.
func TestConsoleInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch and a browser")
	}
	exe := requireChromium(t)
	e := newE2E(t, "waf-logs")
	hk := newHook(t)
	console := freeAddr(t)
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "")
	extra := fmt.Sprintf(`console:
  listen: %s
  token_file: %s
  slack_signing_secret_file: %s
`, console, writeFile(t, filepath.Join(e.dir, "console-token"), consoleToken), writeFile(t, filepath.Join(e.dir, "signing"), signingSecret))
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	withHook := strings.Replace(string(cfg), "  receivers:\n", fmt.Sprintf(`  resolve_timeout: 3h
  group_by: [detector]
  group_interval: 10s
  receivers:
    - {name: siem-hook, webhook: {url_file: %s, secret_file: %s}}
`, writeFile(t, filepath.Join(e.dir, "hook-url"), hk.srv.URL), writeFile(t, filepath.Join(e.dir, "hook-secret"), "hook-signing-secret-0123456789")), 1)
	writeFile(t, e.config, withHook+extra)

	reqs, injected := liveTraffic(t, 31)
	p := startRun(t, e.config)
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
	posts := e.waitPosts(t, p, len(injected), 5*time.Minute)
	e.waitMetric(t, p, float64(len(injected)), time.Minute, "gatewatch_alerting_outbox_parked_deliveries", "receiver", "siem-hook")
	base := "http://" + console

	// Without the token, or without the CSRF token, nothing.
	checkRefused(t, base)

	b := newBrowser(t, exe, base)
	b.run("open the console", chromedp.Navigate(base+"/incidents"), chromedp.WaitVisible(`input[name="secret"]`, chromedp.ByQuery))
	b.screenshot("login")
	b.run("log in", chromedp.SendKeys(`input[name="secret"]`, consoleToken, chromedp.ByQuery),
		chromedp.Submit(`input[name="secret"]`, chromedp.ByQuery), chromedp.WaitVisible("table.incidents", chromedp.ByQuery))
	// The alert history reaches the store a flush interval after the deliveries
	// above, so the list is read again until every incident is in it.
	var open int
	var rows string
	deadline := time.Now().Add(time.Minute)
	for {
		b.run("count the open incidents", chromedp.Evaluate(
			`[...document.querySelectorAll("table.incidents tbody tr td:nth-child(7)")].filter(td => td.textContent.trim().startsWith("open")).length`, &open),
			chromedp.Evaluate(`document.querySelector("table.incidents tbody")?.innerText ?? ""`, &rows))
		if open >= len(injected) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
		b.run("reload the incidents", chromedp.Navigate(base+"/incidents"), chromedp.WaitVisible("table.incidents", chromedp.ByQuery))
	}
	if open < len(injected) {
		t.Errorf("%d open incidents listed, want at least %d:\n%s", open, len(injected), rows)
	}
	for _, inj := range injected {
		if !strings.Contains(rows, inj.Kind) {
			t.Errorf("the incident list lacks the %s attack:\n%s", inj.Kind, rows)
		}
	}
	b.screenshot("incidents")

	// The forbidden burst's incident: evidence, chart, then a silence of its key.
	b.run("filter", chromedp.Navigate(base+"/incidents?detector=forbidden_burst"), chromedp.WaitVisible("table.incidents", chromedp.ByQuery),
		chromedp.Click("table.incidents tbody tr td a", chromedp.ByQuery), chromedp.WaitVisible("form.silence", chromedp.ByQuery))
	var chartWidth int
	b.run("chart", chromedp.Poll(`document.querySelector("figure.chart img").complete && document.querySelector("figure.chart img").naturalWidth`, &chartWidth,
		chromedp.WithPollingTimeout(30*time.Second)))
	if chartWidth == 0 {
		t.Error("the request-rate chart did not load")
	}
	page := b.text()
	if !strings.Contains(page, "forbidden_count") || !strings.Contains(page, "Requests per minute") {
		t.Errorf("the incident page lacks its evidence or chart:\n%s", page)
	}
	b.screenshot("incident")
	b.run("silence the key", chromedp.SendKeys(`input[name="comment"]`, "known scanner, ticket SEC-42", chromedp.ByQuery),
		chromedp.Click(`form.silence button[type="submit"]`, chromedp.ByQuery), chromedp.WaitVisible("table.silences", chromedp.ByQuery))
	if s := b.text(); !strings.Contains(s, "known scanner, ticket SEC-42") || !strings.Contains(s, "Expire now") {
		t.Fatalf("the silence is not listed:\n%s", s)
	}
	b.screenshot("silences")

	// The same client bursts again: its alert is suppressed, Slack hears nothing.
	before := e.slack.Messages()
	silenced := e.metric(t, "gatewatch_alerting_alerts_total", "result", "silenced")
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, burstAgain(t, reqs, injected), nil, nil)
	e.waitMetric(t, p, silenced+1, 3*time.Minute, "gatewatch_alerting_alerts_total", "result", "silenced")
	// Other incidents may take new versions meanwhile (the new traffic moves event time
	// on), which Slack shows; of the forbidden burst, Slack must hear nothing new.
	n0, changes0 := aboutDetector(before, synth.AttackForbidden)
	if n, changes := aboutDetector(e.slack.Messages(), synth.AttackForbidden); n != n0 || changes != changes0 {
		t.Errorf("Slack heard of forbidden_burst while its key was silenced: %d messages (%d edits and replies), before %d (%d)", n, changes, n0, changes0)
	}

	// The page still shows the flash of the silence's creation: wait for the new one.
	b.run("expire", chromedp.Click(`table.silences form button[type="submit"]`, chromedp.ByQuery))
	b.waitFor("the expiry's flash", `document.querySelector("p.flash")?.textContent.includes("expired") === true`)
	if s := b.text(); !strings.Contains(s, "expired") || strings.Contains(s, "Expire now") {
		t.Errorf("the silence was not expired:\n%s", s)
	}
	b.screenshot("silence-expired")

	// A delivery parked by the broken webhook, sent again once it is fixed.
	b.run("receivers", chromedp.Navigate(base+"/receivers"), chromedp.WaitVisible("table.parked", chromedp.ByQuery))
	if s := b.text(); !strings.Contains(s, "400 Bad Request") {
		t.Errorf("the receivers page does not show why the deliveries parked:\n%s", s)
	}
	b.screenshot("receivers")
	hk.fixed.Store(true)
	b.run("re-send one", chromedp.Click(`table.parked form button[type="submit"]`, chromedp.ByQuery), chromedp.WaitVisible(`p.flash`, chromedp.ByQuery))
	deadline = time.Now().Add(time.Minute)
	for len(hk.bodies()) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(hk.bodies()); n != 1 {
		t.Errorf("the fixed webhook got %d requests after one re-send, want 1", n)
	}

	b.run("health", chromedp.Navigate(base+"/health"), chromedp.WaitVisible("main table", chromedp.ByQuery))
	if s := b.text(); !strings.Contains(s, "forbidden_burst") || !strings.Contains(s, "waf-logs") {
		t.Errorf("detector health lacks the detectors or the partitions:\n%s", s)
	}
	b.screenshot("health")

	// Slack's Acknowledge on a group message's incident, signed, replayed.
	checkSlackInteraction(t, e, base, posts)

	b.run("audit", chromedp.Navigate(base+"/audit"), chromedp.WaitVisible("table.audit", chromedp.ByQuery))
	audit := b.text()
	for _, want := range []string{"silence.create", "silence.expire", "delivery.requeue", "incident.ack", "slack:U0ANALYST"} {
		if !strings.Contains(audit, want) {
			t.Errorf("the audit log lacks %s:\n%s", want, audit)
		}
	}
	if strings.Count(audit, "incident.ack") != 1 {
		t.Errorf("a replayed Slack click was audited twice:\n%s", audit)
	}
	b.screenshot("audit")

	// Reading works without JavaScript: the pages are rendered on the server.
	var html string
	b.run("without JavaScript", emulation.SetScriptExecutionDisabled(true),
		chromedp.Navigate(base+"/incidents?state=all"), chromedp.WaitReady("table.incidents", chromedp.ByQuery),
		chromedp.OuterHTML("table.incidents", &html, chromedp.ByQuery))
	for _, inj := range injected {
		if !strings.Contains(html, inj.Kind) {
			t.Errorf("without JavaScript the incident list lacks the %s attack", inj.Kind)
		}
	}
	b.screenshot("incidents-no-js")
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
}

// aboutDetector counts the top-level Slack messages of detector's incidents, and the
// edits of those messages and the replies in their threads: what Slack heard of it.
func aboutDetector(ms []slacktest.Message, detector string) (n, changes int) {
	threads := map[string]bool{}
	for _, m := range ms {
		if m.ThreadTS == "" && strings.Contains(m.Text, detector) {
			n++
			changes += m.Edits
			threads[m.TS] = true
		}
	}
	for _, m := range ms {
		if m.ThreadTS != "" && threads[m.ThreadTS] {
			changes++
		}
	}
	return n, changes
}

// checkRefused: a request without the token is refused (401), and a state change with
// the token but without the CSRF token too (403).
func checkRefused(t *testing.T, base string) {
	t.Helper()
	get := func(path string, auth bool) int {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.Header.Set("Accept", "application/json")
		if auth {
			req.Header.Set("Authorization", "Bearer "+consoleToken)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/incidents", false); code != http.StatusUnauthorized {
		t.Errorf("GET /incidents without the token: %d, want 401", code)
	}
	if code := get("/incidents", true); code != http.StatusOK {
		t.Errorf("GET /incidents with the token: %d, want 200", code)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/receivers/siem-hook/requeue", strings.NewReader(url.Values{}.Encode()))
	req.Header.Set("Authorization", "Bearer "+consoleToken)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST without the CSRF token: %d, want 403", resp.StatusCode)
	}
}

// burstAgain returns the forbidden burst's requests again, from now on, among a few
// minutes of ordinary traffic that moves the watermark past them.
func burstAgain(t *testing.T, reqs []synth.Request, injected []synth.Injected) []synth.Request {
	t.Helper()
	var burst synth.Injected
	for _, inj := range injected {
		if inj.Kind == synth.AttackForbidden {
			burst = inj
		}
	}
	start := time.Now().Truncate(time.Second)
	shift := start.Add(time.Minute).Sub(burst.Start)
	bg, _, err := synth.Generate(synth.Config{Start: start, Duration: 5 * time.Minute, Rate: 5, Seed: 37})
	if err != nil {
		t.Fatal(err)
	}
	out := bg
	for i := range reqs {
		if attackOf(&reqs[i], []synth.Injected{burst}) == 0 {
			r := reqs[i]
			r.Time = r.Time.Add(shift)
			r.RequestID += "-again"
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b synth.Request) int { return a.Time.Compare(b.Time) })
	return out
}

// checkSlackInteraction clicks Acknowledge in the menu of an incident of a group
// message, as Slack sends it to the console's /slack/interactions: a wrongly signed
// request is refused; the signed one, sent twice, acknowledges once and the message
// shows who.
func checkSlackInteraction(t *testing.T, e *e2e, base string, posts []slacktest.Message) {
	t.Helper()
	msg := posts[0]
	id := regexp.MustCompile(`gw_inc:([0-9a-f]{32})`).FindStringSubmatch(string(msg.Blocks))
	if id == nil {
		t.Fatalf("the Slack message lists no incident:\n%s", msg.Blocks)
	}
	in := e.slack.NewInteraction(msg, slacktest.User{ID: "U0ANALYST", Name: "analyst"},
		slacktest.Action{ActionID: "gw_menu", BlockID: "gw_inc:" + id[1], Selected: "ack:" + id[1]})
	send := func(secret string) int {
		resp, err := in.Send(base+"/slack/interactions", secret, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := send("not-the-apps-signing-secret-0000"); code != http.StatusUnauthorized {
		t.Errorf("wrongly signed interaction: %d, want 401", code)
	}
	for range 2 {
		if code := send(signingSecret); code != http.StatusOK {
			t.Fatalf("signed interaction: %d, want 200", code)
		}
	}
	for _, m := range e.slack.Messages() {
		if m.TS == msg.TS && strings.Count(string(m.Blocks), "U0ANALYST") != 1 {
			t.Errorf("the group message should name who acknowledged, once:\n%s", m.Blocks)
		}
	}
}

// TestConsoleOffByDefault: without console.listen there is no console, whatever else
// the file says of it; the pipeline opens one only for a listen address.
func TestConsoleOffByDefault(t *testing.T) {
	for _, c := range []struct{ name, yaml string }{
		{"empty file", ""},
		{"empty console section", "console: {}\n"},
	} {
		cfg, err := loadConfig(c.name+".yaml", []byte(c.yaml))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if cfg.Console.Listen != "" {
			t.Errorf("%s: console.listen = %q, want none (off)", c.name, cfg.Console.Listen)
		}
	}
	_, err := loadConfig("token only.yaml", []byte("console: {token_file: /run/secrets/console-token, slack_signing_secret_file: /run/secrets/slack}\n"))
	if err == nil || !strings.Contains(err.Error(), "console.listen: must be set") {
		t.Errorf("console settings without listen: %v, want an error naming console.listen", err)
	}
}

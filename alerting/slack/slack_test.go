package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/detectors"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from current output")

const testReplay = "gatewatch replay --config gatewatch.yaml --kafka $BROKERS --topic $TOPIC --from {from} --to {to}"

// readAlerts returns the shared sample of realistic alerts, incidents with their versions.
func readAlerts(t testing.TB) []detectors.Alert { return alertingtest.Sample(t) }

// writeSecret writes a secret to a file the way an operator would (with a newline).
func writeSecret(t testing.TB, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type env struct {
	srv     *slacktest.Server
	cfg     alerting.SlackConfig
	threads string // the thread file's path
	r       *Receiver
}

// testNow is the clock of the test server and the receivers: Slack's timestamps, and
// so the golden files, do not depend on the day the tests run; a message posted at it
// gets ts 1700000000.000001, the next one more microsecond each.
func testNow() time.Time { return time.Unix(1_700_000_000, 1000) }

// newEnv starts a Slack test server and a bot-token receiver for it.
func newEnv(t *testing.T) *env {
	t.Helper()
	srv := slacktest.New(t, slacktest.Options{Now: testNow})
	e := &env{
		srv:     srv,
		cfg:     alerting.SlackConfig{TokenFile: writeSecret(t, slacktest.DefaultToken), Channel: "#soc-alerts", APIURL: srv.URL},
		threads: filepath.Join(t.TempDir(), "slack-threads.json"),
	}
	e.r = e.receiver(t)
	return e
}

// receiver builds a receiver with a thread file freshly opened from disk, as a restart
// would.
func (e *env) receiver(t *testing.T) *Receiver {
	t.Helper()
	return e.receiverWith(t, func(f *ThreadFile) Threads { return f })
}

// receiverWith builds a receiver whose Threads is wrap of the thread file freshly
// opened from disk.
func (e *env) receiverWith(t *testing.T, wrap func(*ThreadFile) Threads) *Receiver {
	t.Helper()
	th, err := OpenThreadFile(e.threads, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { th.Close() })
	r, err := New("soc-slack", e.cfg, Options{Threads: wrap(th), ReplayCommand: testReplay, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func notify(t *testing.T, r *Receiver, alerts ...detectors.Alert) {
	t.Helper()
	if retry, err := r.Notify(context.Background(), alerts); err != nil {
		t.Fatalf("Notify = (%v, %v), want success", retry, err)
	}
}

// goldenRequest is a recorded Web API call as the golden files show it: the parameters
// that make the message, with the blocks as indented JSON for review.
type goldenRequest struct {
	Method   string          `json:"method"`
	Channel  string          `json:"channel"`
	TS       string          `json:"ts,omitempty"`
	ThreadTS string          `json:"thread_ts,omitempty"`
	Text     string          `json:"text"`
	Blocks   json.RawMessage `json:"blocks"`
	Metadata json.RawMessage `json:"metadata,omitempty"` // on a top-level post
}

func goldenJSON(t *testing.T, reqs []slacktest.Request) []byte {
	t.Helper()
	out := make([]goldenRequest, 0, len(reqs))
	for _, r := range reqs {
		g := goldenRequest{Method: r.Method, Channel: r.Form.Get("channel"), TS: r.Form.Get("ts"),
			ThreadTS: r.Form.Get("thread_ts"), Text: r.Form.Get("text"), Blocks: json.RawMessage(r.Form.Get("blocks"))}
		if m := r.Form.Get("metadata"); m != "" {
			g.Metadata = json.RawMessage(m)
		}
		out = append(out, g)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	golden := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run Golden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("payload differs from %s (run with -update and review the diff):\n%s", golden, got)
	}
}

// TestGoldenBlocks posts every version of each detector's incident through slack-go to
// the test server and compares the exact requests (chat.postMessage for the first
// version, chat.update plus a threaded chat.postMessage for each later one) with
// testdata/<detector>.golden.
func TestGoldenBlocks(t *testing.T) {
	byDetector := map[string][]detectors.Alert{}
	for _, a := range readAlerts(t) {
		byDetector[a.Detector] = append(byDetector[a.Detector], a)
	}
	for _, det := range detectors.Names {
		t.Run(det, func(t *testing.T) {
			alerts := byDetector[det]
			if len(alerts) == 0 {
				t.Fatalf("testdata/alerts.jsonl has no %s alert", det)
			}
			e := newEnv(t)
			for _, a := range alerts {
				notify(t, e.r, a)
			}
			reqs := e.srv.Requests()
			for _, r := range reqs {
				if strings.Contains(string(r.Form.Get("blocks")), slacktest.DefaultToken) {
					t.Errorf("the token is in the blocks of %s", r.Method)
				}
			}
			checkGolden(t, det+".golden", goldenJSON(t, reqs))
			msgs := e.srv.Messages()
			if want := len(alerts); len(msgs) != want {
				t.Fatalf("channel holds %d messages, want %d (1 parent + %d replies)", len(msgs), want, want-1)
			}
			for _, m := range msgs[1:] {
				if m.ThreadTS != msgs[0].TS {
					t.Errorf("update %s is not in the thread of %s (thread_ts %q)", m.TS, msgs[0].TS, m.ThreadTS)
				}
			}
			if want := len(alerts) - 1; msgs[0].Edits != want {
				t.Errorf("parent was edited %d times, want %d", msgs[0].Edits, want)
			}
		})
	}
}

func TestThreadSurvivesRestart(t *testing.T) {
	alerts := versionsOf(t, detectors.TokenReuse)
	e := newEnv(t)
	notify(t, e.r, alerts[0])

	// A new process: a new receiver and a thread file read back from disk.
	r2 := e.receiver(t)
	notify(t, r2, alerts[1])
	notify(t, r2, alerts[0], alerts[1]) // the outbox resends both: nothing new to post

	msgs := e.srv.Messages()
	if len(msgs) != 2 {
		t.Fatalf("channel holds %d messages, want the parent and one reply: %+v", len(msgs), msgs)
	}
	if msgs[1].ThreadTS != msgs[0].TS || msgs[0].Edits != 1 {
		t.Errorf("after restart: reply thread_ts %q, parent ts %q edited %d times; want the reply in the parent's thread and one edit",
			msgs[1].ThreadTS, msgs[0].TS, msgs[0].Edits)
	}
}

// versionsOf returns the versions of the incident testdata holds for detector.
func versionsOf(t *testing.T, detector string) []detectors.Alert {
	t.Helper()
	var out []detectors.Alert
	for _, a := range readAlerts(t) {
		if a.Detector == detector {
			out = append(out, a)
		}
	}
	if len(out) < 2 {
		t.Fatalf("testdata has %d versions of a %s incident, want at least 2", len(out), detector)
	}
	return out
}

// TestNeverPostsTwice: a failure in the middle of a batch returns retry, and the
// outbox's retry of the whole batch posts only what was not posted.
func TestNeverPostsTwice(t *testing.T) {
	all := readAlerts(t)
	e := newEnv(t)
	first := []detectors.Alert{all[0], all[1], all[3]} // three incidents
	e.srv.FailNext("chat.postMessage", slacktest.Fault{}, slacktest.Fault{Error: "internal_error"})
	retry, err := e.r.Notify(context.Background(), first)
	if err == nil || !retry {
		t.Fatalf("Notify with internal_error on the second post = (%v, %v), want (true, error)", retry, err)
	}
	notify(t, e.r, first...)
	notify(t, e.r, first...)
	parents := 0
	for _, m := range e.srv.Messages() {
		if m.ThreadTS == "" {
			parents++
		}
	}
	if parents != 3 {
		t.Errorf("channel holds %d incident messages after a failed and two full deliveries, want 3", parents)
	}
}

// TestReminders: a reminder (same version, reminder label) is a reply broadcast to the
// channel, once per reminder number; an older version or a repeated reminder posts
// nothing.
func TestReminders(t *testing.T) {
	alerts := versionsOf(t, detectors.ForbiddenBurst)
	e := newEnv(t)
	notify(t, e.r, alerts[0], alerts[1])
	reminder := func(a detectors.Alert, n string) detectors.Alert {
		a.Labels = map[string]string{"key_type": a.Labels["key_type"], alerting.ReminderLabel: n}
		return a
	}
	notify(t, e.r, reminder(alerts[1], "1"))
	notify(t, e.r, reminder(alerts[1], "1"), reminder(alerts[0], "2")) // already posted; an older version
	r2 := e.receiver(t)                                                // a restart in between
	notify(t, r2, reminder(alerts[1], "2"))

	msgs := e.srv.Messages()
	if len(msgs) != 4 {
		t.Fatalf("channel holds %d messages, want the parent, one update and two reminders", len(msgs))
	}
	posts := e.srv.Calls("chat.postMessage")
	for i, want := range []string{"", "", "true", "true"} {
		if got := posts[i].Form.Get("reply_broadcast"); got != want {
			t.Errorf("post %d: reply_broadcast = %q, want %q", i, got, want)
		}
	}
	for i, n := range []string{"1", "2"} {
		m := msgs[2+i]
		if m.ThreadTS != msgs[0].TS || !strings.HasPrefix(m.Text, "Reminder "+n+": ") {
			t.Errorf("reminder %s = %q in thread %q, want it in thread %q", n, m.Text, m.ThreadTS, msgs[0].TS)
		}
	}
}

func TestLostThreadPostsAnew(t *testing.T) {
	alerts := versionsOf(t, detectors.ForbiddenBurst)
	e := newEnv(t)
	notify(t, e.r, alerts[0])
	e.srv.FailNext("chat.update", slacktest.Fault{Error: "message_not_found"})
	notify(t, e.r, alerts[1])
	msgs := e.srv.Messages()
	if len(msgs) != 2 || msgs[1].ThreadTS != "" {
		t.Fatalf("after message_not_found: %+v, want a second top-level message", msgs)
	}
	// The new message is now the incident's thread.
	notify(t, e.r, alerts[1]) // already posted: nothing
	if n := len(e.srv.Calls("chat.postMessage")); n != 2 {
		t.Errorf("%d chat.postMessage calls, want 2", n)
	}
}

func TestErrors(t *testing.T) {
	a := readAlerts(t)[0]
	for _, tc := range []struct {
		name      string
		fault     slacktest.Fault
		wantRetry bool
		wantAfter time.Duration // > 0: a RetryAfterError with this wait
		wantText  string
	}{
		{"ratelimited with Retry-After", slacktest.Fault{Error: "ratelimited", RetryAfter: 7}, true, 7 * time.Second, "ratelimited"},
		{"ratelimited without Retry-After", slacktest.Fault{Error: "ratelimited"}, true, time.Second, "ratelimited"},
		{"HTTP 429", slacktest.Fault{Status: http.StatusTooManyRequests, RetryAfter: 3}, true, 3 * time.Second, "rate limit"},
		{"channel_not_found", slacktest.Fault{Error: "channel_not_found"}, false, 0, "channel_not_found"},
		{"invalid_auth", slacktest.Fault{Error: "invalid_auth"}, false, 0, "invalid_auth"},
		{"not_in_channel", slacktest.Fault{Error: "not_in_channel"}, false, 0, "not_in_channel"},
		{"account_inactive", slacktest.Fault{Error: "account_inactive"}, false, 0, "account_inactive"},
		{"is_archived", slacktest.Fault{Error: "is_archived"}, false, 0, "is_archived"},
		{"internal_error", slacktest.Fault{Error: "internal_error"}, true, 0, "internal_error"},
		{"HTTP 500", slacktest.Fault{Status: http.StatusInternalServerError, Error: "<html>oops</html>"}, true, 0, "500"},
		{"HTTP 503", slacktest.Fault{Status: http.StatusServiceUnavailable}, true, 0, "503"},
		{"HTTP 404", slacktest.Fault{Status: http.StatusNotFound}, false, 0, "404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.srv.FailNext("chat.postMessage", tc.fault)
			retry, err := e.r.Notify(context.Background(), []detectors.Alert{a})
			checkErr(t, retry, err, tc.wantRetry, tc.wantAfter, tc.wantText, slacktest.DefaultToken)
			// The alert was not posted, so the next attempt posts it.
			notify(t, e.r, a)
			if n := len(e.srv.Messages()); n != 1 {
				t.Errorf("after the retry the channel holds %d messages, want 1", n)
			}
		})
	}
}

func checkErr(t *testing.T, retry bool, err error, wantRetry bool, wantAfter time.Duration, wantText, secret string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Notify = (%v, nil), want an error", retry)
	}
	if retry != wantRetry {
		t.Errorf("Notify retry = %v, want %v (err: %v)", retry, wantRetry, err)
	}
	var ra *alerting.RetryAfterError
	switch {
	case wantAfter > 0 && !errors.As(err, &ra):
		t.Errorf("Notify err = %v, want an alerting.RetryAfterError", err)
	case wantAfter > 0 && ra.After != wantAfter:
		t.Errorf("RetryAfterError.After = %s, want %s", ra.After, wantAfter)
	case wantAfter == 0 && errors.As(err, &ra):
		t.Errorf("Notify err = %v, want no RetryAfterError", err)
	}
	if !strings.Contains(err.Error(), wantText) {
		t.Errorf("Notify err = %q, want it to mention %q", err, wantText)
	}
	if secret != "" && strings.Contains(err.Error(), secret) {
		t.Errorf("Notify err = %q carries the secret", err)
	}
}

func TestWrongTokenIsFinal(t *testing.T) {
	e := newEnv(t)
	e.cfg.TokenFile = writeSecret(t, "xoxb-9999999999-wrong-token-value")
	r := e.receiver(t)
	retry, err := r.Notify(context.Background(), readAlerts(t)[:1])
	checkErr(t, retry, err, false, 0, "invalid_auth", "xoxb-9999999999-wrong-token-value")
	if err := r.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "invalid_auth") {
		t.Errorf("Check with a wrong token = %v, want invalid_auth", err)
	}
	if err := e.r.Check(context.Background()); err != nil {
		t.Errorf("Check with the right token = %v", err)
	}
}

// TestUnreachable: a Slack that cannot be reached (connection refused) or a deadline
// that passes is worth retrying.
func TestUnreachable(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e.cfg.APIURL = "http://" + addr + "/api/"
	r := e.receiver(t)
	retry, err := r.Notify(context.Background(), readAlerts(t)[:1])
	checkErr(t, retry, err, true, 0, "connection refused", slacktest.DefaultToken)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	retry, err = e.r.Notify(ctx, readAlerts(t)[:1])
	checkErr(t, retry, err, true, 0, "context canceled", slacktest.DefaultToken)
}

func TestWebhook(t *testing.T) {
	srv := slacktest.New(t, slacktest.Options{})
	cfg := alerting.SlackConfig{WebhookURLFile: writeSecret(t, srv.WebhookURL)}
	th, err := OpenThreadFile(filepath.Join(t.TempDir(), "threads.json"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { th.Close() })
	r, err := New("hook", cfg, Options{Threads: th, ReplayCommand: testReplay})
	if err != nil {
		t.Fatal(err)
	}
	alerts := readAlerts(t)
	notify(t, r, alerts...)
	notify(t, r, alerts...) // every version is posted once
	if got, want := len(srv.Messages()), len(alerts); got != want {
		t.Fatalf("webhook posted %d messages for %d alert versions, want one each", got, want)
	}
	rem := alerts[len(alerts)-1]
	rem.Labels = map[string]string{alerting.ReminderLabel: "1"}
	notify(t, r, rem, rem)
	msgs := srv.Messages()
	if got := msgs[len(msgs)-1].Text; len(msgs) != len(alerts)+1 || !strings.HasPrefix(got, "Reminder 1: ") {
		t.Fatalf("after a reminder sent twice the webhook holds %d messages, the last %q; want one more, a reminder", len(msgs), got)
	}
	calls := srv.Calls(slacktest.WebhookMethod)
	var body struct {
		Text   string            `json:"text"`
		Blocks []json.RawMessage `json:"blocks"`
	}
	if err := json.Unmarshal(calls[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	want := parentMessage(&alerts[0], testReplay, nil)
	if body.Text != want.text || len(body.Blocks) != len(want.blocks) {
		t.Errorf("webhook body text %q with %d blocks, want %q with %d", body.Text, len(body.Blocks), want.text, len(want.blocks))
	}

	secretPart := strings.TrimPrefix(srv.WebhookURL, "http://")
	for _, tc := range []struct {
		name      string
		fault     slacktest.Fault
		wantRetry bool
		wantAfter time.Duration
		wantText  string
	}{
		{"invalid_payload", slacktest.Fault{Error: "invalid_payload"}, false, 0, "400"},
		{"no_service", slacktest.Fault{Status: http.StatusNotFound, Error: "no_service"}, false, 0, "404"},
		{"channel_is_archived", slacktest.Fault{Status: http.StatusGone, Error: "channel_is_archived"}, false, 0, "410"},
		{"HTTP 429", slacktest.Fault{Status: http.StatusTooManyRequests, RetryAfter: 30}, true, 30 * time.Second, "rate limit"},
		{"HTTP 500", slacktest.Fault{Status: http.StatusInternalServerError}, true, 0, "500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.FailNext(slacktest.WebhookMethod, tc.fault)
			a := alerts[0]
			a.LastSeen = a.LastSeen.Add(time.Hour * time.Duration(len(srv.Requests()))) // a new version
			retry, err := r.Notify(context.Background(), []detectors.Alert{a})
			checkErr(t, retry, err, tc.wantRetry, tc.wantAfter, tc.wantText, secretPart)
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + ln.Addr().String() + "/services/T0/B0/deadbeefdeadbeefsecret"
		ln.Close()
		r, err := New("hook", alerting.SlackConfig{WebhookURLFile: writeSecret(t, dead)}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		retry, err := r.Notify(context.Background(), alerts[:1])
		checkErr(t, retry, err, true, 0, "connection refused", "deadbeefdeadbeefsecret")
	})
}

func TestNewErrorsNameNoSecret(t *testing.T) {
	const bad = "not a url but a secret-ish value"
	_, err := New("hook", alerting.SlackConfig{WebhookURLFile: writeSecret(t, bad)}, Options{})
	if err == nil || strings.Contains(err.Error(), bad) {
		t.Errorf("New with a bad webhook URL = %v, want an error that does not quote it", err)
	}
	_, err = New("bot", alerting.SlackConfig{TokenFile: writeSecret(t, "xoxb-1"), Channel: "#x"}, Options{})
	if err == nil || !strings.Contains(err.Error(), "Threads") {
		t.Errorf("New in bot-token mode without Threads = %v, want an error naming Options.Threads", err)
	}
	_, err = New("bot", alerting.SlackConfig{TokenEnv: "GATEWATCH_TEST_UNSET_SLACK_TOKEN", Channel: "#x"}, Options{})
	if err == nil {
		t.Error("New with an unset token variable succeeded")
	}
}

// TestHostileEvidence: request paths, keys and summaries come from attacker-controlled
// requests. Slack must show them as text: no mention, no link, no broken code span, and
// oversized evidence is cut to fit Slack's limits rather than rejected.
func TestHostileEvidence(t *testing.T) {
	a := readAlerts(t)[3]
	a.Summary = "Client key x received <!channel> responses <https://evil.example|runbook> & more " + strings.Repeat("very long ", 500)
	a.Key = "key`with`backquotes<@U123>"
	for i := range 300 {
		a.Evidence.ClientIPs = append(a.Evidence.ClientIPs, fmt.Sprintf("10.0.%d.%d", i/256, i%256))
		a.Evidence.SamplePaths = append(a.Evidence.SamplePaths, "/v1/<!here>/"+strings.Repeat("a", 3000))
	}
	a.Labels = map[string]string{"team": "<!subteam^S123>"}
	e := newEnv(t)
	notify(t, e.r, a) // the test server rejects blocks over Slack's limits
	form := e.srv.Calls("chat.postMessage")[0].Form
	var blocks any // decoded, since encoding/json writes < as \u003c
	if err := json.Unmarshal([]byte(form.Get("blocks")), &blocks); err != nil {
		t.Fatal(err)
	}
	for field, v := range map[string]string{"text": form.Get("text"), "blocks": fmt.Sprint(blocks)} {
		for _, bad := range []string{"<!channel>", "<https://evil.example|runbook>", "<@U123>", "<!here>", "<!subteam"} {
			if strings.Contains(v, bad) {
				t.Errorf("%s carries %q unescaped", field, bad)
			}
		}
	}
	if !strings.Contains(fmt.Sprint(blocks), "&lt;!channel&gt;") {
		t.Errorf("blocks do not show the escaped mention")
	}
}

func TestReplayCommand(t *testing.T) {
	a := detectors.Alert{
		FirstSeen: time.Date(2026, 11, 2, 8, 19, 25, 0, time.UTC),
		LastSeen:  time.Date(2026, 11, 2, 8, 20, 30, 500_000_000, time.UTC),
	}
	got := ReplayCommand("replay --from {from} --to {to}", &a)
	if want := "replay --from 2026-11-02T08:04:25Z --to 2026-11-02T08:35:31Z"; got != want {
		t.Errorf("ReplayCommand = %q, want %q", got, want)
	}
	if got := ReplayCommand("", &a); got != "" {
		t.Errorf("ReplayCommand of an empty command = %q, want empty", got)
	}
}

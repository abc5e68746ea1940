package slack

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/config"
)

var gt0 = time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)

func stormAlerts(n int) []detectors.Alert {
	out := make([]detectors.Alert, n)
	for i := range out {
		first := gt0.Add(time.Duration(i) * time.Second)
		out[i] = alertingtest.NewAlert(detectors.ForbiddenBurst, fmt.Sprintf("key-%04d", i), first, first.Add(time.Minute))
	}
	return out
}

// blocksText is a message's blocks as JSON with <, > and & as they are (slack-go's
// encoder escapes them).
func blocksText(m slacktest.Message) string {
	return strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&").Replace(string(m.Blocks))
}

func notifyGroup(t *testing.T, r *Receiver, g alerting.Group) {
	t.Helper()
	if retry, err := r.NotifyGroup(context.Background(), g); err != nil {
		t.Fatalf("NotifyGroup = (%v, %v), want success", retry, err)
	}
}

// TestGroupMessage: a storm is one message listing its incidents, rewritten in place as
// more join, with a reply in its thread per notification; a retried notification posts
// nothing new, and a restart finds the group's message again.
func TestGroupMessage(t *testing.T) {
	e := newEnv(t)
	alerts := stormAlerts(120)
	g := alerting.Group{Key: "g1", Labels: map[string]string{"detector": detectors.ForbiddenBurst}}
	g.Alerts = alerts[:1]
	notifyGroup(t, e.r, g)
	g.Alerts = alerts[1:60]
	notifyGroup(t, e.r, g)
	notifyGroup(t, e.r, g) // a retry of a notification Slack took: nothing new
	e.r = e.receiver(t)    // a restart
	g.Alerts = alerts[60:]
	notifyGroup(t, e.r, g)

	msgs := e.srv.Messages()
	if len(msgs) != 3 || msgs[0].ThreadTS != "" || msgs[1].ThreadTS != msgs[0].TS || msgs[2].ThreadTS != msgs[0].TS {
		t.Fatalf("messages = %+v, want one group message and two replies in its thread", msgs)
	}
	if msgs[0].Edits != 2 {
		t.Errorf("the group message was edited %d times, want 2", msgs[0].Edits)
	}
	parent := string(msgs[0].Blocks)
	if !strings.Contains(msgs[0].Text, "120 incidents") || !strings.Contains(parent, "+80 more incidents") {
		t.Errorf("group message text %q does not count the 120 incidents and the 80 not listed", msgs[0].Text)
	}
	if !strings.Contains(msgs[2].Text, "60 incidents joined") {
		t.Errorf("second reply %q, want it to say 60 incidents joined", msgs[2].Text)
	}
	var blocks []json.RawMessage
	if err := json.Unmarshal(msgs[0].Blocks, &blocks); err != nil || len(blocks) > 50 {
		t.Errorf("the group message has %d blocks (%v), Slack takes at most 50", len(blocks), err)
	}
}

func TestGroupMessageGolden(t *testing.T) {
	e := newEnv(t)
	alerts := readAlerts(t)
	acks, err := alerting.OpenAcks(context.Background(), alertingtest.NewAnalystStore(), func() time.Time { return gt0 })
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := acks.Acknowledge(context.Background(), alerts[0].ID, "slack:U0ALICE", "slack"); err != nil {
		t.Fatal(err)
	}
	notifyGroup(t, e.r, alerting.Group{Key: "8c1e5f0a9d2b7c3e4f5a6b7c", Labels: map[string]string{"labels.key_type": "client_key"}, Alerts: alerts, Acks: acks})
	checkGolden(t, "group.golden", goldenJSON(t, e.srv.Requests()))
}

// interactionEnv is a receiver, its Slack, and the Interactions endpoint.
type interactionEnv struct {
	*env
	acts     *fakeActions
	endpoint string
	secret   string
}

// fakeActions does what the console does, over Acks and Silences in memory.
type fakeActions struct {
	alerts   map[string]detectors.Alert
	acks     *alerting.Acks
	silences *alerting.Silences
}

func (f *fakeActions) Acknowledge(ctx context.Context, id, user string) (alerting.Ack, error) {
	a, _, err := f.acks.Acknowledge(ctx, id, user, "slack")
	return a, err
}

func (f *fakeActions) SilenceKey(ctx context.Context, id string, d time.Duration, user, rid string) (alerting.SilenceRecord, error) {
	a, ok := f.alerts[id]
	if !ok {
		return alerting.SilenceRecord{}, fmt.Errorf("no alert %s", id)
	}
	return f.silences.Create(ctx, alerting.SilenceRecord{ID: rid, Match: alerting.Matcher{Key: []string{a.Key}},
		Expires: time.Now().Add(d), Comment: "from Slack", CreatedBy: user})
}

func newInteractionEnv(t *testing.T, alerts []detectors.Alert) *interactionEnv {
	t.Helper()
	e := &interactionEnv{env: newEnv(t), secret: "8f742231b10e8888abcd99yyyzzz85a5"}
	st := alertingtest.NewAnalystStore()
	acks, err := alerting.OpenAcks(context.Background(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	sil, err := alerting.OpenSilences(context.Background(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.acts = &fakeActions{alerts: map[string]detectors.Alert{}, acks: acks, silences: sil}
	for _, a := range alerts {
		e.acts.alerts[a.ID] = a
	}
	h, err := NewInteractions(InteractionOptions{SigningSecret: config.Secret(e.secret), Actions: e.acts})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e.endpoint = srv.URL
	return e
}

func (e *interactionEnv) send(t *testing.T, in slacktest.Interaction, secret string) int {
	t.Helper()
	resp, err := in.Send(e.endpoint, secret, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestInteractions: Acknowledge and Silence key 1h, clicked on an incident message,
// signed with the app's signing secret: each is done once however often the request
// comes, and the message shows who did it. A request signed with another secret, or
// not at all, is refused and changes nothing.
func TestInteractions(t *testing.T) {
	alerts := stormAlerts(1)
	e := newInteractionEnv(t, alerts)
	notifyGroup(t, e.r, alerting.Group{Alerts: alerts})
	msg := e.srv.Messages()[0]
	alice := slacktest.User{ID: "U0ALICE", Name: "alice"}

	ack := e.srv.NewInteraction(msg, alice, slacktest.Action{ActionID: actionAck, BlockID: "actions", Value: alerts[0].ID})
	if code := e.send(t, ack, "not-the-signing-secret-000000000"); code != http.StatusUnauthorized {
		t.Errorf("wrongly signed: %d, want 401", code)
	}
	if _, ok := e.acts.acks.Ack(alerts[0].ID); ok {
		t.Fatal("a wrongly signed request acknowledged the incident")
	}
	resp, err := http.Post(e.endpoint, "application/x-www-form-urlencoded", strings.NewReader(string(ack.Body)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unsigned: %d, want 401", resp.StatusCode)
	}
	// A request captured and sent again later: signed right, but with its old time.
	stale, err := ack.Send(e.endpoint, e.secret, time.Now().Add(-10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	stale.Body.Close()
	if stale.StatusCode != http.StatusUnauthorized {
		t.Errorf("signed ten minutes ago: %d, want 401", stale.StatusCode)
	}
	if _, ok := e.acts.acks.Ack(alerts[0].ID); ok {
		t.Fatal("a stale request acknowledged the incident")
	}
	for range 2 { // replayed: the same click twice
		if code := e.send(t, ack, e.secret); code != http.StatusOK {
			t.Fatalf("acknowledge: %d, want 200", code)
		}
	}
	if a, ok := e.acts.acks.Ack(alerts[0].ID); !ok || a.By != "slack:U0ALICE" {
		t.Errorf("Ack = %+v, %v; want acknowledged by slack:U0ALICE", a, ok)
	}
	msg = e.srv.Messages()[0]
	if !strings.Contains(blocksText(msg), "Acknowledged by <@U0ALICE>") || strings.Contains(blocksText(msg), `"gw_ack"`) {
		t.Errorf("after the acknowledgement the message does not show who, or still offers Acknowledge:\n%s", msg.Blocks)
	}
	if n := strings.Count(blocksText(msg), "Acknowledged by"); n != 1 {
		t.Errorf("the acknowledgement shows %d times after a replay, want once", n)
	}

	sil := e.srv.NewInteraction(msg, alice, slacktest.Action{ActionID: actionSilence1h, BlockID: "actions", Value: alerts[0].ID})
	for range 2 {
		if code := e.send(t, sil, e.secret); code != http.StatusOK {
			t.Fatalf("silence: %d, want 200", code)
		}
	}
	list := e.acts.silences.List()
	if len(list) != 1 || list[0].CreatedBy != "slack:U0ALICE" || list[0].Match.Key[0] != alerts[0].Key {
		t.Fatalf("silences after two deliveries of one click: %+v, want one for the key by slack:U0ALICE", list)
	}
	if d := list[0].Expires.Sub(list[0].Created); d.Round(time.Minute) != time.Hour {
		t.Errorf("silence lasts %s, want 1h", d)
	}
	if m := e.srv.Messages()[0]; !strings.Contains(blocksText(m), "silenced until") || strings.Count(blocksText(m), "silenced until") != 1 {
		t.Errorf("the message does not show the silence once:\n%s", m.Blocks)
	}

	// A later version of the incident rewrites the message: it still shows who
	// acknowledged it, from the acknowledgements the Router hands over.
	later := alerts[0]
	later.LastSeen = later.LastSeen.Add(time.Minute)
	notifyGroup(t, e.r, alerting.Group{Alerts: []detectors.Alert{later}, Acks: e.acts.acks})
	if m := e.srv.Messages()[0]; !strings.Contains(blocksText(m), "Acknowledged by <@U0ALICE>") || strings.Contains(blocksText(m), `"gw_ack"`) {
		t.Errorf("a later version lost the acknowledgement:\n%s", m.Blocks)
	}
}

// TestGroupInteractions: the menu of an incident in a group message acknowledges that
// incident alone, and the message's line for it says who.
func TestGroupInteractions(t *testing.T) {
	alerts := stormAlerts(3)
	e := newInteractionEnv(t, alerts)
	notifyGroup(t, e.r, alerting.Group{Key: "g1", Labels: map[string]string{"detector": "forbidden_burst"}, Alerts: alerts})
	msg := e.srv.Messages()[0]
	bob := slacktest.User{ID: "U0BOB", Name: "bob"}
	in := e.srv.NewInteraction(msg, bob, slacktest.Action{ActionID: actionMenu, BlockID: memberBlockID + alerts[1].ID, Selected: "ack:" + alerts[1].ID})
	for range 2 {
		if code := e.send(t, in, e.secret); code != http.StatusOK {
			t.Fatalf("menu: %d", code)
		}
	}
	for i, a := range alerts {
		if _, ok := e.acts.acks.Ack(a.ID); ok != (i == 1) {
			t.Errorf("incident %d acknowledged = %v, want %v", i, ok, i == 1)
		}
	}
	blocks := blocksText(e.srv.Messages()[0])
	if strings.Count(blocks, "Acknowledged by <@U0BOB>") != 1 || strings.Count(blocks, `"ack:`) != 2 {
		t.Errorf("the group message should show bob's acknowledgement once and offer Acknowledge for the two others:\n%s", blocks)
	}
}

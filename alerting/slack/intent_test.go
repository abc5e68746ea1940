package slack

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/detectors"
)

// killedAfterPost is the thread state of a process killed right after Slack took a
// top-level post: the intent written before the post is on disk, the thread that
// would have followed it never is.
type killedAfterPost struct{ *ThreadFile }

func (k killedAfterPost) Put(id string, th Thread) error {
	if th.TS != "" {
		return errors.New("killed before the thread was recorded")
	}
	return k.ThreadFile.Put(id, th)
}

// killedBeforePost is a process killed between the intent and the post: the intent is
// on disk, the post never left.
type killedBeforePost struct{ *ThreadFile }

func (k killedBeforePost) Put(id string, th Thread) error {
	if err := k.ThreadFile.Put(id, th); err != nil {
		return err
	}
	return errors.New("killed before the post")
}

// crash delivers alerts through a receiver whose Threads is wrap of the thread file:
// the delivery must fail, retryably, as the outbox then sees it (pending).
func (e *env) crash(t *testing.T, wrap func(*ThreadFile) Threads, alerts ...detectors.Alert) {
	t.Helper()
	r := e.receiverWith(t, wrap)
	if retry, err := r.Notify(context.Background(), alerts); err == nil || !retry {
		t.Fatalf("Notify through a crashing thread state = (%v, %v), want a retryable error", retry, err)
	}
}

// incidentMessages returns the top-level messages whose metadata names alert id.
func incidentMessages(t *testing.T, srv *slacktest.Server, id string) []slacktest.Message {
	t.Helper()
	var out []slacktest.Message
	for _, m := range srv.Messages() {
		if m.ThreadTS != "" || m.Metadata == nil {
			continue
		}
		var md struct {
			EventType    string            `json:"event_type"`
			EventPayload map[string]string `json:"event_payload"`
		}
		if err := json.Unmarshal(m.Metadata, &md); err != nil {
			t.Fatalf("message %s metadata %s: %v", m.TS, m.Metadata, err)
		}
		if md.EventType == incidentEvent && md.EventPayload[incidentField] == id {
			out = append(out, m)
		}
	}
	return out
}

// replies returns the replies in the thread of ts.
func replies(srv *slacktest.Server, ts string) []slacktest.Message {
	var out []slacktest.Message
	for _, m := range srv.Messages() {
		if m.ThreadTS == ts {
			out = append(out, m)
		}
	}
	return out
}

// TestPostFoundAfterCrash: a first version reached Slack but its thread was never
// recorded (killed in between); the redelivery finds the message by its metadata in
// the channel history and goes on in it: one top-level message per incident, updated,
// never posted twice.
func TestPostFoundAfterCrash(t *testing.T) {
	v := versionsOf(t, detectors.TokenReuse)
	others := stormAlerts(250)
	for _, tc := range []struct {
		name       string
		channel    string            // "": #soc-alerts
		before     []detectors.Alert // other incidents posted after the crash, before the redelivery
		redeliver  []detectors.Alert
		wantEdits  int
		wantReply  int
		wantLists  int // conversations.list calls: the channel's id from its name
		minHistory int // conversations.history calls
	}{
		{name: "same version", redeliver: v[:1], wantLists: 1, minHistory: 1},
		{name: "later version", redeliver: v[:2], wantEdits: 1, wantReply: 1, wantLists: 1, minHistory: 1},
		{name: "reminder of the version posted", redeliver: []detectors.Alert{withReminder(v[0], "1")}, wantReply: 1, wantLists: 1, minHistory: 1},
		{name: "channel given by id", channel: "C0SOCALERTS", redeliver: v[:2], wantEdits: 1, wantReply: 1, minHistory: 1},
		// 250 newer messages: the incident's is on the second page of history.
		{name: "behind a page of newer posts", before: others, redeliver: v[1:2], wantEdits: 1, wantReply: 1, wantLists: 1, minHistory: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.channel != "" {
				e.cfg.Channel = tc.channel
			}
			e.crash(t, func(f *ThreadFile) Threads { return killedAfterPost{f} }, v[0])
			r := e.receiver(t) // the restart
			if len(tc.before) > 0 {
				notify(t, r, tc.before...)
				r = e.receiver(t) // and another: the channel id is not known from a post
			}
			notify(t, r, tc.redeliver...)
			notify(t, r, tc.redeliver...) // the outbox resends: nothing new

			msgs := incidentMessages(t, e.srv, v[0].ID)
			if len(msgs) != 1 {
				t.Fatalf("the incident has %d top-level messages, want 1: %+v", len(msgs), msgs)
			}
			if msgs[0].Edits != tc.wantEdits {
				t.Errorf("its message was edited %d times, want %d", msgs[0].Edits, tc.wantEdits)
			}
			if n := len(replies(e.srv, msgs[0].TS)); n != tc.wantReply {
				t.Errorf("its thread holds %d replies, want %d", n, tc.wantReply)
			}
			if n := len(e.srv.Calls("conversations.list")); n != tc.wantLists {
				t.Errorf("%d conversations.list calls, want %d", n, tc.wantLists)
			}
			if n := len(e.srv.Calls("conversations.history")); n < tc.minHistory || n > maxLookupPages {
				t.Errorf("%d conversations.history calls, want from %d to %d", n, tc.minHistory, maxLookupPages)
			}
			for _, c := range e.srv.Calls("conversations.history") {
				if c.Form.Get("include_all_metadata") != "1" || c.Form.Get("channel") != "C0SOCALERTS" {
					t.Errorf("conversations.history %v, want the channel's id and include_all_metadata", c.Form)
				}
			}
			// Once found, the thread is recorded: a later restart reads no history.
			calls := len(e.srv.Calls("conversations.history"))
			notify(t, e.receiver(t), v...)
			if n := len(e.srv.Calls("conversations.history")); n != calls {
				t.Errorf("after the thread was recorded, a delivery read the history again (%d calls, was %d)", n, calls)
			}
			if n := len(incidentMessages(t, e.srv, v[0].ID)); n != 1 {
				t.Errorf("after all versions the incident has %d top-level messages, want 1", n)
			}
		})
	}
}

func withReminder(a detectors.Alert, n string) detectors.Alert {
	a.Labels = map[string]string{"key_type": a.Labels["key_type"], alerting.ReminderLabel: n}
	return a
}

// TestIntentWithoutPost: an intent whose post never reached Slack (killed before it,
// or Slack refused it) is posted by the redelivery, once.
func TestIntentWithoutPost(t *testing.T) {
	v := versionsOf(t, detectors.ForbiddenBurst)
	for _, tc := range []struct {
		name  string
		crash func(t *testing.T, e *env)
	}{
		{"killed between the intent and the post", func(t *testing.T, e *env) {
			e.crash(t, func(f *ThreadFile) Threads { return killedBeforePost{f} }, v[0])
		}},
		{"post refused", func(t *testing.T, e *env) {
			e.srv.FailNext("chat.postMessage", slacktest.Fault{Status: http.StatusServiceUnavailable})
			e.crash(t, func(f *ThreadFile) Threads { return f }, v[0])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.crash(t, e)
			if n := len(e.srv.Messages()); n != 0 {
				t.Fatalf("the channel holds %d messages before the redelivery, want none", n)
			}
			r := e.receiver(t)
			notify(t, r, v[0])
			notify(t, r, v[0], v[1])
			msgs := incidentMessages(t, e.srv, v[0].ID)
			if len(msgs) != 1 || msgs[0].Edits != 1 {
				t.Fatalf("the incident has %d top-level messages (%+v), want 1, edited once", len(msgs), msgs)
			}
			if n := len(e.srv.Calls("conversations.history")); n != 1 {
				t.Errorf("%d conversations.history calls, want 1 (the intent's lookup)", n)
			}
		})
	}
}

// TestLookupFailureIsRetried: when the history cannot be read, the message may be in
// Slack: the delivery fails, retryably (a rate limit keeps its wait), and posts
// nothing; the retry finds the message.
func TestLookupFailureIsRetried(t *testing.T) {
	v := versionsOf(t, detectors.TokenReuse)
	for _, tc := range []struct {
		name      string
		method    string
		fault     slacktest.Fault
		wantAfter time.Duration
		wantText  string
	}{
		{"internal_error", "conversations.history", slacktest.Fault{Error: "internal_error"}, 0, "internal_error"},
		{"HTTP 500", "conversations.history", slacktest.Fault{Status: http.StatusInternalServerError}, 0, "500"},
		{"ratelimited", "conversations.history", slacktest.Fault{Error: "ratelimited", RetryAfter: 20}, 20 * time.Second, "ratelimited"},
		// A scope granted later makes the retry succeed; until then nothing is posted.
		{"missing_scope", "conversations.history", slacktest.Fault{Error: "missing_scope"}, 0, "missing_scope"},
		{"channel list fails", "conversations.list", slacktest.Fault{Error: "missing_scope"}, 0, "missing_scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.crash(t, func(f *ThreadFile) Threads { return killedAfterPost{f} }, v[0])
			r := e.receiver(t)
			e.srv.FailNext(tc.method, tc.fault)
			retry, err := r.Notify(context.Background(), v[:2])
			checkErr(t, retry, err, true, tc.wantAfter, tc.wantText, slacktest.DefaultToken)
			if n, edits := len(e.srv.Messages()), e.srv.Messages()[0].Edits; n != 1 || edits != 0 {
				t.Fatalf("after a failed lookup the channel holds %d messages (the first edited %d times), want the one, untouched", n, edits)
			}
			notify(t, r, v[:2]...)
			msgs := incidentMessages(t, e.srv, v[0].ID)
			if len(msgs) != 1 || msgs[0].Edits != 1 {
				t.Errorf("after the retry the incident has %d top-level messages (%+v), want 1, edited once", len(msgs), msgs)
			}
		})
	}
}

// TestGroupFoundAfterCrash: the same rule for a group message, found by its group key.
func TestGroupFoundAfterCrash(t *testing.T) {
	alerts := stormAlerts(5)
	g := alerting.Group{Key: "g-crash", Labels: map[string]string{"detector": detectors.ForbiddenBurst}, Alerts: alerts[:3]}
	for _, tc := range []struct {
		name     string
		wrap     func(*ThreadFile) Threads
		wantEdit int // after the redelivery of the same notification
	}{
		{"post reached Slack", func(f *ThreadFile) Threads { return killedAfterPost{f} }, 0},
		{"killed before the post", func(f *ThreadFile) Threads { return killedBeforePost{f} }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if retry, err := e.receiverWith(t, tc.wrap).NotifyGroup(context.Background(), g); err == nil || !retry {
				t.Fatalf("NotifyGroup through a crashing thread state = (%v, %v), want a retryable error", retry, err)
			}
			r := e.receiver(t)
			notifyGroup(t, r, g)
			msgs := e.srv.Messages()
			if len(msgs) != 1 || msgs[0].Edits != tc.wantEdit {
				t.Fatalf("after the redelivery: %+v, want one group message", msgs)
			}
			later := g
			later.Alerts = alerts[3:]
			notifyGroup(t, r, later)
			msgs = e.srv.Messages()
			if len(msgs) != 2 || msgs[0].Edits != 1 || msgs[1].ThreadTS != msgs[0].TS {
				t.Errorf("after two more incidents: %+v, want the group message edited once and a reply in its thread", msgs)
			}
		})
	}
}

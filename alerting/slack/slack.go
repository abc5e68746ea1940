// Package slack delivers gatewatch alerts to a Slack channel with
// github.com/slack-go/slack.
//
// In bot-token mode (token_file or token_env, and channel) an incident is one Block Kit
// message: its first version posts it with chat.postMessage; each later version (same
// alert id, later last_seen) rewrites it with chat.update and replies in its thread with
// what changed, so the channel shows one up-to-date message per incident and the thread
// keeps the history. The message carries the severity and detector, the summary, the key
// facts and samples of the evidence, a "Runbook: first 30 minutes" button and the
// command that replays the 30 minutes around the alert.
//
// A reminder of an unchanged incident (repeat_interval) is a reply in its thread,
// broadcast to the channel. Where each incident's thread is lives in Options.Threads
// (ThreadFile keeps it in a file), so updates find their thread after a restart, and a
// delivery that was already posted, named by (alert id, last_seen, reminder), is never
// posted again: the outbox delivers at least once, Slack sees each delivery once.
//
// A top-level post is not idempotent, so it is made safe with an intent and a lookup:
// before chat.postMessage the receiver records in Threads that it is about to post (a
// Thread without TS, with its Posting time), and the message carries Slack message
// metadata naming the incident (event type gatewatch_incident, alert_id) or the group
// (gatewatch_group, group_key). A delivery that finds such an intent, left by a crash
// between Slack taking the post and the thread being recorded, first looks for the
// message in the channel's history around the intent's time (conversations.history
// with include_all_metadata) and goes on in its thread when it is there; it posts only
// when it is not. The bot token therefore needs channels:history (groups:history for a
// private channel) besides chat:write, and channels:read (groups:read) when channel is
// a name rather than an id, to find the id for the history.
//
// In incoming-webhook mode (webhook_url_file or webhook_url_env) each version is a
// message of its own, since a webhook can neither thread nor edit.
//
// The bot token and the webhook URL are credentials: they never appear in an error or
// a log line.
package slack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	slackgo "github.com/slack-go/slack"
)

// Options carries what a Receiver needs besides its configuration.
type Options struct {
	// Logger gets state changes (a lost thread); nil discards.
	Logger *slog.Logger
	// HTTPClient sends the requests; nil: a client without its own timeout, since the
	// context of each Notify bounds the attempt.
	HTTPClient *http.Client
	// ReplayCommand is alerting.Config.ReplayCommand: shown with {from} and {to} filled
	// in; empty: no replay command in the message.
	ReplayCommand string
	// Threads remembers each incident's thread and newest posted version. Required in
	// bot-token mode; optional in webhook mode, where it only prevents posting a version
	// twice.
	Threads Threads
	// Now is the clock of the intents recorded before a post, compared with Slack's
	// message timestamps; nil: time.Now.
	Now func() time.Time
}

// Receiver posts alerts to Slack; it is safe for concurrent use.
type Receiver struct {
	name       string
	channel    string
	apiURL     string
	token      string // secret
	webhookURL string // secret
	http       *http.Client
	threads    Threads
	replay     string
	log        *slog.Logger
	now        func() time.Time

	// mu makes each Notify read and write the thread state of its alerts without
	// another Notify posting the same version in between.
	mu sync.Mutex
	// channelID is the id of channel, learned from Slack's answers (under mu):
	// conversations.history takes only ids.
	channelID string
}

var _ alerting.GroupReceiver = (*Receiver)(nil)

// New builds the receiver called name from cfg, reading its token or webhook URL. It
// starts nothing and sends nothing.
func New(name string, cfg alerting.SlackConfig, o Options) (*Receiver, error) {
	if name == "" {
		return nil, errors.New("slack: receiver needs a name")
	}
	r := &Receiver{name: name, channel: cfg.Channel, http: o.HTTPClient, threads: o.Threads, replay: o.ReplayCommand, now: o.Now}
	if r.now == nil {
		r.now = time.Now
	}
	if r.http == nil {
		r.http = &http.Client{}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r.log = log.With("component", "alerting", "receiver", name)

	if cfg.WebhookURL().IsSet() {
		u, err := cfg.WebhookURL().Load(1)
		if err != nil {
			return nil, fmt.Errorf("slack: receiver %s: %w", name, err)
		}
		// The URL is the credential: say where it came from, never what it is.
		if p, err := url.Parse(u.Reveal()); err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			return nil, fmt.Errorf("slack: receiver %s: the webhook URL from %s is not an http(s) URL", name, source(cfg.WebhookURLFile, cfg.WebhookURLEnv))
		}
		r.webhookURL = u.Reveal()
		return r, nil
	}

	tok, err := cfg.Token().Load(1)
	if err != nil {
		return nil, fmt.Errorf("slack: receiver %s: %w", name, err)
	}
	r.token = tok.Reveal()
	if cfg.Channel == "" {
		return nil, fmt.Errorf("slack: receiver %s: channel must be set for the bot-token mode", name)
	}
	if o.Threads == nil {
		return nil, fmt.Errorf("slack: receiver %s: Options.Threads is required for the bot-token mode", name)
	}
	r.apiURL = cfg.APIURL
	if r.apiURL == "" {
		r.apiURL = slackgo.APIURL
	}
	if !strings.HasSuffix(r.apiURL, "/") {
		r.apiURL += "/" // slack-go appends the method name to it
	}
	if p, err := url.Parse(r.apiURL); err != nil || p.Host == "" {
		return nil, fmt.Errorf("slack: receiver %s: api_url %q is not a URL", name, cfg.APIURL)
	}
	return r, nil
}

func source(file, env string) string {
	if file != "" {
		return file
	}
	return "$" + env
}

// Name returns the receiver's name from the configuration.
func (r *Receiver) Name() string { return r.name }

// Check asks Slack whether the token is valid (auth.test), for check-config and
// readiness. In webhook mode there is nothing to ask without posting, so it returns nil.
func (r *Receiver) Check(ctx context.Context) error {
	if r.webhookURL != "" {
		return nil
	}
	api, rec := r.client()
	if _, err := api.AuthTestContext(ctx); err != nil {
		_, err = r.classify("auth.test", err, rec.retryAfter)
		return fmt.Errorf("slack: receiver %s: %w", r.name, err)
	}
	return nil
}

// Notify posts each alert: a first version as a new message, a later version as an
// update of its incident's message and a reply in its thread, a reminder (the
// alerting.ReminderLabel label) as a reply broadcast to the channel, and a delivery
// already posted, identified by (id, last_seen, reminder), not at all. It stops at the
// first failure; the alerts before it are recorded, so the retry posts only the rest.
func (r *Receiver) Notify(ctx context.Context, alerts []detectors.Alert) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.webhookURL != "" {
		return r.notifyWebhook(ctx, alerts)
	}
	api, rec := r.client()
	for i := range alerts {
		a := &alerts[i]
		if retry, err := r.post(ctx, api, rec, a, nil); err != nil {
			return retry, fmt.Errorf("slack: receiver %s: alert %s: %w", r.name, a.ID, err)
		}
	}
	return false, nil
}

// client returns a Web API client whose responses leave their Retry-After header in
// rec. Each Notify gets its own, so concurrent calls never see each other's headers.
func (r *Receiver) client() (*slackgo.Client, *headerRecorder) {
	rec := &headerRecorder{client: r.http}
	return slackgo.New(r.token, slackgo.OptionAPIURL(r.apiURL), slackgo.OptionHTTPClient(rec)), rec
}

// threadLost are the chat.update errors that mean the parent message is gone (deleted,
// or too old to edit): the incident then opens a new thread rather than lose the update.
var threadLost = map[string]bool{"message_not_found": true, "cant_update_message": true, "edit_window_closed": true}

func (r *Receiver) post(ctx context.Context, api *slackgo.Client, rec *headerRecorder, a *detectors.Alert, ack *alerting.Ack) (bool, error) {
	th, ok, err := r.threads.Get(a.ID)
	if err != nil {
		return true, fmt.Errorf("read thread state: %w", err)
	}
	meta := slackgo.SlackMetadata{EventType: incidentEvent, EventPayload: map[string]any{incidentField: a.ID}}
	if ok && th.pending() {
		if th, err = r.resume(ctx, api, rec, a.ID, th, meta); err != nil {
			return true, err
		}
	}
	rem := reminderOf(a)
	if ok && th.TS != "" && !a.LastSeen.After(th.LastSeen) {
		if a.LastSeen.Before(th.LastSeen) || rem <= th.Reminder {
			return false, nil // this delivery, or a later one, is already in Slack
		}
		// A reminder of the version the thread shows: said again in the thread and,
		// since a reminder is meant to be seen, broadcast to the channel.
		m := reminderMessage(a, rem)
		if _, _, err := api.PostMessageContext(ctx, th.Channel, slackgo.MsgOptionTS(th.TS), slackgo.MsgOptionBroadcast(),
			slackgo.MsgOptionText(m.text, false), slackgo.MsgOptionBlocks(m.blocks...)); err != nil {
			return r.classify("post the reminder in the incident thread", err, rec.retryAfter)
		}
		th.Reminder = rem
		return r.record(a.ID, th)
	}
	parent := parentMessage(a, r.replay, ack)
	if ok && th.TS != "" {
		_, _, _, err := api.UpdateMessageContext(ctx, th.Channel, th.TS,
			slackgo.MsgOptionText(parent.text, false), slackgo.MsgOptionBlocks(parent.blocks...))
		var se slackgo.SlackErrorResponse
		switch {
		case errors.As(err, &se) && threadLost[se.Err]:
			r.log.Warn("slack thread lost, posting the incident anew", "alert_id", a.ID, "reason", se.Err)
		case err != nil:
			return r.classify("update the incident message", err, rec.retryAfter)
		default:
			reply := updateMessage(a)
			if _, _, err := api.PostMessageContext(ctx, th.Channel, slackgo.MsgOptionTS(th.TS),
				slackgo.MsgOptionText(reply.text, false), slackgo.MsgOptionBlocks(reply.blocks...)); err != nil {
				return r.classify("reply in the incident thread", err, rec.retryAfter)
			}
			th.LastSeen, th.Reminder = a.LastSeen, rem
			return r.record(a.ID, th)
		}
	}
	th = Thread{LastSeen: a.LastSeen, Reminder: rem}
	if err := r.intend(a.ID, th); err != nil {
		return true, err
	}
	ch, ts, err := api.PostMessageContext(ctx, r.channel,
		slackgo.MsgOptionText(parent.text, false), slackgo.MsgOptionBlocks(parent.blocks...), slackgo.MsgOptionMetadata(meta))
	if err != nil {
		return r.classify("post the incident message", err, rec.retryAfter)
	}
	r.channelID = ch
	th.Channel, th.TS = ch, ts
	return r.record(a.ID, th)
}

// reminderOf returns the number of the reminder a is (its alerting.ReminderLabel
// label), 0 for a first delivery.
func reminderOf(a *detectors.Alert) int {
	n, err := strconv.Atoi(a.Labels[alerting.ReminderLabel])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// record saves the thread after a successful post. A failed write is retried (the
// error says so) but does not post again: Threads keeps the entry in memory.
func (r *Receiver) record(id string, th Thread) (bool, error) {
	if err := r.threads.Put(id, th); err != nil {
		return true, fmt.Errorf("posted, but: %w", err)
	}
	return false, nil
}

func (r *Receiver) notifyWebhook(ctx context.Context, alerts []detectors.Alert) (bool, error) {
	for i := range alerts {
		a := &alerts[i]
		if r.threads != nil {
			th, ok, err := r.threads.Get(a.ID)
			if err != nil {
				return true, fmt.Errorf("slack: receiver %s: alert %s: read thread state: %w", r.name, a.ID, err)
			}
			if ok && (a.LastSeen.Before(th.LastSeen) || (a.LastSeen.Equal(th.LastSeen) && reminderOf(a) <= th.Reminder)) {
				continue // already posted
			}
		}
		m := parentMessage(a, r.replay, nil)
		if n := reminderOf(a); n > 0 {
			m.text = fmt.Sprintf("Reminder %d: %s", n, m.text)
		}
		msg := &slackgo.WebhookMessage{Text: m.text, Blocks: &slackgo.Blocks{BlockSet: m.blocks}}
		if err := slackgo.PostWebhookCustomHTTPContext(ctx, r.webhookURL, r.http, msg); err != nil {
			retry, err := r.classify("post to the incoming webhook", err, "")
			return retry, fmt.Errorf("slack: receiver %s: alert %s: %w", r.name, a.ID, err)
		}
		if r.threads != nil {
			if retry, err := r.record(a.ID, Thread{LastSeen: a.LastSeen, Reminder: reminderOf(a)}); err != nil {
				return retry, fmt.Errorf("slack: receiver %s: alert %s: %w", r.name, a.ID, err)
			}
		}
	}
	return false, nil
}

// transient are the Slack error codes that a later attempt can get past
// (docs.slack.dev, chat.postMessage "Errors").
var transient = map[string]bool{
	"internal_error": true, "fatal_error": true, "service_unavailable": true,
	"request_timeout": true, "team_added_to_org": true,
}

// rateLimitWait is how long to wait after an ok:false "ratelimited" that came without
// a Retry-After header: chat.postMessage allows about one message a second a channel.
const rateLimitWait = time.Second

// classify wraps err with what was attempted, says whether to retry, and strips the
// credentials from it. Rate limits become an alerting.RetryAfterError; Slack's final
// errors (channel_not_found, invalid_auth, not_in_channel, account_inactive, a 4xx from
// a webhook, ...) do not retry; 5xx, timeouts and network errors do.
func (r *Receiver) classify(what string, err error, retryAfter string) (bool, error) {
	err = r.redact(fmt.Errorf("%s: %w", what, err))
	var rl *slackgo.RateLimitedError
	if errors.As(err, &rl) {
		return true, &alerting.RetryAfterError{After: rl.RetryAfter, Err: err}
	}
	var se slackgo.SlackErrorResponse
	if errors.As(err, &se) {
		switch {
		case se.Err == "ratelimited" || se.Err == "rate_limited":
			after := rateLimitWait
			if s, perr := strconv.Atoi(retryAfter); perr == nil && s > 0 {
				after = time.Duration(s) * time.Second
			}
			return true, &alerting.RetryAfterError{After: after, Err: err}
		case transient[se.Err]:
			return true, err
		}
		return false, err
	}
	var sc slackgo.StatusCodeError
	if errors.As(err, &sc) {
		return sc.Retryable(), err
	}
	return true, err // network errors, timeouts, a cancelled context, a garbled answer
}

// redact removes the webhook URL and the token from err: slack-go reports transport
// failures as a *url.Error holding the request URL, which for a webhook is the
// credential. As a last guard, an error whose text still spells out a secret is
// flattened with the secret replaced.
func (r *Receiver) redact(err error) error {
	if r.webhookURL != "" {
		err = redactURLError(err)
	}
	msg := err.Error()
	for _, secret := range []string{r.webhookURL, r.token} {
		if secret != "" && strings.Contains(msg, secret) {
			return errors.New(strings.ReplaceAll(msg, secret, "<redacted>"))
		}
	}
	return err
}

// redactURLError rebuilds err's text around alerting.RedactURL of the *url.Error it
// wraps, keeping the chain for errors.As.
func redactURLError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(err.Error(), ue.Error(), alerting.RedactURL(ue).Error()), err: alerting.RedactURL(ue)}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// headerRecorder remembers the Retry-After header of the latest response, which
// slack-go drops for an ok:false "ratelimited" answer.
type headerRecorder struct {
	client     *http.Client
	retryAfter string
}

func (h *headerRecorder) Do(req *http.Request) (*http.Response, error) {
	resp, err := h.client.Do(req)
	if resp != nil {
		h.retryAfter = resp.Header.Get("Retry-After")
	}
	return resp, err
}

package slack

import (
	"context"
	"fmt"
	"strings"
	"time"

	slackgo "github.com/slack-go/slack"
)

// The message metadata of top-level posts, by which a post whose thread was never
// recorded is found again in the channel history.
const (
	incidentEvent = "gatewatch_incident"
	incidentField = "alert_id"
	groupEvent    = "gatewatch_group"
	groupField    = "group_key"
)

// Bounds of the history lookup of an intent.
const (
	// lookupMargin is how far before and after the intent's time the history is
	// read: it covers the difference between this host's clock and Slack's and the
	// time the post took to reach Slack (its attempt is bounded by the delivery
	// timeout, well under this).
	lookupMargin = 10 * time.Minute
	lookupPage   = 200 // messages a history page; Slack recommends at most 200
	// maxLookupPages caps the history read for one intent: more than 2,000 messages
	// in the 20 minutes around it is a flood, in which posting again is better than
	// holding the incident back.
	maxLookupPages = 10
	listPage       = 200
	maxListPages   = 50 // conversations.list pages read to find a channel's id
)

// pending reports whether th is an intent: a top-level post was about to be made and
// its message may be in Slack without its TS recorded.
func (th Thread) pending() bool { return th.TS == "" && !th.Posting.IsZero() }

// intend records, before a top-level post, that th is about to be posted under id: a
// Thread without TS, with the channel and the time of the post. Only once it is
// durable may the post be made, so that a crash after Slack took it leaves a trace.
func (r *Receiver) intend(id string, th Thread) error {
	th.Channel, th.TS, th.Posting = r.channel, "", r.now().UTC()
	if r.channelID != "" {
		th.Channel = r.channelID
	}
	if err := r.threads.Put(id, th); err != nil {
		return fmt.Errorf("record the intent to post: %w", err)
	}
	return nil
}

// resume settles the intent th of id: it looks in the channel's history around the
// intent's time for a message whose metadata is meta. Found, th gets that message as
// its thread, is recorded and returned, and the delivery goes on in it; not found, th
// is returned as it is and the caller posts. Every failure is worth retrying: the
// message may be there, so nothing is posted until the history has answered.
func (r *Receiver) resume(ctx context.Context, api *slackgo.Client, rec *headerRecorder, id string, th Thread, meta slackgo.SlackMetadata) (Thread, error) {
	ch, ts, err := r.findPosted(ctx, api, rec, th, meta)
	if err != nil {
		return th, err
	}
	if ts == "" {
		return th, nil
	}
	r.log.Info("slack post found after a restart, going on in its thread", "alert_id", id)
	th.Channel, th.TS, th.Posting = ch, ts, time.Time{}
	if err := r.threads.Put(id, th); err != nil {
		return th, fmt.Errorf("found the post in the channel history, but: %w", err)
	}
	return th, nil
}

// findPosted returns the channel id and the ts of the top-level message carrying meta
// that Slack took within lookupMargin of th.Posting; ts is empty when there is none.
func (r *Receiver) findPosted(ctx context.Context, api *slackgo.Client, rec *headerRecorder, th Thread, meta slackgo.SlackMetadata) (string, string, error) {
	ch, err := r.resolveChannel(ctx, api, rec, th.Channel)
	if err != nil {
		return "", "", err
	}
	p := &slackgo.GetConversationHistoryParameters{
		ChannelID: ch, Oldest: slackTS(th.Posting.Add(-lookupMargin)), Latest: slackTS(th.Posting.Add(lookupMargin)),
		Inclusive: true, Limit: lookupPage, IncludeAllMetadata: true,
	}
	for range maxLookupPages {
		h, err := api.GetConversationHistoryContext(ctx, p)
		if err != nil {
			return "", "", r.lookupError("look for the post in the channel history", err, rec)
		}
		for _, m := range h.Messages {
			if (m.ThreadTimestamp == "" || m.ThreadTimestamp == m.Timestamp) && sameMetadata(m.Metadata, meta) {
				return ch, m.Timestamp, nil
			}
		}
		if !h.HasMore || h.ResponseMetaData.NextCursor == "" {
			return ch, "", nil
		}
		p.Cursor = h.ResponseMetaData.NextCursor
	}
	r.log.Warn("slack history lookup capped, posting", "event_type", meta.EventType, "pages", maxLookupPages)
	return ch, "", nil
}

// resolveChannel returns the id of channel ref: ref itself when it is an id, else the
// id learned from a post, else the one conversations.list gives its name.
func (r *Receiver) resolveChannel(ctx context.Context, api *slackgo.Client, rec *headerRecorder, ref string) (string, error) {
	if isChannelID(ref) {
		return ref, nil
	}
	if r.channelID != "" && ref == r.channel {
		return r.channelID, nil
	}
	name := strings.TrimPrefix(ref, "#")
	p := &slackgo.GetConversationsParameters{Types: []string{"public_channel", "private_channel"}, ExcludeArchived: true, Limit: listPage}
	for range maxListPages {
		chans, next, err := api.GetConversationsContext(ctx, p)
		if err != nil {
			return "", r.lookupError("find the channel's id", err, rec)
		}
		for _, c := range chans {
			if c.Name == name {
				if ref == r.channel {
					r.channelID = c.ID
				}
				return c.ID, nil
			}
		}
		if next == "" {
			break
		}
		p.Cursor = next
	}
	return "", fmt.Errorf("find the channel's id: no channel %s in conversations.list", ref)
}

// lookupError classifies a failed lookup and keeps a rate limit's wait; whatever
// Slack answered, the caller retries rather than post without knowing.
func (r *Receiver) lookupError(what string, err error, rec *headerRecorder) error {
	_, err = r.classify(what, err, rec.retryAfter)
	return err
}

// isChannelID reports whether s is a Slack conversation id (C…, G… or D…, upper-case
// letters and digits); channel names are lower case.
func isChannelID(s string) bool {
	if len(s) < 9 || !strings.ContainsRune("CGD", rune(s[0])) {
		return false
	}
	for _, c := range s {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// sameMetadata reports whether m is the metadata want (one event type, one field).
func sameMetadata(m, want slackgo.SlackMetadata) bool {
	if m.EventType != want.EventType || len(m.EventPayload) == 0 {
		return false
	}
	for k, v := range want.EventPayload {
		if m.EventPayload[k] != v {
			return false
		}
	}
	return true
}

// slackTS writes t as a Slack timestamp, seconds with microseconds.
func slackTS(t time.Time) string {
	us := t.UnixMicro()
	return fmt.Sprintf("%d.%06d", us/1e6, us%1e6)
}

package slack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	slackgo "github.com/slack-go/slack"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// Bounds of a group message. Slack takes at most 50 blocks a message: a header, a
// context line, up to maxGroupListed incidents (one section each, with its menu),
// the count of the rest, the runbook button and the footer.
const (
	maxGroupListed  = 40
	maxGroupMembers = 2000 // kept per group; beyond, counted
	maxReplyListed  = 20   // incidents named in a thread reply
	maxMemberLine   = 280  // runes of an incident's summary in the list
)

// groupThreadID is where a group's thread lives in Threads.
func groupThreadID(key string) string { return "group:" + key }

// NotifyGroup delivers g: each alert of an ungrouped delivery (g.Key empty) as Notify
// does, with who acknowledged it; a group as one message listing its incidents, posted
// once and rewritten in place as incidents join or change, with a reply in its thread
// naming what changed. In webhook mode a group is one message per notification.
func (r *Receiver) NotifyGroup(ctx context.Context, g alerting.Group) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.webhookURL != "" {
		if g.Key == "" {
			return r.notifyWebhook(ctx, g.Alerts)
		}
		return r.groupWebhook(ctx, g)
	}
	api, rec := r.client()
	if g.Key == "" {
		for i := range g.Alerts {
			a := &g.Alerts[i]
			if retry, err := r.post(ctx, api, rec, a, ackOf(g.Acks, a.ID)); err != nil {
				return retry, fmt.Errorf("slack: receiver %s: alert %s: %w", r.name, a.ID, err)
			}
		}
		return false, nil
	}
	if retry, err := r.postGroup(ctx, api, rec, g); err != nil {
		return retry, fmt.Errorf("slack: receiver %s: group %s: %w", r.name, g.Key, err)
	}
	return false, nil
}

func ackOf(l alerting.AckLookup, id string) *alerting.Ack {
	if l == nil {
		return nil
	}
	if a, ok := l.Ack(id); ok {
		return &a
	}
	return nil
}

func memberOf(a *detectors.Alert) Member {
	return Member{ID: a.ID, Detector: a.Detector, Severity: a.Severity, Key: a.Key, Summary: truncate(a.Summary, maxMemberLine),
		FirstSeen: a.FirstSeen.UTC(), LastSeen: a.LastSeen.UTC(), Runbook: a.RunbookURL}
}

// merge adds g's alerts to th's members and returns the incidents that joined or
// changed, and the reminders of incidents already shown. A version the message shows
// already (or an older one) changes nothing: a retried notification posts nothing new.
func merge(th *Thread, alerts []detectors.Alert) (changed, reminders []Member) {
	idx := make(map[string]int, len(th.Members))
	for i, m := range th.Members {
		idx[m.ID] = i
	}
	for i := range alerts {
		a := &alerts[i]
		m := memberOf(a)
		j, ok := idx[a.ID]
		switch {
		case ok && !a.LastSeen.After(th.Members[j].LastSeen):
			if reminderOf(a) > 0 && a.LastSeen.Equal(th.Members[j].LastSeen) {
				reminders = append(reminders, th.Members[j])
			}
			continue
		case ok:
			th.Members[j] = m
		case len(th.Members) < maxGroupMembers:
			idx[a.ID] = len(th.Members)
			th.Members = append(th.Members, m)
		default:
			th.More++
		}
		changed = append(changed, m)
		if a.LastSeen.After(th.LastSeen) {
			th.LastSeen = a.LastSeen.UTC()
		}
	}
	return changed, reminders
}

func (r *Receiver) postGroup(ctx context.Context, api *slackgo.Client, rec *headerRecorder, g alerting.Group) (bool, error) {
	id := groupThreadID(g.Key)
	th, ok, err := r.threads.Get(id)
	if err != nil {
		return true, fmt.Errorf("read thread state: %w", err)
	}
	meta := slackgo.SlackMetadata{EventType: groupEvent, EventPayload: map[string]any{groupField: g.Key}}
	if ok && th.pending() {
		if th, err = r.resume(ctx, api, rec, id, th, meta); err != nil {
			return true, err
		}
	}
	th.Members = slices.Clone(th.Members)
	if th.Labels == nil {
		th.Labels = g.Labels
	}
	changed, reminders := merge(&th, g.Alerts)
	// An intent still pending holds the members of a post that never reached Slack:
	// that post is still owed even when the alerts add nothing to it.
	if len(changed) == 0 && len(reminders) == 0 && !th.pending() {
		return false, nil // everything is in the message already
	}
	parent := groupMessage(g.Key, &th, g.Acks)
	if ok && th.TS != "" {
		if len(changed) > 0 {
			_, _, _, err := api.UpdateMessageContext(ctx, th.Channel, th.TS,
				slackgo.MsgOptionText(parent.text, false), slackgo.MsgOptionBlocks(parent.blocks...))
			var se slackgo.SlackErrorResponse
			switch {
			case errors.As(err, &se) && threadLost[se.Err]:
				r.log.Warn("slack thread lost, posting the group anew", "group", g.Key, "reason", se.Err)
				th.TS = ""
			case err != nil:
				return r.classify("update the group message", err, rec.retryAfter)
			}
		}
		if th.TS != "" {
			reply, broadcast := groupReply(changed, reminders)
			opts := []slackgo.MsgOption{slackgo.MsgOptionTS(th.TS), slackgo.MsgOptionText(reply.text, false), slackgo.MsgOptionBlocks(reply.blocks...)}
			if broadcast {
				opts = append(opts, slackgo.MsgOptionBroadcast())
			}
			if _, _, err := api.PostMessageContext(ctx, th.Channel, opts...); err != nil {
				return r.classify("reply in the group thread", err, rec.retryAfter)
			}
			return r.record(id, th)
		}
	}
	if err := r.intend(id, th); err != nil {
		return true, err
	}
	ch, ts, err := api.PostMessageContext(ctx, r.channel,
		slackgo.MsgOptionText(parent.text, false), slackgo.MsgOptionBlocks(parent.blocks...), slackgo.MsgOptionMetadata(meta))
	if err != nil {
		return r.classify("post the group message", err, rec.retryAfter)
	}
	r.channelID = ch
	th.Channel, th.TS, th.Posting = ch, ts, time.Time{}
	return r.record(id, th)
}

// groupWebhook posts the alerts of one notification of a group as one message: an
// incoming webhook can neither edit nor thread.
func (r *Receiver) groupWebhook(ctx context.Context, g alerting.Group) (bool, error) {
	th := Thread{Labels: g.Labels}
	if r.threads != nil {
		old, _, err := r.threads.Get(groupThreadID(g.Key))
		if err != nil {
			return true, fmt.Errorf("slack: receiver %s: group %s: read thread state: %w", r.name, g.Key, err)
		}
		th.Members, th.LastSeen = slices.Clone(old.Members), old.LastSeen
	}
	changed, _ := merge(&th, g.Alerts)
	if len(changed) == 0 {
		return false, nil
	}
	shown := Thread{Labels: g.Labels, Members: changed}
	m := groupMessage(g.Key, &shown, g.Acks)
	msg := &slackgo.WebhookMessage{Text: m.text, Blocks: &slackgo.Blocks{BlockSet: m.blocks}}
	if err := slackgo.PostWebhookCustomHTTPContext(ctx, r.webhookURL, r.http, msg); err != nil {
		retry, err := r.classify("post the group to the incoming webhook", err, "")
		return retry, fmt.Errorf("slack: receiver %s: group %s: %w", r.name, g.Key, err)
	}
	if r.threads == nil {
		return false, nil
	}
	if retry, err := r.record(groupThreadID(g.Key), th); err != nil {
		return retry, fmt.Errorf("slack: receiver %s: group %s: %w", r.name, g.Key, err)
	}
	return false, nil
}

// groupMessage lists a group's incidents, the most severe and most recent first: a
// header with their number and what they share, a line per incident (up to
// maxGroupListed) with its menu (Acknowledge, Silence the key for 1h or 24h), the
// count of the rest, the runbook when they share one, and the group's key.
func groupMessage(key string, th *Thread, acks alerting.AckLookup) message {
	ms := slices.Clone(th.Members)
	slices.SortStableFunc(ms, func(a, b Member) int {
		return cmp.Or(cmp.Compare(sevRank(b.Severity), sevRank(a.Severity)), b.LastSeen.Compare(a.LastSeen), strings.Compare(a.ID, b.ID))
	})
	total := len(ms) + th.More
	top := detectors.SeverityLow
	runbook := ""
	for i, m := range ms {
		if sevRank(m.Severity) > sevRank(top) {
			top = m.Severity
		}
		if i == 0 {
			runbook = m.Runbook
		} else if m.Runbook != runbook {
			runbook = ""
		}
	}
	shared := strings.Join(alerting.GroupLabels(th.Labels), " · ")
	head := fmt.Sprintf("%s %d incidents · %s", emoji(top), total, shared)
	if total == 1 {
		head = fmt.Sprintf("%s 1 incident · %s", emoji(top), shared)
	}
	blocks := make([]slackgo.Block, 0, maxGroupListed+6)
	blocks = append(blocks, slackgo.NewHeaderBlock(plain(truncate(head, maxHeaderRunes))))
	first, last := ms[0].FirstSeen, ms[0].LastSeen
	for _, m := range ms {
		first, last = minTime(first, m.FirstSeen), maxTime(last, m.LastSeen)
	}
	blocks = append(blocks, slackgo.NewContextBlock("", mrkdwn(truncate(fmt.Sprintf("Grouped by %s · first seen %s · last seen %s",
		escape(shared), humanTime(first), humanTime(last)), maxSectionRunes))))
	for _, m := range ms[:min(len(ms), maxGroupListed)] {
		blocks = append(blocks, memberSection(m, ackOf(acks, m.ID)))
	}
	if rest := total - min(len(ms), maxGroupListed); rest > 0 {
		blocks = append(blocks, slackgo.NewContextBlock("", mrkdwn(fmt.Sprintf("+%d more incidents in this group: see the gatewatch console or the alert history", rest))))
	}
	if runbook != "" {
		btn := slackgo.NewButtonBlockElement(actionRunbook, key, plain(RunbookButtonText)).WithURL(runbook).WithStyle(slackgo.StylePrimary)
		blocks = append(blocks, slackgo.NewActionBlock("actions", btn))
	}
	blocks = append(blocks, slackgo.NewContextBlock("", mrkdwn("group "+code(key)+" · gatewatch")))
	text := truncate(fmt.Sprintf("[%s] %d incidents: %s", strings.ToUpper(string(top)), total, escape(shared)), maxSectionRunes)
	return message{text: text, blocks: blocks}
}

// memberSection is an incident's line in a group message, with its menu.
func memberSection(m Member, ack *alerting.Ack) *slackgo.SectionBlock {
	txt := fmt.Sprintf("%s *%s* %s\n%s\n_first seen %s · last seen %s_", emoji(m.Severity), escape(m.Detector), code(m.Key),
		escape(m.Summary), humanTime(m.FirstSeen), humanTime(m.LastSeen))
	opts := []*slackgo.OptionBlockObject{}
	if ack != nil {
		txt += "\n" + ackText(*ack)
	} else {
		opts = append(opts, slackgo.NewOptionBlockObject("ack:"+m.ID, plain("Acknowledge"), nil))
	}
	opts = append(opts,
		slackgo.NewOptionBlockObject("silence_1h:"+m.ID, plain("Silence key 1h"), nil),
		slackgo.NewOptionBlockObject("silence_24h:"+m.ID, plain("Silence key 24h"), nil))
	menu := slackgo.NewOverflowBlockElement(actionMenu, opts...)
	return slackgo.NewSectionBlock(mrkdwn(truncate(txt, maxSectionRunes)), nil, slackgo.NewAccessory(menu), slackgo.SectionBlockOptionBlockID(memberBlockID+m.ID))
}

// groupReply is the thread reply of a notification: the incidents that joined or
// changed, or the reminders (then broadcast to the channel, as an incident's are).
func groupReply(changed, reminders []Member) (message, bool) {
	var b strings.Builder
	list := changed
	switch {
	case len(changed) > 0:
		fmt.Fprintf(&b, "*%d incident%s joined or changed*", len(changed), plural(len(changed)))
	default:
		list = reminders
		fmt.Fprintf(&b, "*Reminder* · %d incident%s still open, unchanged", len(reminders), plural(len(reminders)))
	}
	for _, m := range list[:min(len(list), maxReplyListed)] {
		fmt.Fprintf(&b, "\n%s %s %s · last seen %s", emoji(m.Severity), escape(m.Detector), code(m.Key), humanTime(m.LastSeen))
	}
	if rest := len(list) - maxReplyListed; rest > 0 {
		fmt.Fprintf(&b, "\n+%d more", rest)
	}
	txt := truncate(b.String(), maxSectionRunes)
	return message{text: truncate(strings.SplitN(b.String(), "\n", 2)[0], maxSectionRunes), blocks: []slackgo.Block{slackgo.NewSectionBlock(mrkdwn(txt), nil, nil)}}, len(changed) == 0
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func sevRank(s detectors.Severity) int {
	switch s {
	case detectors.SeverityCritical:
		return 3
	case detectors.SeverityHigh:
		return 2
	case detectors.SeverityMedium:
		return 1
	case detectors.SeverityLow:
		return 0
	}
	return -1
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

package slack

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	slackgo "github.com/slack-go/slack"
)

// Limits of Block Kit (docs.slack.dev, Block Kit reference): Slack rejects a message
// that exceeds them with invalid_blocks, so every text is cut to fit.
const (
	maxHeaderRunes  = 150
	maxSectionRunes = 3000
	maxFieldRunes   = 2000
	maxFields       = 10 // per section block
	maxListed       = 5  // samples shown per evidence list; the rest is counted
)

// RunbookButtonText is the label of the button that opens the alert's runbook.
const RunbookButtonText = "Runbook: first 30 minutes"

// replayMargin is how far before first_seen and after last_seen the replay command
// reaches: the 30 minutes around the alert that the runbook asks to look at.
const replayMargin = 15 * time.Minute

var severityEmoji = map[detectors.Severity]string{
	detectors.SeverityCritical: ":red_circle:",
	detectors.SeverityHigh:     ":large_orange_circle:",
	detectors.SeverityMedium:   ":large_yellow_circle:",
	detectors.SeverityLow:      ":white_circle:",
}

// message is one Slack message: the notification text (what a phone shows, and what
// Slack falls back to) and the blocks.
type message struct {
	text   string
	blocks []slackgo.Block
}

// parentMessage is the message that opens an incident's thread and that every later
// version rewrites: header, who acknowledged it, summary, facts, evidence, the buttons
// (Acknowledge, Silence the key for 1h or 24h, the runbook), replay command.
func parentMessage(a *detectors.Alert, replayCommand string, ack *alerting.Ack) message {
	blocks := make([]slackgo.Block, 0, 9)
	head := fmt.Sprintf("%s %s · %s", emoji(a.Severity), strings.ToUpper(string(a.Severity)), a.Detector)
	blocks = append(blocks, slackgo.NewHeaderBlock(plain(truncate(head, maxHeaderRunes))))
	if ack != nil {
		blocks = append(blocks, slackgo.NewContextBlock(statusBlockID, mrkdwn(ackText(*ack))))
	}
	blocks = append(blocks, slackgo.NewSectionBlock(mrkdwn(truncate(escape(a.Summary), maxSectionRunes)), nil, nil))
	blocks = appendFacts(blocks, a)
	if ev := evidenceText(a); ev != "" {
		blocks = append(blocks, slackgo.NewSectionBlock(mrkdwn(ev), nil, nil))
	}
	blocks = append(blocks, slackgo.NewActionBlock("actions", incidentButtons(a, ack != nil)...))
	if cmd := ReplayCommand(replayCommand, a); cmd != "" {
		txt := "*Replay the 30 minutes around it*\n```" + escape(strings.ReplaceAll(cmd, "```", "'''")) + "```"
		blocks = append(blocks, slackgo.NewSectionBlock(mrkdwn(truncate(txt, maxSectionRunes)), nil, nil))
	}
	blocks = append(blocks, slackgo.NewContextBlock("", mrkdwn(footer(a))))
	return message{text: notificationText(a, ""), blocks: blocks}
}

// Action ids of the buttons and menus, which the Interactions handler reads back.
const (
	actionAck       = "gw_ack"
	actionSilence1h = "gw_silence_1h"
	actionSilence24 = "gw_silence_24h"
	actionMenu      = "gw_menu" // the menu of an incident in a group message
	actionRunbook   = "runbook"
	statusBlockID   = "gw_status"  // who acknowledged the incident
	silenceBlockID  = "gw_silence" // who silenced its key, until when
	memberBlockID   = "gw_inc:"    // + alert id: an incident's line in a group message
)

// incidentButtons are an incident's buttons: Acknowledge (until someone did),
// Silence the key for 1h or 24h, and its runbook.
func incidentButtons(a *detectors.Alert, acked bool) []slackgo.BlockElement {
	var els []slackgo.BlockElement
	if !acked {
		els = append(els, slackgo.NewButtonBlockElement(actionAck, a.ID, plain("Acknowledge")))
	}
	els = append(els,
		slackgo.NewButtonBlockElement(actionSilence1h, a.ID, plain("Silence key 1h")),
		slackgo.NewButtonBlockElement(actionSilence24, a.ID, plain("Silence key 24h")))
	if a.RunbookURL != "" {
		els = append(els, slackgo.NewButtonBlockElement(actionRunbook, a.ID, plain(RunbookButtonText)).
			WithURL(a.RunbookURL).WithStyle(slackgo.StylePrimary))
	}
	return els
}

// ackText says who acknowledged an incident, and when.
func ackText(a alerting.Ack) string {
	return ":white_check_mark: Acknowledged by " + who(a.By) + " · " + humanTime(a.At)
}

// who shows the author of an action: a Slack user as a mention, anyone else by name.
func who(by string) string {
	if id, ok := strings.CutPrefix(by, "slack:"); ok && slackIDRE.MatchString(id) {
		return "<@" + id + ">"
	}
	return escape(by)
}

var slackIDRE = regexp.MustCompile(`^[UW][A-Z0-9]{2,20}$`)

// updateMessage is the reply a later version posts in the incident's thread: what
// changed (summary, facts, evidence), without the header and buttons the parent keeps.
func updateMessage(a *detectors.Alert) message {
	blocks := make([]slackgo.Block, 0, 4)
	head := fmt.Sprintf("*Update* · last seen %s\n%s", humanTime(a.LastSeen), escape(a.Summary))
	blocks = append(blocks, slackgo.NewSectionBlock(mrkdwn(truncate(head, maxSectionRunes)), nil, nil))
	blocks = appendFacts(blocks, a)
	if ev := evidenceText(a); ev != "" {
		blocks = append(blocks, slackgo.NewSectionBlock(mrkdwn(ev), nil, nil))
	}
	return message{text: notificationText(a, "Update: "), blocks: blocks}
}

// reminderMessage is the reply a reminder posts in the incident's thread: the incident
// is still open and has not changed since its last version.
func reminderMessage(a *detectors.Alert, n int) message {
	blocks := make([]slackgo.Block, 0, 4)
	head := fmt.Sprintf("*Reminder %d* · still open, unchanged since %s\n%s", n, humanTime(a.LastSeen), escape(a.Summary))
	blocks = append(blocks, slackgo.NewSectionBlock(mrkdwn(truncate(head, maxSectionRunes)), nil, nil))
	blocks = appendFacts(blocks, a)
	if a.RunbookURL != "" {
		btn := slackgo.NewButtonBlockElement(actionRunbook, a.ID, plain(RunbookButtonText)).
			WithURL(a.RunbookURL).WithStyle(slackgo.StylePrimary)
		blocks = append(blocks, slackgo.NewActionBlock("actions", btn))
	}
	return message{text: notificationText(a, fmt.Sprintf("Reminder %d: ", n)), blocks: blocks}
}

// notificationText is the plain text of a message: severity, detector and summary.
// Slack shows it in notifications, which do not render blocks.
func notificationText(a *detectors.Alert, prefix string) string {
	return truncate(fmt.Sprintf("%s[%s] %s: %s", prefix, strings.ToUpper(string(a.Severity)), a.Detector, escape(a.Summary)), maxSectionRunes)
}

// ReplayCommand returns cmd with {from} and {to} replaced by the RFC 3339 times 15
// minutes before the alert's first_seen and after its last_seen, widened to whole
// seconds; "" when cmd is empty.
func ReplayCommand(cmd string, a *detectors.Alert) string {
	if cmd == "" {
		return ""
	}
	from := a.FirstSeen.Add(-replayMargin).UTC().Truncate(time.Second)
	to := a.LastSeen.Add(replayMargin).UTC()
	if t := to.Truncate(time.Second); !t.Equal(to) {
		to = t.Add(time.Second)
	}
	return strings.NewReplacer("{from}", from.Format(time.RFC3339), "{to}", to.Format(time.RFC3339)).Replace(cmd)
}

// appendFacts adds the key facts as section fields, ten to a section as Slack allows.
func appendFacts(blocks []slackgo.Block, a *detectors.Alert) []slackgo.Block {
	facts := facts(a)
	for len(facts) > 0 {
		n := min(len(facts), maxFields)
		fields := make([]*slackgo.TextBlockObject, n)
		for i, f := range facts[:n] {
			fields[i] = mrkdwn(truncate("*"+f.label+"*\n"+f.value, maxFieldRunes))
		}
		blocks = append(blocks, slackgo.NewSectionBlock(nil, fields, nil))
		facts = facts[n:]
	}
	return blocks
}

type fact struct{ label, value string }

// facts are the numbers a responder reads first. They come from whichever Evidence
// fields the detector filled, so a new detector's alerts render without code here.
func facts(a *detectors.Alert) []fact {
	e := &a.Evidence
	fs := []fact{
		{"Key", code(a.Key)},
		{"First seen", humanTime(a.FirstSeen)},
		{"Last seen", humanTime(a.LastSeen)},
	}
	add := func(label, value string) { fs = append(fs, fact{label, value}) }
	if route := strings.TrimSpace(e.Method + " " + e.Route); e.Route != "" && route != a.Key {
		add("Route", code(route))
	}
	if e.Window != "" {
		add("Window", escape(e.Window))
	}
	if e.TotalCount > 0 {
		v := fmt.Sprintf("%d of %d requests", e.ForbiddenCount, e.TotalCount)
		if e.Ratio > 0 {
			v += fmt.Sprintf(" (%.0f%%)", e.Ratio*100)
		}
		if e.Threshold > 0 {
			v += fmt.Sprintf("\nthreshold %d", e.Threshold)
			if e.MinRatio > 0 {
				v += fmt.Sprintf(", at least %.0f%%", e.MinRatio*100)
			}
		}
		add("Denied", v)
	}
	if len(e.StatusCounts) > 0 {
		parts := make([]string, len(e.StatusCounts))
		for i, sc := range e.StatusCounts {
			parts[i] = fmt.Sprintf("%d ×%d", sc.Status, sc.Count)
		}
		add("Statuses", strings.Join(parts, " · "))
	}
	if len(e.NewCountries) > 0 {
		parts := make([]string, len(e.NewCountries))
		for i, c := range e.NewCountries {
			parts[i] = escape(c.Country)
			if t, err := time.Parse(time.RFC3339, c.FirstSeen); err == nil {
				parts[i] += " (" + t.UTC().Format("15:04:05") + ")"
			}
		}
		add("New countries", strings.Join(parts, " · "))
	} else if e.NewCountry != "" {
		add("New country", escape(e.NewCountry))
	}
	if len(e.KnownCountries) > 0 {
		add("Known countries", list(e.KnownCountries, escape))
	}
	if e.KeyEvents > 0 {
		v := strconv.FormatUint(e.KeyEvents, 10) + " events"
		if t, err := time.Parse(time.RFC3339, e.KeyFirstSeen); err == nil {
			v += " since " + humanTime(t)
		}
		add("Key history", v)
	}
	if e.DeviceCount > 0 {
		v := strconv.Itoa(e.DeviceCount)
		if e.MaxDevices > 0 {
			v += fmt.Sprintf(" (at most %d expected)", e.MaxDevices)
		}
		add("Devices", v)
	}
	if len(e.Countries) > 0 {
		add("Countries", list(e.Countries, escape))
	}
	if e.ObservedCount > 0 {
		v := fmt.Sprintf("%d in the window", e.ObservedCount)
		if e.Expected != nil {
			v += fmt.Sprintf(" (%s expected)", num(*e.Expected))
		}
		if e.MinCount > 0 {
			v += fmt.Sprintf("\nat least %d to fire", e.MinCount)
		}
		add("Requests", v)
	}
	if e.BaselineRatePerMin != nil {
		v := num(*e.BaselineRatePerMin) + "/min"
		if e.QuietRate != nil {
			v += " (quiet: ≤ " + num(*e.QuietRate) + "/min)"
		}
		add("Baseline", v)
	}
	if e.PValue != nil {
		v := num(*e.PValue)
		if e.MaxPValue > 0 {
			v += " (fires below " + num(e.MaxPValue) + ")"
		}
		add("p-value", v)
	}
	if e.DistinctClients > 0 {
		add("Distinct clients", strconv.Itoa(e.DistinctClients))
	}
	if e.DistinctPaths > 0 {
		add("Distinct paths", strconv.Itoa(e.DistinctPaths))
	}
	return fs
}

// evidenceText lists the samples a responder pivots on in the raw logs: client IPs,
// keys, devices, paths and request ids, each as code so nothing in them is formatted
// or turned into a link or a mention.
func evidenceText(a *detectors.Alert) string {
	e := &a.Evidence
	var b strings.Builder
	line := func(label string, vals []string) {
		if len(vals) == 0 {
			return
		}
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		b.WriteString("*" + label + "* ")
		b.WriteString(list(vals, code))
	}
	line("Client IPs", e.ClientIPs)
	line("Client keys", e.ClientKeys)
	if len(e.DeviceEvents) > 0 {
		devs := make([]string, len(e.DeviceEvents))
		for i, d := range e.DeviceEvents {
			devs[i] = d.Device + " (" + strconv.Itoa(d.Events) + ")"
			if d.ClientIP != "" {
				devs[i] += " from " + d.ClientIP
			}
		}
		line("Devices (events)", devs)
	} else {
		line("Devices", e.Devices)
	}
	line("Sample paths", e.SamplePaths)
	line("Request ids", e.SampleRequestIDs)
	return truncate(b.String(), maxSectionRunes)
}

// footer identifies the alert for a search in the SIEM or the alert history.
func footer(a *detectors.Alert) string {
	var b strings.Builder
	b.WriteString("alert " + code(a.ID))
	if len(a.Labels) > 0 {
		keys := make([]string, 0, len(a.Labels))
		for k := range a.Labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			b.WriteString(" · " + escape(k) + "=" + escape(a.Labels[k]))
		}
	}
	b.WriteString(" · gatewatch")
	return truncate(b.String(), maxSectionRunes)
}

// list joins at most maxListed values, each formatted by f, and counts the rest.
func list(vals []string, f func(string) string) string {
	n := min(len(vals), maxListed)
	parts := make([]string, n, n+1)
	for i, v := range vals[:n] {
		parts[i] = f(v)
	}
	if rest := len(vals) - n; rest > 0 {
		parts = append(parts, fmt.Sprintf("+%d more", rest))
	}
	return strings.Join(parts, " ")
}

func emoji(s detectors.Severity) string {
	if e, ok := severityEmoji[s]; ok {
		return e
	}
	return ":grey_question:"
}

func humanTime(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// num prints a rate, count or probability compactly: 0.02, 27, 3.1e-12.
func num(f float64) string { return strconv.FormatFloat(f, 'g', 3, 64) }

// escape makes s safe as mrkdwn text. Slack's formatting reserves &, < and >: without
// escaping, a request path such as "/x<!channel>" from the attacker would notify the
// whole channel, and "<https://evil|runbook>" would render as a link.
func escape(s string) string {
	if !strings.ContainsAny(s, "&<>") {
		return s
	}
	return mrkdwnEscaper.Replace(s)
}

var mrkdwnEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

// code shows s verbatim as inline code; a backquote in s would end the code span, so
// it becomes a modifier letter grave accent, which looks the same.
func code(s string) string {
	if s == "" {
		return "–"
	}
	return "`" + escape(strings.ReplaceAll(s, "`", "ˋ")) + "`"
}

// truncate cuts s to at most n runes, marking the cut with an ellipsis.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func plain(s string) *slackgo.TextBlockObject {
	return slackgo.NewTextBlockObject(slackgo.PlainTextType, s, true, false)
}

func mrkdwn(s string) *slackgo.TextBlockObject {
	return slackgo.NewTextBlockObject(slackgo.MarkdownType, s, false, false)
}

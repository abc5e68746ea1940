package slack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	slackgo "github.com/slack-go/slack"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/internal/config"
)

// Actions is what the buttons of a message do. The console implements it over the
// store, the silences and the audit log; each is idempotent.
type Actions interface {
	// Acknowledge marks incident alertID as taken by user, and returns the
	// acknowledgement that stands (the first one).
	Acknowledge(ctx context.Context, alertID, user string) (alerting.Ack, error)
	// SilenceKey silences the key of incident alertID for d, authored by user. The
	// same requestID makes the same silence once.
	SilenceKey(ctx context.Context, alertID string, d time.Duration, user, requestID string) (alerting.SilenceRecord, error)
}

// InteractionOptions configure Interactions.
type InteractionOptions struct {
	// SigningSecret is the Slack app's signing secret; required (at least 16 bytes).
	SigningSecret config.Secret
	// Actions does what a button asks; required.
	Actions Actions
	// HTTPClient posts the updated message to the interaction's response_url; nil: a
	// client with a 10s timeout.
	HTTPClient *http.Client
	// Logger logs refused requests and failed updates; nil discards.
	Logger *slog.Logger
}

// Interactions is the HTTP endpoint of the Slack app's interactivity (its Request
// URL): Slack posts a block_actions payload there when someone clicks Acknowledge,
// Silence key 1h / 24h, or an incident's menu in a group message. Each request is
// verified with the app's signing secret (slack-go's SecretsVerifier: the HMAC of the
// body and a timestamp at most five minutes old); anything else is refused with 401.
// The action is carried out (idempotently: a replayed request acknowledges nothing
// twice and makes no second silence), then the message is rewritten through the
// interaction's response_url to show who did what.
type Interactions struct {
	secret  config.Secret
	actions Actions
	http    *http.Client
	log     *slog.Logger
}

// maxInteractionBody bounds a request: the payload carries the whole message.
const maxInteractionBody = 1 << 20

// MinSigningSecret is the shortest signing secret accepted (Slack's are 32 hex digits).
const MinSigningSecret = 16

// NewInteractions checks o.
func NewInteractions(o InteractionOptions) (*Interactions, error) {
	if len(o.SigningSecret.Reveal()) < MinSigningSecret {
		return nil, fmt.Errorf("slack: interactions need the app's signing secret (at least %d bytes)", MinSigningSecret)
	}
	if o.Actions == nil {
		return nil, errors.New("slack: InteractionOptions.Actions is required")
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Interactions{secret: o.SigningSecret, actions: o.Actions, http: o.HTTPClient, log: o.Logger.With("component", "alerting")}, nil
}

// silenceFor is how long each silence action lasts.
var silenceFor = map[string]time.Duration{actionSilence1h: time.Hour, actionSilence24: 24 * time.Hour, "silence_1h": time.Hour, "silence_24h": 24 * time.Hour}

func (h *Interactions) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxInteractionBody))
	if err != nil {
		http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
		return
	}
	sv, err := slackgo.NewSecretsVerifier(req.Header, h.secret.Reveal())
	if err == nil {
		_, _ = sv.Write(body)
		err = sv.Ensure()
	}
	if err != nil {
		h.log.Warn("slack interaction refused: not signed with the app's signing secret", "err", err, "remote", req.RemoteAddr)
		http.Error(w, "invalid signature", http.StatusUnauthorized)
		return
	}
	var cb slackgo.InteractionCallback
	form, err := parseForm(body)
	if err == nil {
		err = json.Unmarshal([]byte(form), &cb)
	}
	if err != nil {
		http.Error(w, "payload is not a Slack interaction", http.StatusBadRequest)
		return
	}
	if cb.Type != slackgo.InteractionTypeBlockActions {
		w.WriteHeader(http.StatusOK) // not ours to handle; Slack wants a 200
		return
	}
	user := "slack:" + cb.User.ID
	blocks := cb.Message.Blocks.BlockSet
	changed := false
	for _, act := range cb.ActionCallback.BlockActions {
		op, id := act.ActionID, act.Value
		if op == actionMenu {
			op, id, _ = strings.Cut(act.SelectedOption.Value, ":")
		}
		switch {
		case op == actionAck || op == "ack":
			ack, err := h.actions.Acknowledge(req.Context(), id, user)
			if err != nil {
				h.fail(w, "acknowledge", id, err)
				return
			}
			blocks, changed = markAcked(blocks, id, ack), true
		case silenceFor[op] > 0:
			rid := requestID(cb.ActionTs+act.ActionTs, cb.Container.MessageTs, op, id, cb.User.ID)
			s, err := h.actions.SilenceKey(req.Context(), id, silenceFor[op], user, rid)
			if err != nil {
				h.fail(w, "silence", id, err)
				return
			}
			blocks, changed = markSilenced(blocks, id, s), true
		}
	}
	w.WriteHeader(http.StatusOK)
	if !changed || cb.ResponseURL == "" {
		return
	}
	// Slack lets a response_url be used for 30 minutes; the update is done before
	// answering, within what Slack waits for an answer.
	ctx, cancel := context.WithTimeout(req.Context(), 2500*time.Millisecond)
	defer cancel()
	api := slackgo.New("", slackgo.OptionHTTPClient(h.http))
	_, _, err = api.PostMessageContext(ctx, cb.Channel.ID, slackgo.MsgOptionReplaceOriginal(cb.ResponseURL),
		slackgo.MsgOptionText(cb.Message.Text, false), slackgo.MsgOptionBlocks(blocks...))
	if err != nil {
		h.log.Warn("slack message not updated after an interaction", "err", alerting.RedactURL(err))
	}
}

// fail answers an action that could not be carried out; Slack shows the user that
// the app failed, and the log says why.
func (h *Interactions) fail(w http.ResponseWriter, what, id string, err error) {
	h.log.Error("slack interaction failed", "action", what, "alert_id", id, "err", err)
	http.Error(w, what+" failed", http.StatusInternalServerError)
}

// parseForm returns the payload parameter of a form-encoded body.
func parseForm(body []byte) (string, error) {
	req := &http.Request{Method: http.MethodPost, Header: http.Header{"Content-Type": {"application/x-www-form-urlencoded"}},
		Body: io.NopCloser(strings.NewReader(string(body)))}
	if err := req.ParseForm(); err != nil {
		return "", err
	}
	p := req.PostForm.Get("payload")
	if p == "" {
		return "", errors.New("no payload")
	}
	return p, nil
}

// requestID names one click: Slack sends the same action_ts when it delivers it again.
func requestID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return "slack-" + hex.EncodeToString(h.Sum(nil)[:12])
}

// markAcked rewrites a message's blocks to show the acknowledgement of incident id:
// an incident message gets the status line and loses its Acknowledge button; a group
// message's line of the incident says who, and its menu loses Acknowledge.
func markAcked(blocks []slackgo.Block, id string, ack alerting.Ack) []slackgo.Block {
	if i := memberIndex(blocks, id); i >= 0 {
		sec := blocks[i].(*slackgo.SectionBlock)
		if sec.Text != nil && !strings.Contains(sec.Text.Text, ":white_check_mark:") {
			sec.Text.Text = truncate(sec.Text.Text+"\n"+ackText(ack), maxSectionRunes)
		}
		if sec.Accessory != nil && sec.Accessory.OverflowElement != nil {
			o := sec.Accessory.OverflowElement
			o.Options = filterOptions(o.Options, "ack:")
		}
		return blocks
	}
	for _, b := range blocks {
		if ab, ok := b.(*slackgo.ActionBlock); ok && ab.Elements != nil {
			kept := ab.Elements.ElementSet[:0]
			for _, e := range ab.Elements.ElementSet {
				if btn, ok := e.(*slackgo.ButtonBlockElement); ok && btn.ActionID == actionAck {
					continue
				}
				kept = append(kept, e)
			}
			ab.Elements.ElementSet = kept
		}
	}
	return setContext(blocks, statusBlockID, ackText(ack))
}

// markSilenced rewrites a message's blocks to show the silence of incident id's key.
func markSilenced(blocks []slackgo.Block, id string, s alerting.SilenceRecord) []slackgo.Block {
	line := fmt.Sprintf(":no_bell: %s silenced until %s by %s", code(strings.Join(s.Match.Key, ", ")), humanTime(s.Expires), who(s.CreatedBy))
	if i := memberIndex(blocks, id); i >= 0 {
		sec := blocks[i].(*slackgo.SectionBlock)
		if sec.Text != nil && !strings.Contains(sec.Text.Text, line) {
			sec.Text.Text = truncate(sec.Text.Text+"\n"+line, maxSectionRunes)
		}
		return blocks
	}
	return setContext(blocks, silenceBlockID, line)
}

func filterOptions(opts []*slackgo.OptionBlockObject, prefix string) []*slackgo.OptionBlockObject {
	var out []*slackgo.OptionBlockObject
	for _, o := range opts {
		if !strings.HasPrefix(o.Value, prefix) {
			out = append(out, o)
		}
	}
	return out
}

// memberIndex returns the index of incident id's section in a group message, or -1.
func memberIndex(blocks []slackgo.Block, id string) int {
	for i, b := range blocks {
		if sec, ok := b.(*slackgo.SectionBlock); ok && sec.BlockID == memberBlockID+id {
			return i
		}
	}
	return -1
}

// setContext replaces the context block blockID, or adds it after the header: a
// second update of the same kind replaces the first rather than piling up.
func setContext(blocks []slackgo.Block, blockID, text string) []slackgo.Block {
	nb := slackgo.NewContextBlock(blockID, mrkdwn(text))
	for i, b := range blocks {
		if cb, ok := b.(*slackgo.ContextBlock); ok && cb.BlockID == blockID {
			blocks[i] = nb
			return blocks
		}
	}
	at := 0
	if len(blocks) > 0 && blocks[0].BlockType() == slackgo.MBTHeader {
		at = 1
	}
	return append(blocks[:at], append([]slackgo.Block{nb}, blocks[at:]...)...)
}

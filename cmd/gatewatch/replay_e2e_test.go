package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting/slacktest"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// TestReplayReproducesLiveAlerts is the forensic round trip, against the loopback
// broker and a real clickhouse-server. gatewatch run consumes two hours of traffic with
// every attack from four partitions, archiving it in ClickHouse and paging Slack; then
// the same range replayed from Kafka, and from the archive, raises exactly the
// incidents live raised, with the same ids; and the replay command each Slack message
// shows, run as printed, raises that message's alert again, with its id; and so does it
// pointed at a copy of the topic shipped as a backlog, its records stamped when they
// were sent, after all of their events, where Kafka timestamps cannot end the range: it
// ends by event time. A range that holds no record is an error, not an empty success.
func TestReplayReproducesLiveAlerts(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end: runs gatewatch as a subprocess")
	}
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	e := newE2E(t, "waf-logs", "waf-backlog")
	e.store = fmt.Sprintf("  clickhouse: {addr: [%s], database: %s}", addr, db)
	e.writeConfig(t, map[string]string{"waf-logs": ingest.FormatAWSWAF}, "")
	reqs, injected := liveTraffic(t, 29)
	e.produce(t, "waf-logs", ingest.FormatAWSWAF, reqs, nil, nil)
	e.stampNow = true
	e.produce(t, "waf-backlog", ingest.FormatAWSWAF, reqs, nil, nil)
	p := startRun(t, e.config)
	e.waitPosts(t, p, len(injected), 5*time.Minute)
	e.waitMetric(t, p, float64(len(reqs)), time.Minute, "gatewatch_ingest_events_total")
	// SIGTERM flushes the engine: an incident nobody expects is in the history after it.
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	live, named := liveAlerts(t, e.config)
	if len(live) != len(injected) {
		t.Fatalf("live raised %d incidents, want one per attack (%d): %v", len(live), len(injected), named)
	}
	posted := len(e.slack.Messages())

	from := reqs[0].Time.Truncate(time.Second).Format(time.RFC3339)
	to := reqs[len(reqs)-1].Time.Add(time.Second).Truncate(time.Second).Format(time.RFC3339)
	for _, src := range [][]string{
		{"--kafka", strings.Join(e.kafka.Addrs, ","), "--topic", "waf-logs"},
		{"--archive"},
	} {
		args := append([]string{"replay", "--config", e.config, "--from", from, "--to", to}, src...)
		out, errOut, code := runCmd(t, "", args...)
		got := alertIDs(t, out)
		slices.Sort(got)
		if code != 0 || !slices.Equal(got, live) {
			t.Errorf("%s: exit %d, ids %v, want live's %v\n%s", src[0], code, got, live, lastLines(errOut, 20))
		}
	}

	// Each Slack message's replay command, as printed.
	for _, m := range e.posts() {
		id, cmd := slackReplay(t, m)
		args := strings.Fields(cmd)
		if len(args) < 2 || args[0] != "gatewatch" {
			t.Fatalf("replay command %q", cmd)
		}
		out, errOut, code := runCmd(t, "", args[1:]...)
		if code != 0 || !slices.Contains(alertIDs(t, out), id) {
			var got []string
			for _, a := range alertsOf(t, out) {
				mark := ""
				if !slices.Contains(live, a.ID) {
					mark = ", not raised live"
				}
				got = append(got, fmt.Sprintf("%s (%s %s%s)", a.ID, a.Detector, a.Key, mark))
			}
			t.Errorf("%s: exit %d, alert %s (%s) not raised again; raised %v\n%s", cmd, code, id, named[id], got, lastLines(errOut, 20))
		}
		// Nor anything live did not: the baselines as of --from keep what live knew
		// then, peaks reached after it included (rebuilt from the archive), and an
		// incident under way at --from goes on under live's id.
		for _, a := range alertsOf(t, out) {
			if !slices.Contains(live, a.ID) {
				t.Errorf("%s: raised %s (%s %s), which live did not\n%s", cmd, a.ID, a.Detector, a.Key, lastLines(errOut, 20))
			}
		}
		if !strings.Contains(errOut, "baselines as the store had them at") {
			t.Errorf("%s: the baselines did not come from the store:\n%s", cmd, lastLines(errOut, 20))
		}
		backlog := strings.Replace(cmd, "--topic waf-logs", "--topic waf-backlog --format awswaf", 1)
		out, errOut, code = runCmd(t, "", strings.Fields(backlog)[1:]...)
		if code != 0 || !slices.Contains(alertIDs(t, out), id) {
			t.Errorf("%s: exit %d, alert %s (%s) not raised again from the backlog\n%s", backlog, code, id, named[id], lastLines(errOut, 20))
		}
	}
	// A year before the traffic, the topic holds nothing.
	yearAgo := reqs[0].Time.AddDate(-1, 0, 0)
	_, errOut, code := runCmd(t, "", "replay", "--config", e.config, "--kafka", strings.Join(e.kafka.Addrs, ","), "--topic", "waf-logs",
		"--from", yearAgo.Format(time.RFC3339), "--to", yearAgo.Add(time.Hour).Format(time.RFC3339))
	if code != 1 || !strings.Contains(errOut, "holds no record in the range") {
		t.Errorf("a range without records: exit %d, want 1 and why\n%s", code, lastLines(errOut, 10))
	}
	// Without --send, a replay reaches no receiver.
	if n := len(e.slack.Messages()); n != posted {
		t.Errorf("Slack got %d messages during the replays, want none", n-posted)
	}
}

// liveAlerts returns the ids of the alert history of the store config names, sorted,
// and each one's detector and key.
func liveAlerts(t *testing.T, config string) ([]string, map[string]string) {
	t.Helper()
	cfg, err := loadConfigFile(config)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	named := map[string]string{}
	for _, r := range alertHistory(t, cfg.Store) {
		ids = append(ids, r.Alert.ID)
		named[r.Alert.ID] = r.Alert.Detector + " " + r.Alert.Key
	}
	slices.Sort(ids)
	return slices.Compact(ids), named
}

var replayInBlocks = regexp.MustCompile("```(gatewatch replay [^`]+)```")

// slackReplay returns the alert id of a Slack message (its runbook button's value) and
// the replay command it shows, as a person reads it off the message.
func slackReplay(t *testing.T, m slacktest.Message) (id, cmd string) {
	t.Helper()
	var blocks []struct {
		Text *struct {
			Text string `json:"text"`
		} `json:"text"`
		Elements []struct {
			ActionID string `json:"action_id"`
			Value    string `json:"value"`
		} `json:"elements"`
	}
	if err := json.Unmarshal(m.Blocks, &blocks); err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		for _, el := range b.Elements {
			if el.ActionID == "runbook" {
				id = el.Value
			}
		}
		if b.Text == nil {
			continue
		}
		// Slack's mrkdwn escapes &, < and >.
		text := strings.NewReplacer("&lt;", "<", "&gt;", ">", "&amp;", "&").Replace(b.Text.Text)
		if mm := replayInBlocks.FindStringSubmatch(text); mm != nil {
			cmd = mm[1]
		}
	}
	if id == "" || cmd == "" {
		t.Fatalf("message without an alert id or a replay command: %s", m.Blocks)
	}
	return id, cmd
}

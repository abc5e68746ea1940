package syslog

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/detectors"
)

func stormGroup(n int) alerting.Group {
	base := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	g := alerting.Group{Key: "5d1c0ffee0ddf00d5eedbeef", Labels: map[string]string{"detector": detectors.ForbiddenBurst}}
	for i := range n {
		first := base.Add(time.Duration(i) * time.Second)
		g.Alerts = append(g.Alerts, alertingtest.NewAlert(detectors.ForbiddenBurst, fmt.Sprintf("key-%04d", i), first, first.Add(time.Minute)))
	}
	return g
}

// TestGroupSummaryGolden: the exact summary line of a group, JSON and CEF.
func TestGroupSummaryGolden(t *testing.T) {
	g := stormGroup(3)
	var got strings.Builder
	for _, format := range []string{"json", "cef"} {
		b, err := newReceiver(t, alerting.SyslogConfig{Format: format}).AppendGroupMessage(nil, &g)
		if err != nil {
			t.Fatal(err)
		}
		got.Write(b)
		got.WriteByte('\n')
	}
	golden := filepath.Join("testdata", "group.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != string(want) {
		t.Errorf("group summary differs from %s (run with -update and review the diff):\n%s", golden, got.String())
	}
}

// TestGroupSummaryRsyslog: a storm of 200 incidents is one line at rsyslog, which
// parses it as RFC 5424, names 50 incidents by id and counts the other 150.
func TestGroupSummaryRsyslog(t *testing.T) {
	rs := startRsyslog(t, 0)
	r := newReceiver(t, alerting.SyslogConfig{Address: rs.TCPAddr})
	g := stormGroup(200)
	if retry, err := r.NotifyGroup(context.Background(), g); err != nil {
		t.Fatalf("NotifyGroup = (%v, %v)", retry, err)
	}
	got := rs.waitLines(t, rs.raw, 1)
	time.Sleep(200 * time.Millisecond) // a second line would come now
	if n := len(lines(rs.raw)); n != 1 {
		t.Fatalf("rsyslog got %d lines for one group, want 1", n)
	}
	line := got[0]
	if !strings.Contains(line, ` - group [gatewatch@32473 group="5d1c0ffee0ddf00d5eedbeef" count="200"`) {
		t.Errorf("summary header/structured data wrong:\n%s", line)
	}
	var s groupSummary
	if err := json.Unmarshal([]byte(line[strings.Index(line, "{"):]), &s); err != nil {
		t.Fatalf("payload is not JSON: %v\n%s", err, line)
	}
	if s.Count != 200 || len(s.Alerts) != 50 || s.More != 150 || s.Alerts[0].ID != g.Alerts[0].ID {
		t.Errorf("summary = count %d, %d listed, %d more; want 200, 50, 150", s.Count, len(s.Alerts), s.More)
	}
	// An ungrouped delivery is one line per alert, as before.
	if _, err := r.NotifyGroup(context.Background(), alerting.Group{Alerts: g.Alerts[:2]}); err != nil {
		t.Fatal(err)
	}
	rs.waitLines(t, rs.raw, 3)
}

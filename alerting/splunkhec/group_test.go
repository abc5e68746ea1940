package splunkhec

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/alerting/splunkhec/hectest"
	"github.com/gatewatch/gatewatch/detectors"
)

// TestGroupOneRequest: a group of 300 incidents is one HEC request whatever batch_size
// says, each incident its own event carrying the group's key; an ungrouped delivery
// keeps batch_size.
func TestGroupOneRequest(t *testing.T) {
	srv := hectest.New(t, hectest.Options{})
	r := newReceiver(t, srv, alerting.SplunkHECConfig{BatchSize: 100})
	base := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	g := alerting.Group{Key: "5d1c0ffee0ddf00d5eedbeef", Labels: map[string]string{"detector": detectors.ForbiddenBurst}}
	for i := range 300 {
		first := base.Add(time.Duration(i) * time.Second)
		g.Alerts = append(g.Alerts, alertingtest.NewAlert(detectors.ForbiddenBurst, fmt.Sprintf("key-%04d", i), first, first.Add(time.Minute)))
	}
	if retry, err := r.NotifyGroup(context.Background(), g); err != nil {
		t.Fatalf("NotifyGroup = (%v, %v)", retry, err)
	}
	if n := len(srv.Requests()); n != 1 {
		t.Fatalf("a group of 300 took %d requests, want 1", n)
	}
	events := srv.Events()
	if len(events) != 300 {
		t.Fatalf("%d events, want 300", len(events))
	}
	for i, ev := range events {
		var e struct {
			SchemaVersion string `json:"schema_version"`
			Group         string `json:"group"`
			ID            string `json:"id"`
		}
		if err := json.Unmarshal(ev.Event, &e); err != nil || e.Group != g.Key || e.ID != g.Alerts[i].ID || e.SchemaVersion != SchemaVersion {
			t.Fatalf("event %d = %s (%v), want alert %s with group %s", i, ev.Event, err, g.Alerts[i].ID, g.Key)
		}
	}
	if _, err := r.NotifyGroup(context.Background(), alerting.Group{Alerts: g.Alerts[:250]}); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.Requests()); n != 4 {
		t.Errorf("an ungrouped delivery of 250 took %d requests, want 3 of batch_size 100", n-1)
	}
}

package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestDemoCatchesEveryAttack runs the demo end to end (`run`'s pipeline on the
// embedded broker: three gateways' formats on topics of several partitions, the
// embedded store, the router and outbox) on a short run and checks it raises one
// incident per attack and nothing else.
func TestDemoCatchesEveryAttack(t *testing.T) {
	out, errOut, code := runCmd(t, "", "demo", "--duration", "1h", "--rate", "4", "--seed", "3", "--json")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	incidents := map[string]string{} // id → detector; updates share the id
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var a struct {
			ID, Detector string
		}
		if err := json.Unmarshal([]byte(line), &a); err != nil || a.ID == "" {
			t.Fatalf("stdout line %q is not an alert: %v", line, err)
		}
		incidents[a.ID] = a.Detector
	}
	var detectors []string
	for _, d := range incidents {
		detectors = append(detectors, d)
	}
	slices.Sort(detectors)
	if want := []string{"auth_failure_spray", "client_volume_spike", "forbidden_burst", "new_country", "object_enumeration",
		"privilege_anomaly", "quiet_endpoint_spike", "route_scan", "token_reuse"}; !slices.Equal(detectors, want) {
		t.Errorf("alerts from %v, want one from each of %v\n%s", detectors, want, errOut)
	}
	if strings.Contains(errOut, "MISSED") {
		t.Errorf("demo reports a missed attack:\n%s", errOut)
	}
}

// TestDemoForAPerson: without --json each incident is printed for a person: severity,
// detector and summary, the key facts, the runbook; no colour when stdout is no terminal.
func TestDemoForAPerson(t *testing.T) {
	out, errOut, code := runCmd(t, "", "demo", "--duration", "1h", "--rate", "4", "--seed", "3")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	for _, want := range []string{"HIGH     new_country: Client key", "MEDIUM   forbidden_burst:", "runbook: https://", "caught"} {
		if !strings.Contains(out+errOut, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\033[") {
		t.Error("colour codes written to a stdout that is not a terminal")
	}
}

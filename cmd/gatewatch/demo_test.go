package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestDemoCatchesEveryAttack runs the demo end to end (embedded broker, Kafka source,
// parser, detectors) on a short run and checks it raises one incident per attack.
func TestDemoCatchesEveryAttack(t *testing.T) {
	out, errOut, code := runCmd(t, "", "demo", "--duration", "1h", "--rate", "4", "--seed", "3")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	var detectors []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var a struct {
			ID, Detector string
		}
		if err := json.Unmarshal([]byte(line), &a); err != nil || a.ID == "" {
			t.Fatalf("stdout line %q is not an alert: %v", line, err)
		}
		detectors = append(detectors, a.Detector)
	}
	slices.Sort(detectors)
	if want := []string{"forbidden_burst", "new_country", "quiet_endpoint_spike", "token_reuse"}; !slices.Equal(detectors, want) {
		t.Errorf("alerts from %v, want one from each of %v\n%s", detectors, want, errOut)
	}
	if strings.Contains(errOut, "MISSED") {
		t.Errorf("demo reports a missed attack:\n%s", errOut)
	}
}

package alertingtest

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"testing"

	"github.com/gatewatch/gatewatch/detectors"
)

// sampleAlerts are the alerts `gatewatch replay --updates` raised for generated traffic
// (`gatewatch generate --seed 7`) with one attack per detector, each incident with its
// versions, runbook URLs filled in: realistic input for receiver payload tests. The
// incidents of the five detectors added later (object_enumeration to route_scan) are
// those `gatewatch demo --json` raised, appended.
//
//go:embed alerts.jsonl
var sampleAlerts []byte

// Sample returns the sample alerts, freshly decoded.
func Sample(t testing.TB) []detectors.Alert {
	t.Helper()
	var out []detectors.Alert
	sc := bufio.NewScanner(bytes.NewReader(sampleAlerts))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var a detectors.Alert
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("alertingtest: sample alerts: %v", err)
		}
		out = append(out, a)
	}
	return out
}

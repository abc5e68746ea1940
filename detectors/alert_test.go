package detectors

import (
	"encoding/json"
	"testing"
	"time"
)

func TestAlertID(t *testing.T) {
	start := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	id := AlertID(TokenReuse, "abc", start)
	if len(id) != 32 {
		t.Errorf("AlertID = %q, want 32 hex digits", id)
	}
	for _, tc := range []struct {
		name     string
		det, key string
		at       time.Time
		same     bool
	}{
		{"same inputs", TokenReuse, "abc", start, true},
		{"other zone, same instant", TokenReuse, "abc", start.In(time.FixedZone("X", 3600)), true},
		{"sub-millisecond difference", TokenReuse, "abc", start.Add(999 * time.Microsecond), true},
		{"next millisecond", TokenReuse, "abc", start.Add(time.Millisecond), false},
		{"other key", TokenReuse, "abd", start, false},
		{"other detector", ForbiddenBurst, "abc", start, false},
		{"field boundary moved", TokenReuse + "a", "bc", start, false},
	} {
		if got := AlertID(tc.det, tc.key, tc.at); (got == id) != tc.same {
			t.Errorf("%s: AlertID(%q, %q, %s) = %q; same as %q: %v, want %v", tc.name, tc.det, tc.key, tc.at, got, id, got == id, tc.same)
		}
	}
}

func TestAlertJSON(t *testing.T) {
	rate, p := 0.0, 0.0
	a := Alert{
		ID:         "0123",
		Detector:   QuietEndpointSpike,
		Severity:   SeverityMedium,
		Key:        "GET /v1/export",
		FirstSeen:  time.Date(2026, 3, 1, 10, 0, 0, 123456789, time.FixedZone("CET", 3600)),
		LastSeen:   time.Date(2026, 3, 1, 9, 5, 0, 0, time.UTC),
		Summary:    "s",
		Evidence:   Evidence{Window: "5m0s", BaselineRatePerMin: &rate, PValue: &p, ObservedCount: 40},
		RunbookURL: "https://runbooks.example.com/gatewatch/quiet_endpoint_spike.md",
		Labels:     map[string]string{"z": "1", "a": "2"},
	}
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"0123","detector":"quiet_endpoint_spike","severity":"medium","key":"GET /v1/export",` +
		`"first_seen":"2026-03-01T09:00:00.123Z","last_seen":"2026-03-01T09:05:00.000Z","summary":"s",` +
		`"evidence":{"window":"5m0s","baseline_rate_per_min":0,"observed_count":40,"p_value":0},` +
		`"runbook_url":"https://runbooks.example.com/gatewatch/quiet_endpoint_spike.md","labels":{"a":"2","z":"1"}}`
	if string(b) != want {
		t.Errorf("json.Marshal(alert) =\n%s\nwant\n%s", b, want)
	}
	var back Alert
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !back.FirstSeen.Equal(a.FirstSeen.Truncate(time.Millisecond)) || back.Key != a.Key || *back.Evidence.PValue != 0 {
		t.Errorf("round trip gave %+v", back)
	}
	if b, _ := json.Marshal(Alert{}); string(b) == "" || !json.Valid(b) {
		t.Errorf("zero alert marshals to %s", b)
	}
}

func TestRunbookURL(t *testing.T) {
	for _, tc := range []struct{ override, base, want string }{
		{"", "https://rb.example.com/gatewatch", "https://rb.example.com/gatewatch/token_reuse.md"},
		{"", "https://rb.example.com/gatewatch/", "https://rb.example.com/gatewatch/token_reuse.md"},
		{"https://wiki.example.com/tr", "https://rb.example.com", "https://wiki.example.com/tr"},
		{"", "", ""},
	} {
		if got := runbookURL(tc.override, tc.base, TokenReuse); got != tc.want {
			t.Errorf("runbookURL(%q, %q) = %q, want %q", tc.override, tc.base, got, tc.want)
		}
	}
}

func TestSeverityRaise(t *testing.T) {
	for in, want := range map[Severity]Severity{SeverityLow: SeverityMedium, SeverityHigh: SeverityCritical, SeverityCritical: SeverityCritical} {
		if got := in.raise(); got != want {
			t.Errorf("%s.raise() = %s, want %s", in, got, want)
		}
	}
}

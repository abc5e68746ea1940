package detectors

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"go.yaml.in/yaml/v3"
)

// Detector names, as they appear in alerts, config and metric labels.
const (
	NewCountry         = "new_country"
	TokenReuse         = "token_reuse"
	ForbiddenBurst     = "forbidden_burst"
	QuietEndpointSpike = "quiet_endpoint_spike"
	ObjectEnumeration  = "object_enumeration"
	AuthFailureSpray   = "auth_failure_spray"
	PrivilegeAnomaly   = "privilege_anomaly"
	ClientVolumeSpike  = "client_volume_spike"
	RouteScan          = "route_scan"
)

// Names lists every detector, in the order the engine reports them.
var Names = []string{NewCountry, TokenReuse, ForbiddenBurst, QuietEndpointSpike,
	ObjectEnumeration, AuthFailureSpray, PrivilegeAnomaly, ClientVolumeSpike, RouteScan}

// Severity ranks an alert: low, medium, high or critical.
type Severity string

// The severities, lowest first.
const (
	SeverityLow      Severity = "low"
	SeverityMedium   Severity = "medium"
	SeverityHigh     Severity = "high"
	SeverityCritical Severity = "critical"
)

var severities = []Severity{SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}

// rank orders severities; an unknown one ranks below low.
func (s Severity) rank() int {
	for i, v := range severities {
		if v == s {
			return i
		}
	}
	return -1
}

// Valid reports whether s is one of the four severities.
func (s Severity) Valid() bool { return s.rank() >= 0 }

// raise returns the severity one step above s, at most critical.
func (s Severity) raise() Severity {
	r := s.rank()
	if r < 0 {
		return s
	}
	return severities[min(r+1, len(severities)-1)]
}

// UnmarshalYAML rejects anything but the four severities, with the line of the value.
func (s *Severity) UnmarshalYAML(n *yaml.Node) error {
	var v string
	if err := n.Decode(&v); err != nil {
		return err
	}
	if !Severity(v).Valid() {
		// A TypeError, so that the decoder goes on and reports the file's other errors too.
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: severity must be low, medium, high or critical, got %q", n.Line, v)}}
	}
	*s = Severity(v)
	return nil
}

// An Alert is what the detectors raise and every receiver gets. Its JSON form is the
// contract in DESIGN.md; MarshalJSON writes it with times in UTC and milliseconds.
// An update of an incident has the same ID as the alert that opened it and a later
// LastSeen.
type Alert struct {
	ID         string            `json:"id"`
	Detector   string            `json:"detector"`
	Severity   Severity          `json:"severity"`
	Key        string            `json:"key"`
	FirstSeen  time.Time         `json:"first_seen"` // event time
	LastSeen   time.Time         `json:"last_seen"`  // event time
	Summary    string            `json:"summary"`    // one sentence for a human
	Evidence   Evidence          `json:"evidence"`
	RunbookURL string            `json:"runbook_url"`
	Labels     map[string]string `json:"labels"` // encoding/json writes map keys sorted
}

// alertJSON is Alert with its times formatted by the contract; a separate type keeps
// MarshalJSON from recursing and the field order that of the contract.
type alertJSON struct {
	ID         string            `json:"id"`
	Detector   string            `json:"detector"`
	Severity   Severity          `json:"severity"`
	Key        string            `json:"key"`
	FirstSeen  string            `json:"first_seen"`
	LastSeen   string            `json:"last_seen"`
	Summary    string            `json:"summary"`
	Evidence   Evidence          `json:"evidence"`
	RunbookURL string            `json:"runbook_url"`
	Labels     map[string]string `json:"labels"`
}

// MarshalJSON writes the contract's form; decoding needs no counterpart because
// time.Time reads RFC 3339 with milliseconds.
func (a Alert) MarshalJSON() ([]byte, error) {
	labels := a.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	return json.Marshal(alertJSON{
		ID:         a.ID,
		Detector:   a.Detector,
		Severity:   a.Severity,
		Key:        a.Key,
		FirstSeen:  formatTime(a.FirstSeen),
		LastSeen:   formatTime(a.LastSeen),
		Summary:    a.Summary,
		Evidence:   a.Evidence,
		RunbookURL: a.RunbookURL,
		Labels:     labels,
	})
}

func formatTime(t time.Time) string { return t.UTC().Format(ingest.TimeLayout) }

// msTime turns the engine's millisecond clock into a time.Time in UTC.
func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// Evidence is what an alert rests on. Each detector fills the fields that apply to it
// and leaves the others empty, so receivers read them typed. Lists are sorted.
type Evidence struct {
	// The window the counts were taken over (windowed detectors), with its bounds.
	Window      string `json:"window,omitempty"`
	WindowStart string `json:"window_start,omitempty"`
	WindowEnd   string `json:"window_end,omitempty"`

	// forbidden_burst: responses with a listed status, all requests, their ratio.
	Statuses       []int         `json:"statuses,omitempty"`
	StatusCounts   []StatusCount `json:"status_counts,omitempty"`
	ForbiddenCount int           `json:"forbidden_count,omitempty"`
	TotalCount     int           `json:"total_count,omitempty"`
	Ratio          float64       `json:"ratio,omitempty"`
	MinRatio       float64       `json:"min_ratio,omitempty"`
	Threshold      int           `json:"threshold,omitempty"`
	DistinctPaths  int           `json:"distinct_paths,omitempty"`

	// new_country: the first new country, every new country of the incident, the
	// countries the key's baseline held, and how established the key was.
	NewCountry     string        `json:"new_country,omitempty"`
	NewCountries   []CountrySeen `json:"new_countries,omitempty"`
	KnownCountries []string      `json:"known_countries,omitempty"`
	KeyEvents      uint64        `json:"key_events,omitempty"`
	KeyFirstSeen   string        `json:"key_first_seen,omitempty"`

	// token_reuse: the devices in the window and their events.
	Devices      []string       `json:"devices,omitempty"`
	DeviceCount  int            `json:"device_count,omitempty"`
	MaxDevices   int            `json:"max_devices,omitempty"`
	DeviceEvents []DeviceEvents `json:"device_events,omitempty"`
	Countries    []string       `json:"countries,omitempty"`

	// quiet_endpoint_spike and client_volume_spike: the route, the baseline and how
	// improbable the count is; with object_enumeration, the recent peak the count is
	// compared with. Pointers, because a rate, p-value or peak of zero is evidence too.
	Method             string   `json:"method,omitempty"`
	Route              string   `json:"route,omitempty"`
	BaselineRatePerMin *float64 `json:"baseline_rate_per_min,omitempty"`
	QuietRate          *float64 `json:"quiet_rate,omitempty"`
	ObservedCount      int      `json:"observed_count,omitempty"`
	MinCount           int      `json:"min_count,omitempty"`
	Expected           *float64 `json:"expected,omitempty"`
	PValue             *float64 `json:"p_value,omitempty"`
	MaxPValue          float64  `json:"max_p_value,omitempty"`
	RecentPeak         *float64 `json:"recent_peak,omitempty"`
	MinPeakRatio       float64  `json:"min_peak_ratio,omitempty"`
	DistinctClients    int      `json:"distinct_clients,omitempty"`
	// quiet_endpoint_spike: how the endpoint answered the requests, by status class.
	StatusClasses []ClassCount `json:"status_classes,omitempty"`

	// object_enumeration: the distinct objects (paths of one route template) the
	// client requested in the window.
	DistinctObjects int `json:"distinct_objects,omitempty"`
	MinDistinct     int `json:"min_distinct,omitempty"`

	// auth_failure_spray and route_scan: the responses that counted (statuses, or WAF
	// actions for route_scan), the distinct credentials or route templates among them.
	FailureCount        int      `json:"failure_count,omitempty"`
	DistinctCredentials int      `json:"distinct_credentials,omitempty"`
	MinCredentials      int      `json:"min_credentials,omitempty"`
	DistinctRoutes      int      `json:"distinct_routes,omitempty"`
	MinRoutes           int      `json:"min_routes,omitempty"`
	Actions             []string `json:"actions,omitempty"`
	BlockedCount        int      `json:"blocked_count,omitempty"`

	// privilege_anomaly: the key's successful privileged requests in the window, how
	// many of them have no response status in the log (an AWS WAF ALLOW: they went on
	// to the origin, which may have refused them), the privileged routes they went to,
	// and the key's last privileged request before (empty: none within history).
	PrivilegedCount     int      `json:"privileged_count,omitempty"`
	UnloggedStatusCount int      `json:"unlogged_status_count,omitempty"`
	PrivilegedRoutes    []string `json:"privileged_routes,omitempty"`
	LastPrivileged      string   `json:"last_privileged,omitempty"`
	History             string   `json:"history,omitempty"`

	// Samples of the events behind the alert, for pivoting to the raw logs.
	ClientKeys       []string `json:"client_keys,omitempty"`
	TokenFPs         []string `json:"token_fps,omitempty"`
	UserAgents       []string `json:"user_agents,omitempty"`
	SampleRoutes     []string `json:"sample_routes,omitempty"`
	ClientIPs        []string `json:"client_ips,omitempty"`
	SamplePaths      []string `json:"sample_paths,omitempty"`
	SampleRequestIDs []string `json:"sample_request_ids,omitempty"`
}

// StatusCount is how many responses in a window had one status.
type StatusCount struct {
	Status int `json:"status"`
	Count  int `json:"count"`
}

// ClassCount is how many counted responses had a status of one class ("2xx", "4xx",
// ...; "none" when the log carries no status).
type ClassCount struct {
	Class string `json:"class"`
	Count int    `json:"count"`
}

// CountrySeen is a country new to a key and the event time it was first seen from.
type CountrySeen struct {
	Country   string `json:"country"`
	FirstSeen string `json:"first_seen"`
}

// DeviceEvents is how many events of a token came from one device in the window, the
// address the device used when it first came (see trDev), and the start of the first
// bucket of the window it was seen in (token_reuse's buckets are a twentieth of its
// window): the device that came last is most often the one to look at.
type DeviceEvents struct {
	Device      string `json:"device"`
	Events      int    `json:"events"`
	ClientIP    string `json:"client_ip,omitempty"`
	FirstBucket string `json:"first_bucket,omitempty"`
}

// AlertID is stable across runs, replicas and replays: the same detector, key and
// incident start always give the same id. Fields are length-prefixed, so ("ab", "c")
// and ("a", "bc") differ.
func AlertID(detector, key string, incidentStart time.Time) string {
	h := sha256.New()
	var buf [8]byte
	for _, s := range []string{detector, key} {
		binary.BigEndian.PutUint32(buf[:4], uint32(len(s)))
		h.Write(buf[:4])
		h.Write([]byte(s))
	}
	binary.BigEndian.PutUint64(buf[:], uint64(incidentStart.UnixMilli()))
	h.Write(buf[:])
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// runbookURL is the link an alert of detector carries: the detector's own runbook
// setting, else base/detector.md, else empty.
func runbookURL(override, base, detector string) string {
	if override != "" {
		return override
	}
	if base == "" {
		return ""
	}
	return strings.TrimRight(base, "/") + "/" + detector + ".md"
}

package kafkasink

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strconv"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// OCSFVersion is the version of the Open Cybersecurity Schema Framework the ocsf format
// follows: the Detection Finding class (uid 2004) as published in OCSF 1.3.0
// (schema.ocsf.io/1.3.0/classes/detection_finding), including its evidences attribute
// (Evidence Artifacts: actor, api, src_endpoint, url, data), the Observable type ids of
// 1.3.0 (2 IP Address, 99 Other) and the User object's credential_uid. Later 1.x
// versions only add attributes, so a 1.x consumer reads these events.
const OCSFVersion = "1.3.0"

// Detection Finding constants, OCSF 1.3.0.
const (
	ocsfClassUID     = 2004 // Detection Finding
	ocsfCategoryUID  = 2    // Findings
	ocsfActivityNew  = 1    // Create: a finding was created
	ocsfActivityUpd  = 2    // Update: a finding was updated
	ocsfStatusNew    = 1    // New: not yet reviewed
	obsIPAddress     = 2
	obsOther         = 99
	maxOCSFEvidences = 10 // one per client IP, the first also carrying the rest
)

var ocsfSeverity = map[detectors.Severity]struct {
	id   int
	name string
}{
	detectors.SeverityLow:      {2, "Low"},
	detectors.SeverityMedium:   {3, "Medium"},
	detectors.SeverityHigh:     {4, "High"},
	detectors.SeverityCritical: {5, "Critical"},
}

// analytics describes each detector as OCSF's Analytic object: its kind (1 Rule,
// 2 Behavioral, 3 Statistical) and what it detects, which becomes finding_info.desc.
var analytics = map[string]struct {
	typeID int
	kind   string
	desc   string
}{
	detectors.NewCountry: {2, "Behavioral",
		"An established API key was used from a country that is not in its baseline."},
	detectors.TokenReuse: {2, "Behavioral",
		"One bearer token or API key was used from more devices than allowed within the window: a sign of a stolen or shared credential."},
	detectors.ForbiddenBurst: {1, "Rule",
		"A client received a burst of forbidden responses that made up a large share of its requests: a sign of authorization probing."},
	detectors.QuietEndpointSpike: {3, "Statistical",
		"A normally quiet endpoint received a number of requests that is improbable under its baseline."},
}

type ocsfFinding struct {
	ActivityID   int              `json:"activity_id"`
	ActivityName string           `json:"activity_name"`
	CategoryUID  int              `json:"category_uid"`
	CategoryName string           `json:"category_name"`
	ClassUID     int              `json:"class_uid"`
	ClassName    string           `json:"class_name"`
	TypeUID      int              `json:"type_uid"`
	TypeName     string           `json:"type_name"`
	SeverityID   int              `json:"severity_id"`
	Severity     string           `json:"severity"`
	StatusID     int              `json:"status_id"`
	Status       string           `json:"status"`
	Time         int64            `json:"time"`
	StartTime    int64            `json:"start_time"`
	EndTime      int64            `json:"end_time"`
	Count        int              `json:"count,omitempty"`
	Message      string           `json:"message"`
	Metadata     ocsfMetadata     `json:"metadata"`
	FindingInfo  ocsfFindingInfo  `json:"finding_info"`
	Evidences    []ocsfEvidence   `json:"evidences,omitempty"`
	Observables  []ocsfObservable `json:"observables,omitempty"`
}

type ocsfMetadata struct {
	Version        string      `json:"version"`
	Product        ocsfProduct `json:"product"`
	UID            string      `json:"uid"`             // this version of the finding
	CorrelationUID string      `json:"correlation_uid"` // every version of the incident
	Labels         []string    `json:"labels,omitempty"`
}

type ocsfProduct struct {
	Name       string `json:"name"`
	VendorName string `json:"vendor_name"`
	Version    string `json:"version,omitempty"`
}

type ocsfFindingInfo struct {
	UID           string       `json:"uid"`
	Title         string       `json:"title"`
	Desc          string       `json:"desc,omitempty"`
	Types         []string     `json:"types"`
	FirstSeenTime int64        `json:"first_seen_time"`
	LastSeenTime  int64        `json:"last_seen_time"`
	SrcURL        string       `json:"src_url,omitempty"`
	Analytic      ocsfAnalytic `json:"analytic"`
}

type ocsfAnalytic struct {
	UID    string `json:"uid"`
	Name   string `json:"name"`
	TypeID int    `json:"type_id"`
	Type   string `json:"type"`
}

type ocsfEvidence struct {
	Actor       *ocsfActor      `json:"actor,omitempty"`
	API         *ocsfAPI        `json:"api,omitempty"`
	SrcEndpoint *ocsfEndpoint   `json:"src_endpoint,omitempty"`
	URL         *ocsfURL        `json:"url,omitempty"`
	Data        json.RawMessage `json:"data,omitempty"`
}

type ocsfActor struct {
	User ocsfUser `json:"user"`
}

type ocsfUser struct {
	UID           string `json:"uid,omitempty"`
	CredentialUID string `json:"credential_uid,omitempty"`
}

type ocsfAPI struct {
	Operation string `json:"operation"`
}

type ocsfEndpoint struct {
	IP string `json:"ip"`
}

type ocsfURL struct {
	Path string `json:"path"`
}

type ocsfObservable struct {
	Name   string `json:"name"`
	TypeID int    `json:"type_id"`
	Type   string `json:"type"`
	Value  string `json:"value"`
}

// encodeOCSF writes a as an OCSF Detection Finding: activity Create for the first
// version of an incident, Update for later ones. Its time is the alert's last_seen
// (event time), not the clock, so a replay of the same alerts writes the same bytes.
// The key and the evidence samples are mapped onto the Evidence Artifacts (the key as
// the actor's user uid for a client key, its credential_uid for a token fingerprint,
// the API operation for a route, or the source endpoint for an IP), the rest of the
// evidence is kept whole in evidences[0].data, and the key and client IPs are listed
// as observables.
func encodeOCSF(a *detectors.Alert, update bool, productVersion string) ([]byte, error) {
	activity, activityName := ocsfActivityNew, "Create"
	if update {
		activity, activityName = ocsfActivityUpd, "Update"
	}
	sev, ok := ocsfSeverity[a.Severity]
	if !ok {
		sev.id, sev.name = 0, "Unknown"
	}
	an, ok := analytics[a.Detector]
	if !ok {
		an.typeID, an.kind = 0, "Unknown"
	}
	data, err := json.Marshal(a.Evidence)
	if err != nil {
		return nil, err
	}
	last, first := a.LastSeen.UnixMilli(), a.FirstSeen.UnixMilli()
	f := ocsfFinding{
		ActivityID: activity, ActivityName: activityName,
		CategoryUID: ocsfCategoryUID, CategoryName: "Findings",
		ClassUID: ocsfClassUID, ClassName: "Detection Finding",
		TypeUID: ocsfClassUID*100 + activity, TypeName: "Detection Finding: " + activityName,
		SeverityID: sev.id, Severity: sev.name,
		StatusID: ocsfStatusNew, Status: "New",
		Time: last, StartTime: first, EndTime: last,
		Count:   max(a.Evidence.ObservedCount, a.Evidence.ForbiddenCount),
		Message: a.Summary,
		Metadata: ocsfMetadata{
			Version:        OCSFVersion,
			Product:        ocsfProduct{Name: "gatewatch", VendorName: "gatewatch", Version: productVersion},
			UID:            eventUID(a, last),
			CorrelationUID: a.ID,
			Labels:         labels(a.Labels),
		},
		FindingInfo: ocsfFindingInfo{
			UID: a.ID, Title: a.Summary, Desc: an.desc, Types: []string{a.Detector},
			FirstSeenTime: first, LastSeenTime: last, SrcURL: a.RunbookURL,
			Analytic: ocsfAnalytic{UID: a.Detector, Name: a.Detector, TypeID: an.typeID, Type: an.kind},
		},
	}

	main := ocsfEvidence{Data: data}
	var keyObs ocsfObservable
	switch keyType := a.Labels["key_type"]; {
	case keyType == "client_key":
		main.Actor = &ocsfActor{User: ocsfUser{UID: a.Key}}
		keyObs = ocsfObservable{"evidences.actor.user.uid", obsOther, "Other", a.Key}
	case keyType == "token_fp":
		main.Actor = &ocsfActor{User: ocsfUser{CredentialUID: a.Key}}
		keyObs = ocsfObservable{"evidences.actor.user.credential_uid", obsOther, "Other", a.Key}
	case keyType == "route":
		main.API = &ocsfAPI{Operation: a.Key}
		keyObs = ocsfObservable{"evidences.api.operation", obsOther, "Other", a.Key}
	case isIP(a.Key):
		keyObs = ocsfObservable{"evidences.src_endpoint.ip", obsIPAddress, "IP Address", a.Key}
	default:
		keyObs = ocsfObservable{"finding_info.uid", obsOther, "Other", a.Key}
	}
	f.Observables = append(f.Observables, keyObs)

	ips := a.Evidence.ClientIPs
	if isIP(a.Key) && !slices.Contains(ips, a.Key) {
		ips = append([]string{a.Key}, ips...)
	}
	if len(ips) > 0 {
		main.SrcEndpoint = &ocsfEndpoint{IP: ips[0]}
	}
	if len(a.Evidence.SamplePaths) > 0 {
		main.URL = &ocsfURL{Path: a.Evidence.SamplePaths[0]}
	}
	f.Evidences = append(f.Evidences, main)
	for i, ip := range ips {
		if i > 0 && i < maxOCSFEvidences {
			f.Evidences = append(f.Evidences, ocsfEvidence{SrcEndpoint: &ocsfEndpoint{IP: ip}})
		}
		if ip != keyObs.Value {
			f.Observables = append(f.Observables, ocsfObservable{"evidences.src_endpoint.ip", obsIPAddress, "IP Address", ip})
		}
	}
	return json.Marshal(f)
}

// eventUID names this delivery of the finding: its id and version, and the reminder
// number when it is one, so that each event a consumer gets has its own uid.
func eventUID(a *detectors.Alert, last int64) string {
	uid := a.ID + "-" + strconv.FormatInt(last, 10)
	if n := a.Labels[alerting.ReminderLabel]; n != "" {
		uid += "-r" + n
	}
	return uid
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

// labels turns the alert's labels into OCSF metadata labels, "name=value", sorted.
func labels(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

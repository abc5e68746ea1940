package syslog

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// maxSummaryListed bounds the incidents a group's summary names; the rest are counted.
// Fifty ids and their keys stay well inside a UDP datagram.
const maxSummaryListed = 50

// groupSummary is the JSON payload of a group's summary line.
type groupSummary struct {
	SchemaVersion string            `json:"schema_version"`
	Type          string            `json:"type"` // "group"
	Group         string            `json:"group"`
	Labels        map[string]string `json:"labels"`
	Count         int               `json:"count"` // incidents in this notification
	Severity      string            `json:"severity"`
	Detectors     []string          `json:"detectors"`
	FirstSeen     string            `json:"first_seen"`
	LastSeen      string            `json:"last_seen"`
	Alerts        []summaryAlert    `json:"alerts"`
	More          int               `json:"more,omitempty"` // incidents not listed
}

type summaryAlert struct {
	ID       string `json:"id"`
	Detector string `json:"detector"`
	Severity string `json:"severity"`
	Key      string `json:"key"`
	LastSeen string `json:"last_seen"`
}

// NotifyGroup sends an ungrouped delivery as Notify does, one message per alert, and a
// group as one summary message: MSGID "group", structured data with the group key, the
// number of incidents and the highest severity, and a JSON (or CEF) payload naming the
// incidents (their id, detector, severity, key and last_seen; at most 50, the rest
// counted), so the SIEM gets one line per storm and can still find each incident by id.
func (r *Receiver) NotifyGroup(ctx context.Context, g alerting.Group) (bool, error) {
	if g.Key == "" {
		return r.Notify(ctx, g.Alerts)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var msg []byte
	var err error
	if r.network == "udp" {
		msg, err = r.AppendGroupMessage(nil, &g)
	} else {
		msg, err = r.appendFramedGroup(nil, &g)
	}
	if err != nil {
		return false, fmt.Errorf("syslog: receiver %s: group %s: %w", r.name, g.Key, err)
	}
	if r.network == "udp" && len(msg) > maxUDPMessage {
		return false, fmt.Errorf("syslog: receiver %s: group %s: %d-byte summary exceeds a UDP datagram", r.name, g.Key, len(msg))
	}
	if retry, err := r.send(ctx, msg, []int{len(msg)}); err != nil {
		return retry, fmt.Errorf("syslog: receiver %s: group %s: %w", r.name, g.Key, err)
	}
	return false, nil
}

func (r *Receiver) appendFramedGroup(dst []byte, g *alerting.Group) ([]byte, error) {
	msg, err := r.AppendGroupMessage(nil, g)
	if err != nil {
		return dst, err
	}
	dst = strconv.AppendInt(dst, int64(len(msg)), 10)
	dst = append(dst, ' ')
	return append(dst, msg...), nil
}

// summarize returns the facts of a group's summary.
func summarize(g *alerting.Group) groupSummary {
	s := groupSummary{SchemaVersion: SchemaVersion, Type: "group", Group: g.Key, Labels: g.Labels, Count: len(g.Alerts)}
	top := -1
	var first, last time.Time
	for i := range g.Alerts {
		a := &g.Alerts[i]
		if r := syslogRank(a.Severity); r > top {
			top, s.Severity = r, string(a.Severity)
		}
		if !slices.Contains(s.Detectors, a.Detector) {
			s.Detectors = append(s.Detectors, a.Detector)
		}
		if first.IsZero() || a.FirstSeen.Before(first) {
			first = a.FirstSeen
		}
		if a.LastSeen.After(last) {
			last = a.LastSeen
		}
		if len(s.Alerts) < maxSummaryListed {
			s.Alerts = append(s.Alerts, summaryAlert{ID: a.ID, Detector: a.Detector, Severity: string(a.Severity), Key: a.Key,
				LastSeen: a.LastSeen.UTC().Format("2006-01-02T15:04:05.000Z07:00")})
		}
	}
	slices.Sort(s.Detectors)
	s.More = len(g.Alerts) - len(s.Alerts)
	s.FirstSeen = first.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	s.LastSeen = last.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	return s
}

func syslogRank(s detectors.Severity) int { return 10 - syslogSeverity(s) }

// AppendGroupMessage appends the RFC 5424 summary message of group g, without framing.
func (r *Receiver) AppendGroupMessage(dst []byte, g *alerting.Group) ([]byte, error) {
	s := summarize(g)
	dst = append(dst, '<')
	dst = strconv.AppendInt(dst, int64(r.facility*8+syslogSeverity(detectors.Severity(s.Severity))), 10)
	dst = append(dst, ">1 "...)
	dst = append(dst, s.LastSeen...)
	dst = append(dst, ' ')
	dst = append(dst, r.host...)
	dst = append(dst, ' ')
	dst = append(dst, r.app...)
	dst = append(dst, " - group ["+SDID...)
	for _, p := range [...]struct{ name, value string }{
		{"group", s.Group}, {"count", strconv.Itoa(s.Count)}, {"severity", s.Severity}, {"detectors", strings.Join(s.Detectors, ",")},
	} {
		dst = append(dst, ' ')
		dst = append(dst, p.name...)
		dst = append(dst, '=', '"')
		dst = appendParamValue(dst, p.value)
		dst = append(dst, '"')
	}
	dst = append(dst, "] "...)
	if r.cef {
		return r.appendGroupCEF(dst, &s), nil
	}
	b, err := json.Marshal(s)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

// appendGroupCEF appends a group's summary as a CEF record: Signature ID "group", the
// number of incidents and what they share as Name, cnt the number, cs1 the group key,
// cs3 the listed alert ids, start and end.
func (r *Receiver) appendGroupCEF(dst []byte, s *groupSummary) []byte {
	dst = append(dst, "CEF:0|gatewatch|gatewatch|"...)
	dst = appendCEFHeader(dst, r.version)
	dst = append(dst, "|group|"...)
	dst = appendCEFHeader(dst, truncateRunes(fmt.Sprintf("%d incidents: %s", s.Count, strings.Join(alerting.GroupLabels(s.Labels), " ")), maxCEFName))
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, int64(cefSeverity(detectors.Severity(s.Severity))), 10)
	dst = append(dst, '|')
	x := cefExt{dst: dst}
	if t, err := time.Parse(time.RFC3339, s.LastSeen); err == nil {
		x.millis("rt", t)
		x.millis("end", t)
	}
	if t, err := time.Parse(time.RFC3339, s.FirstSeen); err == nil {
		x.millis("start", t)
	}
	x.str("dvchost", r.host)
	x.int("cnt", s.Count)
	x.labeled("cs1", "groupKey", s.Group)
	ids := make([]string, len(s.Alerts))
	for i, a := range s.Alerts {
		ids[i] = a.ID
	}
	x.labeled("cs3", "alertIds", strings.Join(ids, ","))
	x.labeled("cs4", "detectors", strings.Join(s.Detectors, ","))
	return x.dst
}

package syslog

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gatewatch/gatewatch/detectors"
)

// maxCEFName is the longest Name ArcSight accepts in a CEF header.
const maxCEFName = 512

// cefSeverity maps gatewatch's severities onto CEF's 0-10 scale, which ArcSight and
// most SIEMs read as 0-3 low, 4-6 medium, 7-8 high, 9-10 very high.
func cefSeverity(s detectors.Severity) int {
	switch s {
	case detectors.SeverityCritical:
		return 10
	case detectors.SeverityHigh:
		return 8
	case detectors.SeverityMedium:
		return 5
	}
	return 3
}

// AppendCEF appends a as an ArcSight Common Event Format record:
//
//	CEF:0|gatewatch|gatewatch|<version>|<detector>|<summary>|<severity 0-10>|<extension>
//
// Header fields escape '\' and '|' and have no line breaks; extension values escape
// '\' and '=' and write line breaks as \n and \r (CEF Implementation Standard, "Character
// Encoding"). The extension carries, when the alert has them: rt (last_seen, epoch ms),
// start and end (first_seen and last_seen), dvchost (the sending host), cs1 the alert
// id, cs2 the runbook URL, cs3 the key, suser the key when it is a client key, src (or
// c6a2 for IPv6) the first client IP, requestMethod and request the route's method and
// the first sample path, cnt the count that fired, cs4 the countries and cn1 the
// device count; each csN and cnN with its csNLabel.
func AppendCEF(dst []byte, a *detectors.Alert, host, version string) []byte {
	dst = append(dst, "CEF:0|gatewatch|gatewatch|"...)
	dst = appendCEFHeader(dst, version)
	dst = append(dst, '|')
	dst = appendCEFHeader(dst, a.Detector)
	dst = append(dst, '|')
	dst = appendCEFHeader(dst, truncateRunes(a.Summary, maxCEFName))
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, int64(cefSeverity(a.Severity)), 10)
	dst = append(dst, '|')

	x := cefExt{dst: dst}
	x.millis("rt", a.LastSeen)
	x.millis("start", a.FirstSeen)
	x.millis("end", a.LastSeen)
	x.str("dvchost", host)
	x.labeled("cs1", "alertId", a.ID)
	x.labeled("cs2", "runbookUrl", a.RunbookURL)
	x.labeled("cs3", "key", a.Key)
	if a.Labels["key_type"] == "client_key" {
		x.str("suser", a.Key)
	}
	e := &a.Evidence
	if len(e.ClientIPs) > 0 {
		if ip, err := netip.ParseAddr(e.ClientIPs[0]); err == nil {
			if ip.Unmap().Is4() {
				x.str("src", ip.Unmap().String())
			} else {
				x.labeled("c6a2", "Source IPv6 Address", ip.String())
			}
		}
	}
	x.str("requestMethod", e.Method)
	if len(e.SamplePaths) > 0 {
		x.str("request", e.SamplePaths[0])
	}
	switch {
	case e.ObservedCount > 0:
		x.int("cnt", e.ObservedCount)
	case e.ForbiddenCount > 0:
		x.int("cnt", e.ForbiddenCount)
	}
	countries := e.Countries
	if len(e.NewCountries) > 0 {
		countries = make([]string, len(e.NewCountries))
		for i, c := range e.NewCountries {
			countries[i] = c.Country
		}
	}
	x.labeled("cs4", "countries", strings.Join(countries, ","))
	if e.DeviceCount > 0 {
		x.labeled("cn1", "deviceCount", strconv.Itoa(e.DeviceCount))
	}
	return x.dst
}

// cefExt appends extension pairs, space separated, skipping empty values.
type cefExt struct {
	dst     []byte
	written bool // a pair was written already
}

func (x *cefExt) key(k string) {
	if x.written {
		x.dst = append(x.dst, ' ')
	}
	x.written = true
	x.dst = append(x.dst, k...)
	x.dst = append(x.dst, '=')
}

func (x *cefExt) str(k, v string) {
	if v == "" {
		return
	}
	x.key(k)
	x.dst = appendCEFValue(x.dst, v)
}

func (x *cefExt) int(k string, v int) {
	x.key(k)
	x.dst = strconv.AppendInt(x.dst, int64(v), 10)
}

func (x *cefExt) millis(k string, t time.Time) {
	if t.IsZero() {
		return
	}
	x.key(k)
	x.dst = strconv.AppendInt(x.dst, t.UnixMilli(), 10)
}

// labeled writes a custom field and its label, CEF's way of naming csN/cnN fields.
func (x *cefExt) labeled(k, label, v string) {
	if v == "" {
		return
	}
	x.str(k+"Label", label)
	x.str(k, v)
}

// appendCEFHeader escapes a header field: backslash and pipe get a backslash; a line
// break, which would end the record, becomes a space.
func appendCEFHeader(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '|':
			dst = append(dst, '\\', c)
		case '\r', '\n':
			dst = append(dst, ' ')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// appendCEFValue escapes an extension value: backslash and equals sign get a
// backslash, line breaks are written as \n and \r.
func appendCEFValue(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '=':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// truncateRunes cuts s to at most n runes.
func truncateRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n])
}

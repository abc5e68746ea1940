package ingest

import (
	"bytes"
	"errors"
	"fmt"
	"time"
)

// minEventTime is the earliest event time accepted; anything older is a unit mistake or junk.
var minEventTime = time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)

var errNoTime = errors.New("no timestamp")

// errBadISO is shared rather than made in parseISO, where it would be allocated on
// every call, successful ones included.
var errBadISO = errors.New("malformed RFC 3339 timestamp")

// epochTime reads an integer epoch timestamp whose unit is inferred from its magnitude:
// seconds, milliseconds, microseconds or nanoseconds (Cloudflare's unixnano, Kong's and
// AWS WAF's milliseconds). Those ranges do not overlap for any date after 1973.
func epochTime(n int64) (time.Time, error) {
	switch {
	case n <= 0:
		return time.Time{}, fmt.Errorf("epoch timestamp %d is not positive", n)
	case n < 1e11:
		return time.Unix(n, 0).UTC(), nil
	case n < 1e14:
		return time.UnixMilli(n).UTC(), nil
	case n < 1e17:
		return time.UnixMicro(n).UTC(), nil
	default:
		return time.Unix(0, n).UTC(), nil
	}
}

// parseEpochBytes reads an epoch timestamp written as decimal digits, with an optional
// fraction after a dot that is taken as the fractional part of seconds (nginx $msec,
// Envoy %START_TIME(%s.%3f)%).
func parseEpochBytes(b []byte) (time.Time, bool) {
	if len(b) == 0 || len(b) > 20 {
		return time.Time{}, false
	}
	dot := bytes.IndexByte(b, '.')
	intPart := b
	if dot >= 0 {
		intPart = b[:dot]
	}
	n, ok := atoi64(intPart)
	if !ok {
		return time.Time{}, false
	}
	if dot < 0 {
		t, err := epochTime(n)
		return t, err == nil
	}
	frac := b[dot+1:]
	if len(frac) == 0 || len(frac) > 9 || n >= 1e11 {
		return time.Time{}, false
	}
	ns, ok := atoi64(frac)
	if !ok {
		return time.Time{}, false
	}
	for i := len(frac); i < 9; i++ {
		ns *= 10
	}
	if n <= 0 {
		return time.Time{}, false
	}
	return time.Unix(n, ns).UTC(), true
}

// parseTimeBytes reads any of the documented textual encodings: RFC 3339 / ISO 8601
// (with or without a zone; none means UTC), Common Log Format (02/Jan/2006:15:04:05 -0700)
// and decimal epochs.
func parseTimeBytes(b []byte) (time.Time, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || (len(b) == 1 && b[0] == '-') {
		return time.Time{}, errNoTime
	}
	if b[0] >= '0' && b[0] <= '9' {
		if t, ok := parseEpochBytes(b); ok {
			return t, nil
		}
		if len(b) >= 20 && b[2] == '/' {
			return parseCLF(b)
		}
		return parseISO(b)
	}
	return time.Time{}, fmt.Errorf("unrecognised timestamp of %d bytes", len(b))
}

// parseCLF reads 02/Jan/2006:15:04:05 -0700 without allocating.
func parseCLF(b []byte) (time.Time, error) {
	// 0         1         2
	// 02/Jan/2006:15:04:05 -0700
	if len(b) != 26 || b[2] != '/' || b[6] != '/' || b[11] != ':' || b[14] != ':' || b[17] != ':' || b[20] != ' ' {
		return time.Time{}, errors.New("malformed CLF timestamp")
	}
	day, ok1 := atoi2(b[0:2])
	year, ok2 := atoi4(b[7:11])
	hh, ok3 := atoi2(b[12:14])
	mm, ok4 := atoi2(b[15:17])
	ss, ok5 := atoi2(b[18:20])
	month := monthOf(b[3:6])
	off, ok6 := parseOffset(b[21:26], false)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || month == 0 {
		return time.Time{}, errors.New("malformed CLF timestamp")
	}
	return checkedDate(year, month, day, hh, mm, ss, 0, off)
}

// parseISO reads 2006-01-02T15:04:05[.fff...][Z|±hh:mm|±hhmm]; a space may stand for T.
func parseISO(b []byte) (time.Time, error) {
	bad := errBadISO
	if len(b) < 19 || b[4] != '-' || b[7] != '-' || (b[10] != 'T' && b[10] != 't' && b[10] != ' ') || b[13] != ':' || b[16] != ':' {
		return time.Time{}, bad
	}
	year, ok1 := atoi4(b[0:4])
	month, ok2 := atoi2(b[5:7])
	day, ok3 := atoi2(b[8:10])
	hh, ok4 := atoi2(b[11:13])
	mm, ok5 := atoi2(b[14:16])
	ss, ok6 := atoi2(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) {
		return time.Time{}, bad
	}
	rest := b[19:]
	ns := 0
	if len(rest) > 0 && (rest[0] == '.' || rest[0] == ',') {
		i := 1
		scale := 100000000
		for ; i < len(rest) && rest[i] >= '0' && rest[i] <= '9'; i++ {
			ns += int(rest[i]-'0') * scale
			scale /= 10
		}
		if i == 1 {
			return time.Time{}, bad
		}
		rest = rest[i:]
	}
	off := 0
	switch {
	case len(rest) == 0:
	case len(rest) == 1 && (rest[0] == 'Z' || rest[0] == 'z'):
	default:
		o, ok := parseOffset(rest, true)
		if !ok {
			return time.Time{}, bad
		}
		off = o
	}
	return checkedDate(year, time.Month(month), day, hh, mm, ss, ns, off)
}

// parseOffset reads ±hhmm, or ±hh:mm when colon is allowed, as seconds east of UTC.
func parseOffset(b []byte, colon bool) (int, bool) {
	if len(b) == 6 && colon && b[3] == ':' {
		b = []byte{b[0], b[1], b[2], b[4], b[5]}
	}
	if len(b) != 5 || (b[0] != '+' && b[0] != '-') {
		return 0, false
	}
	h, ok1 := atoi2(b[1:3])
	m, ok2 := atoi2(b[3:5])
	if !ok1 || !ok2 || h > 23 || m > 59 {
		return 0, false
	}
	off := h*3600 + m*60
	if b[0] == '-' {
		off = -off
	}
	return off, true
}

func checkedDate(year int, month time.Month, day, hh, mm, ss, ns, off int) (time.Time, error) {
	if month < 1 || month > 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 {
		return time.Time{}, errors.New("timestamp out of range")
	}
	t := time.Date(year, month, day, hh, mm, ss, ns, time.UTC)
	if t.Day() != day { // 31 April rolled over into May
		return time.Time{}, errors.New("timestamp out of range")
	}
	return t.Add(-time.Duration(off) * time.Second), nil
}

var months = [...]string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}

func monthOf(b []byte) time.Month {
	for i, m := range months {
		if string(b) == m {
			return time.Month(i + 1)
		}
	}
	return 0
}

func atoi2(b []byte) (int, bool) {
	if len(b) != 2 || b[0] < '0' || b[0] > '9' || b[1] < '0' || b[1] > '9' {
		return 0, false
	}
	return int(b[0]-'0')*10 + int(b[1]-'0'), true
}

func atoi4(b []byte) (int, bool) {
	hi, ok1 := atoi2(b[0:2])
	lo, ok2 := atoi2(b[2:4])
	return hi*100 + lo, ok1 && ok2 && len(b) == 4
}

// atoi64 parses non-negative decimal digits, rejecting overflow.
func atoi64(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, n >= 0
}

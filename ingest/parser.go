package ingest

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// A Parser turns one raw record into an Event. A Parser is not safe for concurrent use:
// each goroutine owns its own, which lets it reuse buffers and allocate (almost) nothing.
type Parser interface {
	// Parse fills ev from line and keeps no reference to line. A rejected record
	// returns a *ParseError and leaves ev in an unspecified state.
	Parse(ev *Event, line []byte) error
}

// AppendParsed parses record into a new event at the end of evs and returns evs with it,
// unless the record was rejected: a repaired record (Kept) keeps its event. The error,
// if any, is the record's, for its dead letter.
func AppendParsed(p Parser, evs []Event, record []byte) ([]Event, error) {
	evs = append(evs, Event{})
	err := p.Parse(&evs[len(evs)-1], record)
	if err != nil && !Kept(err) {
		evs = evs[:len(evs)-1]
	}
	return evs, err
}

// Format names accepted by NewParser (the --format flag and ingest.kafka.topics[].format).
const (
	FormatAuto       = "auto"
	FormatAWSWAF     = "awswaf"
	FormatAPIGateway = "apigw"
	FormatKong       = "kong"
	FormatEnvoy      = "envoy"
	FormatNginx      = "nginx"
	FormatCloudflare = "cloudflare"
)

// Formats lists every format NewParser accepts, auto first.
var Formats = []string{FormatAuto, FormatAWSWAF, FormatAPIGateway, FormatKong, FormatEnvoy, FormatNginx, FormatCloudflare}

// LogsCountry reports whether records of format always carry the client's country (AWS
// WAF and Cloudflare log it). Records of the others have one only from a GeoIP database,
// or, for nginx and Envoy, when the operator's log format adds one; auto may meet any.
func LogsCountry(format string) bool {
	return format == FormatAWSWAF || format == FormatCloudflare
}

// Defaults for ParserOptions' zero fields.
const (
	DefaultAPIKeyHeader = "x-api-key"
	DefaultDeviceHeader = "x-device-id"
	DefaultMaxLineBytes = 1 << 20
	DefaultMaxClockSkew = 24 * time.Hour
)

// ParserOptions carries what every parser needs. The zero value of each field except
// Secret has a documented default.
type ParserOptions struct {
	Secret       TokenSecret      // HMAC key for token fingerprints; required
	GeoIP        *GeoIP           // nil: no country for formats that do not log one
	APIKeyHeader string           // "": x-api-key
	DeviceHeader string           // "": x-device-id
	MaxLineBytes int              // 0: 1 MiB; longer records are rejected as oversized
	MaxClockSkew time.Duration    // 0: 24h; events further ahead of the clock are absurd
	Now          func() time.Time // nil: time.Now; read only for records that look too new
	// TrustedProxies are networks whose addresses forward requests, beyond the private,
	// loopback, link-local and shared ones (see clientOfList).
	TrustedProxies []netip.Prefix
}

func (o ParserOptions) withDefaults() (ParserOptions, error) {
	if o.Secret.IsZero() {
		return o, fmt.Errorf("ingest: parser needs a token secret")
	}
	if o.APIKeyHeader == "" {
		o.APIKeyHeader = DefaultAPIKeyHeader
	}
	if o.DeviceHeader == "" {
		o.DeviceHeader = DefaultDeviceHeader
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = DefaultMaxLineBytes
	}
	if o.MaxClockSkew <= 0 {
		o.MaxClockSkew = DefaultMaxClockSkew
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.APIKeyHeader = strings.ToLower(o.APIKeyHeader)
	o.DeviceHeader = strings.ToLower(o.DeviceHeader)
	return o, nil
}

// NewParser returns a parser for format, one of Formats.
func NewParser(format string, opts ParserOptions) (Parser, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if !slices.Contains(Formats, format) {
		return nil, fmt.Errorf("%w %q (want one of %s)", ErrUnknownFormat, format, strings.Join(Formats, ", "))
	}
	p, err := newFormatParser(format, newBase(o))
	if err != nil {
		return nil, err
	}
	return &record{p: p, max: o.MaxLineBytes}, nil
}

// base holds what every format parser shares: options, string storage, the token
// fingerprinter, and the normalisation steps that are the same for every format.
type base struct {
	opts     ParserOptions
	arena    arena
	strs     interner
	fp       *fingerprinter
	scratch  []byte
	devices  memo[[deviceLen]byte] // device fingerprints of recent user agents
	notAfter time.Time             // the latest acceptable event time, refreshed from the clock only when exceeded
}

func newBase(o ParserOptions) *base {
	fp := o.Secret.newFingerprinter()
	fp.memoize = true
	return &base{opts: o, fp: fp, devices: memo[[deviceLen]byte]{size: deviceMemoSlots}, notAfter: o.Now().Add(o.MaxClockSkew)}
}

// OversizedError is the rejection of a record of size bytes, over the cap of max.
// Sources that cut a runaway record before parsing it report its real size with it.
func OversizedError(size, max int) error {
	return parseErrorf(ReasonOversized, "record of %d bytes exceeds the %d-byte cap (ingest.max_line_bytes)", size, max)
}

// Errors of complete; shared, as they carry nothing of the record.
var (
	errNoRequestNoClient = parseErrorf(ReasonMissingField, "record has no method, path or status, and no client (IP address, key or token)")
	errNoRequest         = parseErrorf(ReasonMissingField, "record has no method, path or status")
	errNoClient          = parseErrorf(ReasonMissingField, "record has no client: no IP address, client key or token")
)

// hasClient reports whether ev names its client: an IP address, a client key or a
// token fingerprint.
func hasClient(ev *Event) bool { return ev.ClientIP != "" || ev.ClientKey != "" || ev.TokenFP != "" }

// complete rejects an event that lacks what every format must give: a request (method,
// path or status) and a client (IP address, client key or token fingerprint). The time
// is checked by setTime. Without this rule a record read with the wrong format (AWS WAF
// as nginx, say) becomes an event with a time and nothing else, which every detector
// silently ignores.
func complete(ev *Event) error {
	noRequest := ev.Method == "" && ev.Path == "" && ev.Status == 0
	noClient := !hasClient(ev)
	switch {
	case noRequest && noClient:
		return errNoRequestNoClient
	case noRequest:
		return errNoRequest
	case noClient:
		return errNoClient
	}
	return nil
}

// str stores a high-cardinality field; "-" (the common "unset" spelling) becomes "".
func (b *base) str(v []byte) string {
	if isUnset(v) {
		return ""
	}
	return b.arena.String(v)
}

// intern stores a low-cardinality field (method, action, country); "-" becomes "".
func (b *base) intern(v []byte) string {
	if isUnset(v) {
		return ""
	}
	return b.strs.Intern(&b.arena, v)
}

func isUnset(v []byte) bool { return len(v) == 0 || (len(v) == 1 && v[0] == '-') }

// setTime validates t and stores it: absent, before 1990 or beyond the clock plus
// MaxClockSkew is rejected.
func (b *base) setTime(ev *Event, t time.Time, err error) error {
	if err == errNoTime {
		return parseErrorf(ReasonMissingField, "no event time")
	}
	if err != nil {
		return &ParseError{Reason: ReasonBadTimestamp, Err: err}
	}
	if t.Before(minEventTime) {
		return parseErrorf(ReasonBadTimestamp, "event time %s is before %s", t.Format(time.RFC3339), minEventTime.Format(time.RFC3339))
	}
	if t.After(b.notAfter) {
		b.notAfter = b.opts.Now().Add(b.opts.MaxClockSkew)
		if t.After(b.notAfter) {
			return parseErrorf(ReasonBadTimestamp, "event time %s is more than %s ahead of the clock", t.Format(time.RFC3339), b.opts.MaxClockSkew)
		}
	}
	ev.Time = t
	return nil
}

// setStatusText parses a status written as text ("200", "-").
func (b *base) setStatusText(ev *Event, v []byte) error {
	if isUnset(v) {
		return nil
	}
	n, ok := atoi64(v)
	if !ok || n > 999 {
		return parseErrorf(ReasonBadValue, "status is not an HTTP status code")
	}
	ev.Status = int(n)
	return nil
}

// setStatus stores a numeric status, rejecting impossible ones.
func setStatus(ev *Event, n int64) error {
	if n < 0 || n > 999 {
		return parseErrorf(ReasonBadValue, "status %d is not an HTTP status code", n)
	}
	ev.Status = int(n)
	return nil
}

// credentials holds the raw identity values a format found; the finish step turns them
// into ClientKey and TokenFP without letting the raw values escape.
type credentials struct {
	consumer      []byte // the gateway's consumer / key id: not secret, kept as is
	credentialID  []byte // Kong's authenticated_entity.id: fingerprinted
	authorization []byte // Authorization header value
	apiKey        []byte // API key header value
	deviceID      []byte // device id header value
	tlsFP         []byte // JA3/JA4
}

// setIdentity fills ClientKey, TokenFP and Device from c and ev.UserAgent.
func (b *base) setIdentity(ev *Event, c *credentials) {
	var apiKeyFP string
	if k := bytes.TrimSpace(c.apiKey); !isUnset(k) {
		apiKeyFP = b.arena.String(b.fp.Sum(k))
	}
	switch {
	case !isUnset(c.consumer):
		ev.ClientKey = b.arena.String(c.consumer)
	case apiKeyFP != "":
		ev.ClientKey = apiKeyFP
	}
	switch tok := bearer(c.authorization); {
	case len(tok) > 0:
		ev.TokenFP = b.arena.String(b.fp.Sum(tok))
	case apiKeyFP != "":
		ev.TokenFP = apiKeyFP
	case !isUnset(c.credentialID):
		ev.TokenFP = b.arena.String(b.fp.Sum(c.credentialID))
	}
	switch {
	case !isUnset(c.deviceID):
		ev.Device = b.arena.String(c.deviceID)
	case ev.UserAgent != "" || !isUnset(c.tlsFP):
		tls := c.tlsFP
		if isUnset(tls) {
			tls = nil
		}
		ev.Device = b.arena.String(b.device(ev.UserAgent, tls))
	}
	*c = credentials{}
}

// deviceLen is the length of a device fingerprint: "ua:" and 16 hex digits.
const deviceLen = 19

// deviceMemoSlots is how many user agents a parser remembers the device of: FNV-1a
// takes a byte at a time, each step waiting on the last, and over a 150-byte user agent
// it cost a quarter of an Envoy record's parse.
const deviceMemoSlots = 4096

// device returns the device fingerprint of a user agent and TLS fingerprint, valid
// until the next call.
func (b *base) device(ua string, tls []byte) []byte {
	v, hit := b.devices.get(ua, tls)
	if hit {
		return v[:]
	}
	b.scratch = appendDeviceHash(b.scratch[:0], ua, tls)
	if v != nil {
		copy(v[:], b.scratch)
	}
	return b.scratch
}

// appendDeviceHash appends "ua:" and 16 hex digits of a 64-bit FNV-1a hash of the user
// agent and TLS fingerprint. It is unkeyed on purpose: device fingerprints are not
// secrets, and the same device must hash the same in every run and on every replica.
func appendDeviceHash(dst []byte, ua string, tls []byte) []byte {
	const offset64, prime64 = 14695981039346656037, 1099511628211
	h := uint64(offset64)
	for i := 0; i < len(ua); i++ {
		h = (h ^ uint64(ua[i])) * prime64
	}
	h = (h ^ 0) * prime64 // separator, so ("ab", "c") and ("a", "bc") differ
	for _, c := range tls {
		h = (h ^ uint64(c)) * prime64
	}
	dst = append(dst, "ua:"...)
	for shift := 60; shift >= 0; shift -= 4 {
		dst = append(dst, hexDigits[(h>>uint(shift))&0xf])
	}
	return dst
}

// finish completes ev after a format filled what its record has: the route from the
// path when no template was logged, the country from GeoIP when none was logged, and
// the WAF rule that a BLOCK with no logged status is a 403.
func (b *base) finish(ev *Event) {
	if ev.Route == "" && ev.Path != "" {
		b.scratch = AppendRoute(b.scratch[:0], []byte(ev.Path))
		if string(b.scratch) == ev.Path {
			ev.Route = ev.Path
		} else {
			ev.Route = b.strs.Intern(&b.arena, b.scratch)
		}
	}
	if ev.Country == "" && b.opts.GeoIP != nil && ev.ClientIP != "" {
		if ip, err := netip.ParseAddr(ev.ClientIP); err == nil {
			ev.Country = b.opts.GeoIP.Country(ip)
		}
	}
	if ev.Status == 0 && strings.EqualFold(ev.Action, "BLOCK") {
		ev.Status = 403
	}
}

// setCountry stores a logged country code upper-cased ("sa" → "SA"); "-", "XX" and
// anything that is not two letters mean unknown.
func (b *base) setCountry(ev *Event, v []byte) {
	if len(v) != 2 {
		return
	}
	var cc [2]byte
	for i, c := range v {
		switch {
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		case c >= 'A' && c <= 'Z':
		default:
			return
		}
		cc[i] = c
	}
	if cc == [2]byte{'X', 'X'} || cc == [2]byte{'T', '1'} {
		return
	}
	ev.Country = b.strs.Intern(&b.arena, cc[:])
}

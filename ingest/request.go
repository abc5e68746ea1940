package ingest

import (
	"bytes"
	"net/netip"
	"unsafe"
)

// This file holds what every format does alike with the request a record describes: its
// method, its target (path and, for proxy requests, host) and the client's address. Each
// value is checked before it is stored, because all of them can come from the client:
// a method that is no HTTP token or an address that is no address is dropped, never
// passed on to the detectors (where it would key state) or to the store.

// setMethod stores an HTTP method; a value that is no method token (scanner junk, a
// 48-character string) is left out.
func (b *base) setMethod(ev *Event, v []byte) {
	if isMethodToken(v) {
		ev.Method = b.intern(v)
	}
}

// isMethodToken reports whether m looks like an HTTP method: a letter, then up to 23
// letters, '-' or '_'. Every registered method (the longest is UPDATEREDIRECTREF) fits.
func isMethodToken(m []byte) bool {
	if len(m) == 0 || len(m) > 24 {
		return false
	}
	for i, c := range m {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case (c == '-' || c == '_') && i > 0:
		default:
			return false
		}
	}
	return true
}

// setTarget stores the path of a request target and, when the log has no host of its
// own, the host an absolute-form target ("GET http://h:8080/a", an open-proxy probe) or
// a CONNECT's authority-form target ("CONNECT h:443") names.
func (b *base) setTarget(ev *Event, method, target []byte) {
	host, path := splitTarget(method, target)
	ev.Path = b.str(path)
	if ev.Host == "" && len(host) > 0 {
		ev.Host = b.intern(host)
	}
}

var (
	rootPath    = []byte{'/'}
	connectVerb = []byte("CONNECT")
)

// splitTarget returns the host and path of a request target (RFC 9112, section 3.2):
//
//	origin-form     "/a/b?q"                 path "/a/b"
//	absolute-form   "http://user@h:8080/a?q" host "h:8080", path "/a" ("/" when none)
//	authority-form  "h:443" (CONNECT only)   host "h:443"
//	asterisk-form   "*"                      path "*"
//
// User information in an absolute-form target is a credential and is dropped. Anything
// else (junk a scanner sent) gives neither.
func splitTarget(method, t []byte) (host, path []byte) {
	switch {
	case len(t) == 0:
		return nil, nil
	case t[0] == '/':
		return nil, splitPath(t)
	case len(t) == 1 && t[0] == '*':
		return nil, t
	}
	i := bytes.Index(t, []byte("://"))
	if i <= 0 || i > 10 || !isMethodToken(t[:i]) {
		if bytes.EqualFold(method, connectVerb) && isAuthority(t) {
			return t, nil
		}
		return nil, nil
	}
	rest := t[i+3:]
	j := bytes.IndexAny(rest, "/?#")
	if j < 0 {
		j = len(rest)
	}
	host = rest[:j]
	if at := bytes.LastIndexByte(host, '@'); at >= 0 {
		host = host[at+1:]
	}
	if !isAuthority(host) {
		host = nil
	}
	if j == len(rest) || rest[j] != '/' {
		return host, rootPath
	}
	return host, splitPath(rest[j:])
}

// isAuthority reports whether a is a plausible host[:port]: a host name, an IPv4
// address or a bracketed IPv6 address, with an optional numeric port.
func isAuthority(a []byte) bool {
	if len(a) == 0 || len(a) > 261 {
		return false
	}
	if a[0] == '[' {
		end := bytes.IndexByte(a, ']')
		if end < 0 {
			return false
		}
		if _, err := netip.ParseAddr(unsafeString(a[1:end])); err != nil {
			return false
		}
		a = a[end+1:]
		if len(a) == 0 {
			return true
		}
		return a[0] == ':' && isPort(a[1:])
	}
	if i := bytes.LastIndexByte(a, ':'); i >= 0 {
		if !isPort(a[i+1:]) {
			return false
		}
		a = a[:i]
	}
	for _, c := range a {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return len(a) > 0
}

func isPort(p []byte) bool {
	n, ok := atoi64(p)
	return ok && n <= 65535
}

// splitPath returns the path of a request target without its query string or fragment.
func splitPath(uri []byte) []byte {
	if i := bytes.IndexAny(uri, "?#"); i >= 0 {
		return uri[:i]
	}
	return uri
}

// splitRequestLine splits a request line as logged ("GET /a?b HTTP/1.1") into method
// and request target; the protocol may be "-" (Envoy's %PROTOCOL% when it has none). A
// line that does not start with a method token ("-", a TLS handshake sent to a
// plain-HTTP port, scanner junk) gives neither.
func splitRequestLine(req []byte) (method, target []byte) {
	i := bytes.IndexByte(req, ' ')
	if i <= 0 || !isMethodToken(req[:i]) {
		return nil, nil
	}
	method, target = req[:i], bytes.TrimLeft(req[i+1:], " ")
	if j := bytes.LastIndexByte(target, ' '); j >= 0 && (bytes.HasPrefix(target[j+1:], []byte("HTTP/")) || string(target[j+1:]) == "-") {
		target = bytes.TrimRight(target[:j], " ")
	}
	return method, target
}

// setClientIP stores the client IP of an address as logged: the port and IPv6 brackets
// are stripped, an IPv4 address written as IPv6 ("::ffff:192.0.2.1") is written as
// IPv4, and of a list of addresses (X-Forwarded-For, or a $remote_addr that holds one)
// the client is chosen as clientOfList says. A value that is no IP address (a Unix
// socket path, "unknown", a token a client put in a header) is left out. It reports
// whether an address was stored.
func (b *base) setClientIP(ev *Event, v []byte) bool {
	e, a, ok := b.clientOfList(v)
	if ok {
		b.storeIP(ev, e, a)
	}
	return ok
}

// setClientBehind stores the client of a request whose peer (the TCP client, as
// logged) is peer and whose X-Forwarded-For header is xff, either possibly empty or
// "-". A peer that is trusted (see isTrusted: a load balancer or proxy of the
// operator's own) forwarded the request for the hops xff names, and the client is
// chosen among them as clientOfList says; any other peer is the client. It reports
// whether an address was stored.
func (b *base) setClientBehind(ev *Event, peer, xff []byte) bool {
	e, a, ok := b.clientOfList(peer)
	if !ok {
		return b.setClientIP(ev, xff)
	}
	if b.isTrusted(a) {
		if xe, xa, ok := b.clientOfList(xff); ok {
			e, a = xe, xa
		}
	}
	b.storeIP(ev, e, a)
	return true
}

// storeIP stores a, whose text as logged is e: as it is when that is an IPv4 address,
// else in canonical form, so that one client is one key however its address was
// written ("::ffff:192.0.2.1", "2001:DB8::1", a zone).
func (b *base) storeIP(ev *Event, e []byte, a netip.Addr) {
	if a.Is4() && bytes.IndexByte(e, ':') < 0 {
		ev.ClientIP = b.str(e)
		return
	}
	var buf [64]byte
	ev.ClientIP = b.str(a.AppendTo(buf[:0]))
}

// clientOfList returns the client address of an address or list of addresses as
// logged, and its text. Entries are separated by commas or spaces and may be quoted,
// carry a port or IPv6 brackets ("10.0.0.1:443", "[2001:db8::1]:443"); entries that are
// no address ("unknown", "-", a socket path) are passed over. Of a list, the client is
// the rightmost address that is not trusted (see isTrusted), else the leftmost address:
// what nginx's realip module does with real_ip_recursive on and those networks in
// set_real_ip_from. Each proxy appends the address it was connected from, and a client
// can put any address in the header it sends but only before the ones the proxies
// append, so a forged entry is never chosen over one that a proxy of the operator's
// added.
func (b *base) clientOfList(v []byte) (e []byte, a netip.Addr, ok bool) {
	if len(v) > 512 {
		return nil, a, false
	}
	var first []byte
	var firstA netip.Addr
	for len(v) > 0 {
		i := lastSeparator(v)
		x := v[i+1:]
		v = v[:max(i, 0)]
		if len(x) == 0 {
			continue
		}
		x, a, ok = parseAddrEntry(x)
		if !ok {
			continue
		}
		if !b.isTrusted(a) {
			return x, a, true
		}
		first, firstA = x, a
	}
	return first, firstA, first != nil
}

// lastSeparator returns the index of the last byte of v that separates the entries of
// an address list, or -1.
func lastSeparator(v []byte) int {
	for i := len(v) - 1; i >= 0; i-- {
		switch v[i] {
		case ',', ' ', '"', '\t':
			return i
		}
	}
	return -1
}

// parseAddrEntry parses one logged address and returns it without its port or IPv6
// brackets, IPv4 addresses written as IPv6 unmapped.
func parseAddrEntry(e []byte) ([]byte, netip.Addr, bool) {
	if e = stripPort(e); len(e) > 2 && e[0] == '[' && e[len(e)-1] == ']' {
		e = e[1 : len(e)-1]
	}
	a, ok := parseIP(e)
	if !ok {
		return nil, netip.Addr{}, false
	}
	return e, a.Unmap().WithZone(""), true
}

// isAddr reports whether v is an IP address as logged (see parseAddrEntry).
func isAddr(v []byte) bool {
	_, _, ok := parseAddrEntry(v)
	return ok
}

// stripPort returns a host name or address without its ":port".
func stripPort(v []byte) []byte {
	if j := bytes.LastIndexByte(v, ':'); j > 0 && isDigits(v[j+1:]) &&
		(bytes.IndexByte(v, ':') == j || v[j-1] == ']') {
		return v[:j] // a name or IPv4 address has no other colon
	}
	return v
}

// parseIP parses an IP address. Text that cannot be one (a host name, a token, "-") is
// refused before netip parses it, whose error would cost an allocation.
func parseIP(v []byte) (netip.Addr, bool) {
	if len(v) < 2 || len(v) > 64 || !looksLikeIP(v) {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(unsafeString(v))
	return a, err == nil
}

// looksLikeIP reports whether v is made of what an IP address is: hex digits, dots
// and colons, at least one of them, then an IPv6 zone of any text.
func looksLikeIP(v []byte) bool {
	if i := bytes.IndexByte(v, '%'); i >= 0 {
		v = v[:i]
	}
	sep := false
	for _, c := range v {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
		case c == '.' || c == ':':
			sep = true
		default:
			return false
		}
	}
	return sep
}

// setClientHost is setClientBehind for logs whose remote host may be a name (Apache
// with HostnameLookups on, "%h"): a valid host name is stored as it is, so the
// detectors keyed by client IP still tell clients apart. Anything else is left out.
func (b *base) setClientHost(ev *Event, peer, xff []byte) {
	if b.setClientBehind(ev, peer, xff) {
		return
	}
	// "unknown" is what proxies write for an address they do not know (RFC 7239).
	if name := firstEntry(peer); isHostName(name) && string(name) != "unknown" {
		ev.ClientIP = b.str(name)
	}
}

// cgnat is the shared address space (RFC 6598) that cloud load balancers and
// carrier-grade NAT forward from.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// isTrusted reports whether a is an address of the operator's own network, which
// forwards requests rather than makes them: private (RFC 1918, fc00::/7), loopback,
// link-local or shared (RFC 6598), or in ingest.trusted_proxies (a CDN's edges).
func (b *base) isTrusted(a netip.Addr) bool {
	if a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsUnspecified() || cgnat.Contains(a) {
		return true
	}
	for _, p := range b.opts.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// firstEntry returns the first entry of a comma-separated list, trimmed.
func firstEntry(v []byte) []byte {
	v = bytes.TrimSpace(v)
	if i := bytes.IndexByte(v, ','); i >= 0 {
		v = bytes.TrimSpace(v[:i])
	}
	return v
}

// isHostName reports whether s is a DNS host name as a reverse lookup gives one: at most
// 253 bytes of dot-separated labels (one alone for a machine of the local network,
// "monitoring-server", as Apache logs it with HostnameLookups on), each of 1 to 63
// letters, digits and inner hyphens, the last starting with a letter. A label that
// mixes upper- and lower-case letters is refused: resolvers hand out one case, while an
// API key or a JWT segment (base64) mixes them, and a credential in the client field
// must not be taken for a name.
func isHostName(s []byte) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for len(s) > 0 {
		label := s
		if i := bytes.IndexByte(s, '.'); i >= 0 {
			label, s = s[:i], s[i+1:]
			if len(s) == 0 {
				return false // a trailing dot is not how logs write names
			}
		} else {
			s = nil
		}
		if !isHostLabel(label) {
			return false
		}
		if len(s) == 0 && !(label[0] >= 'a' && label[0] <= 'z' || label[0] >= 'A' && label[0] <= 'Z') {
			return false // the top-level label is alphabetic: "10.1.2.300" is no name
		}
	}
	return true
}

func isHostLabel(l []byte) bool {
	if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	upper, lower := false, false
	for _, c := range l {
		switch {
		case c >= 'a' && c <= 'z':
			lower = true
		case c >= 'A' && c <= 'Z':
			upper = true
		case c >= '0' && c <= '9', c == '-':
		default:
			return false
		}
	}
	return !(upper && lower)
}

// unsafeString views b as a string for a call that does not keep it (netip.ParseAddr
// copies the one part it keeps, an IPv6 zone).
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

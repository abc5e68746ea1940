package detectors

import (
	"net/netip"
	"strings"
	"unsafe"

	"github.com/gatewatch/gatewatch/ingest"
)

// An AddrBuf holds the key AddrKey writes for an IPv6 client while it is in use.
type AddrBuf [64]byte

// AddrKey returns the key of a client known by its address ip: ip itself, but for an
// IPv6 address its /64 ("2001:db8:1:2::/64"), written into buf. A /64 is what one
// subscriber line, phone or cloud instance is given, and its owner may send each
// request from another of its addresses: keyed by address, a credential spray or a
// route scan spread over them would never add up. Clients of one /64 share a key as
// clients behind one IPv4 NAT address do. The key may point into buf, valid until its
// next use.
func AddrKey(ip string, buf *AddrBuf) string {
	if strings.IndexByte(ip, ':') < 0 {
		return ip // IPv4, or a host name (Apache's HostnameLookups)
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Is4In6() {
		return ip
	}
	p, err := a.WithZone("").Prefix(64)
	if err != nil {
		return ip
	}
	b := p.AppendTo(buf[:0])
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// ClientOf returns the key of an event's client for the detectors keyed by client: its
// client key, else its address (see AddrKey), which may point into buf.
func ClientOf(ev *ingest.Event, buf *AddrBuf) (key string, byIP bool) {
	if ev.ClientKey != "" {
		return ev.ClientKey, false
	}
	return AddrKey(ev.ClientIP, buf), true
}

// HostOf returns the key of an event's client for the detectors keyed by address: its
// address (see AddrKey), which may point into buf, else its client key.
func HostOf(ev *ingest.Event, buf *AddrBuf) (key string, byKey bool) {
	if ev.ClientIP != "" {
		return AddrKey(ev.ClientIP, buf), false
	}
	return ev.ClientKey, true
}

// isIP reports whether a client key is an address key (see AddrKey): the key of a
// client that sent no client key.
func isIP(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	_, err := netip.ParsePrefix(s)
	return err == nil
}

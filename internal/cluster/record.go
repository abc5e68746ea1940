package cluster

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// The internal records. Every value starts with a type byte; the rest is a compact
// binary form with variable-length integers (encoding/binary's uvarints):
//
//	event: 0x01, source topic (len, bytes), source partition, source offset, flags,
//	       event time (ms since the epoch), stream time minus event time (ms),
//	       field set, then each field of the set in fieldSet's bit order
//	mark:  0x02, count, then per mark: source topic, source partition, source offset,
//	       flags, stream time (ms)
//
// A string field is its length and bytes; status is a uvarint; a token fingerprint of
// 32 lower-case hex digits travels as its 16 bytes (flag tokenRaw), and a client IP
// that parses as an address as its 4 or 16 bytes (flag ipRaw). The encoding of an event
// depends only on the event, its source position and its stream time, so that stage
// one, reading a source partition again after a crash, writes the very same records.
const (
	typeEvent byte = 0x01
	typeMark  byte = 0x02
)

// Flags of a record.
const (
	flagLate     = 1 << iota // event: the first stage judged it late in its source partition
	flagTokenRaw             // event: TokenFP is 16 raw bytes
	flagIPRaw                // event: ClientIP is 4 or 16 raw bytes
	flagOpened               // mark: the source partition was (re)assigned to a first-stage member
	flagIdle                 // mark: the source partition delivered nothing for idle_timeout
)

// A fieldSet says which fields of an event a record carries.
type fieldSet uint16

const (
	fClientKey fieldSet = 1 << iota
	fTokenFP
	fDevice
	fClientIP
	fCountry
	fMethod
	fHost
	fRoute
	fPath
	fStatus
	fRequestID
	fSource
	fAction
	fRuleID
	fUserAgent
	fAll = 1<<iota - 1
)

// A position names one record of a source partition.
type position struct {
	part   ingest.Partition
	offset int64
}

// appendEvent appends the record of ev, read at pos, with the fields of fs, to dst.
func appendEvent(dst []byte, pos position, stream int64, late bool, fs fieldSet, ev *ingest.Event) []byte {
	t := ev.Time.UnixMilli()
	var flags uint64
	if late {
		flags |= flagLate
	}
	var tok [16]byte
	if fs&fTokenFP != 0 && len(ev.TokenFP) == 32 && isLowerHex(ev.TokenFP) {
		hex.Decode(tok[:], []byte(ev.TokenFP))
		flags |= flagTokenRaw
	}
	var ip netip.Addr
	if fs&fClientIP != 0 {
		if a, err := netip.ParseAddr(ev.ClientIP); err == nil && a.Zone() == "" && a.String() == ev.ClientIP {
			ip = a
			flags |= flagIPRaw
		}
	}
	dst = append(dst, typeEvent)
	dst = appendString(dst, pos.part.Source)
	dst = binary.AppendUvarint(dst, uint64(pos.part.ID))
	dst = binary.AppendUvarint(dst, uint64(pos.offset))
	dst = binary.AppendUvarint(dst, flags)
	dst = binary.AppendVarint(dst, t)
	dst = binary.AppendUvarint(dst, uint64(max(stream-t, 0)))
	dst = binary.AppendUvarint(dst, uint64(fs))
	for f := fieldSet(1); f <= fUserAgent; f <<= 1 {
		if fs&f == 0 {
			continue
		}
		switch f {
		case fTokenFP:
			if flags&flagTokenRaw != 0 {
				dst = append(dst, tok[:]...)
				continue
			}
		case fClientIP:
			if flags&flagIPRaw != 0 {
				b := ip.AsSlice()
				dst = append(dst, byte(len(b)))
				dst = append(dst, b...)
				continue
			}
		case fStatus:
			dst = binary.AppendUvarint(dst, uint64(max(ev.Status, 0)))
			continue
		}
		dst = appendString(dst, *stringField(ev, f))
	}
	return dst
}

// stringField returns the string field f of ev.
func stringField(ev *ingest.Event, f fieldSet) *string {
	switch f {
	case fClientKey:
		return &ev.ClientKey
	case fTokenFP:
		return &ev.TokenFP
	case fDevice:
		return &ev.Device
	case fClientIP:
		return &ev.ClientIP
	case fCountry:
		return &ev.Country
	case fMethod:
		return &ev.Method
	case fHost:
		return &ev.Host
	case fRoute:
		return &ev.Route
	case fPath:
		return &ev.Path
	case fRequestID:
		return &ev.RequestID
	case fSource:
		return &ev.Source
	case fAction:
		return &ev.Action
	case fRuleID:
		return &ev.RuleID
	case fUserAgent:
		return &ev.UserAgent
	}
	panic(fmt.Sprintf("cluster: field %#x is not a string", f)) // a programming error: the callers pass single string fields
}

func isLowerHex(s string) bool {
	for i := range len(s) {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// A mark is one source partition's state relayed in-band to every task.
type mark struct {
	pos    position // the partition's last record read
	stream int64    // its stream time, ms: the largest event time read from it
	flags  uint64   // flagOpened, flagIdle
}

// appendMarks appends the record of marks to dst.
func appendMarks(dst []byte, marks []mark) []byte {
	dst = append(dst, typeMark)
	dst = binary.AppendUvarint(dst, uint64(len(marks)))
	for _, m := range marks {
		dst = appendString(dst, m.pos.part.Source)
		dst = binary.AppendUvarint(dst, uint64(m.pos.part.ID))
		dst = binary.AppendUvarint(dst, uint64(max(m.pos.offset, 0)))
		dst = binary.AppendUvarint(dst, m.flags)
		dst = binary.AppendVarint(dst, m.stream)
	}
	return dst
}

// A record is one decoded internal record: an event, or marks.
type record struct {
	typ    byte
	pos    position
	late   bool
	stream int64
	ev     ingest.Event
	marks  []mark
}

// errRecord says an internal record does not decode: written by something else, or
// damaged.
var errRecord = errors.New("cluster: malformed internal record")

// decoder reads the fields of one record.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errRecord
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errRecord
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errRecord
		return nil
	}
	b := d.b[:n]
	d.b = d.b[n:]
	return b
}

func (d *decoder) string() string { return string(d.bytes(d.uvarint())) }

func (d *decoder) position() position {
	src := d.string()
	id := d.uvarint()
	off := d.uvarint()
	if id > 1<<31-1 || off > 1<<63-1 {
		d.err = errRecord
	}
	return position{part: ingest.Partition{Source: src, ID: int32(id)}, offset: int64(off)}
}

// decodeRecord decodes value into r, reusing r's storage.
func decodeRecord(r *record, value []byte) error {
	if len(value) == 0 {
		return fmt.Errorf("%w: empty", errRecord)
	}
	d := decoder{b: value[1:]}
	r.typ = value[0]
	r.marks = r.marks[:0]
	switch r.typ {
	case typeEvent:
		r.pos = d.position()
		flags := d.uvarint()
		t := d.varint()
		r.stream = t + int64(d.uvarint())
		r.late = flags&flagLate != 0
		fs := fieldSet(d.uvarint())
		r.ev = ingest.Event{Time: time.UnixMilli(t).UTC()}
		for f := fieldSet(1); f <= fUserAgent && d.err == nil; f <<= 1 {
			if fs&f == 0 {
				continue
			}
			switch {
			case f == fTokenFP && flags&flagTokenRaw != 0:
				r.ev.TokenFP = hex.EncodeToString(d.bytes(16))
			case f == fClientIP && flags&flagIPRaw != 0:
				n := d.bytes(1)
				if d.err != nil {
					break
				}
				a, ok := netip.AddrFromSlice(d.bytes(uint64(n[0])))
				if !ok {
					d.err = errRecord
					break
				}
				r.ev.ClientIP = a.String()
			case f == fStatus:
				r.ev.Status = int(d.uvarint())
			default:
				*stringField(&r.ev, f) = d.string()
			}
		}
	case typeMark:
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			return fmt.Errorf("%w: %d marks in %d bytes", errRecord, n, len(value))
		}
		for range n {
			pos := d.position()
			flags := d.uvarint()
			r.marks = append(r.marks, mark{pos: pos, flags: flags, stream: d.varint()})
		}
	default:
		return fmt.Errorf("%w: type %#x", errRecord, r.typ)
	}
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%w: %d bytes left over", errRecord, len(d.b))
	}
	return d.err
}

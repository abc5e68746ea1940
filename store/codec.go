package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"

	"github.com/gatewatch/gatewatch/ingest"
)

// A block is one batch of archived events on its way to ClickHouse, encoded compactly.
// Encoding at ArchiveEvents time copies every field out of the caller's events, so the
// buffer holds no reference to the parser's string chunks (which would keep whole 32 KiB
// chunks alive per event during an outage), its size is known in bytes, and a block
// that must wait on disk is written out as it is.
//
// id is the block's identity in ClickHouse: every row carries (batch_id, seq), so a
// block written twice (an insert that timed out after the server committed it, then
// replayed from the spill) is recognised, both before the second insert and on read.
type block struct {
	id       uint64
	n        int    // events encoded in data
	data     []byte // n records, see appendRecord
	seq      uint64 // order in which blocks were sealed in this process; 0 for recovered spill segments
	opened   time.Time
	attempts int // inserts tried; after a failed one the server may hold the block already
}

// Records are: time as a zig-zag varint of Unix milliseconds, status as a uvarint,
// then each string field as a uvarint length and its bytes, in recordStrings order.
const recordStrings = 14

func appendRecord(dst []byte, ev *ingest.Event) []byte {
	dst = binary.AppendVarint(dst, ev.Time.UnixMilli())
	dst = binary.AppendUvarint(dst, uint64(min(max(ev.Status, 0), math.MaxUint16)))
	for _, s := range [recordStrings]string{
		ev.Source, ev.ClientKey, ev.TokenFP, ev.Device, ev.ClientIP, ev.Country, ev.Method,
		ev.Host, ev.Route, ev.Path, ev.Action, ev.RuleID, ev.UserAgent, ev.RequestID,
	} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	return dst
}

var errCorrupt = errors.New("store: corrupt archive block")

// columns holds a decoded block in the layout of the events table, reused from block to
// block by the one goroutine that inserts. Its strings point into the block's data,
// which is never written after sealing, so decoding allocates nothing per event.
type columns struct {
	time                                                                []int64 // Unix seconds, clamped to DateTime's range
	ms, status                                                          []uint16
	source, clientKey, tokenFP, device, clientIP, country, method, host []string
	route, path, action, ruleID, userAgent, requestID                   []string
	batchID                                                             []uint64
	seq                                                                 []uint32
}

// insertColumns names the events columns in the order columns.values returns them. With
// 18.16 an INSERT through clickhouse-go must name its columns.
const insertColumns = "time, ms, source, client_key, token_fp, device, client_ip, country, method, host, route, path, status, action, rule_id, user_agent, request_id, batch_id, seq"

func (c *columns) values() []any {
	return []any{c.time, c.ms, c.source, c.clientKey, c.tokenFP, c.device, c.clientIP, c.country,
		c.method, c.host, c.route, c.path, c.status, c.action, c.ruleID, c.userAgent, c.requestID,
		c.batchID, c.seq}
}

func (c *columns) reset() {
	c.time, c.ms, c.status = c.time[:0], c.ms[:0], c.status[:0]
	for _, s := range c.strings() {
		clear(*s) // drop references into the previous block's data
		*s = (*s)[:0]
	}
	c.batchID, c.seq = c.batchID[:0], c.seq[:0]
}

func (c *columns) strings() [recordStrings]*[]string {
	return [recordStrings]*[]string{&c.source, &c.clientKey, &c.tokenFP, &c.device, &c.clientIP,
		&c.country, &c.method, &c.host, &c.route, &c.path, &c.action, &c.ruleID, &c.userAgent, &c.requestID}
}

// maxDateTime is the last second ClickHouse's DateTime holds (UInt32).
const maxDateTime = math.MaxUint32

// rawRecord is one record as parseRecord splits it; fields alias the encoded data.
type rawRecord struct {
	msec   int64 // Unix milliseconds
	status uint16
	fields [recordStrings][]byte // in recordStrings order
}

// parseRecord splits the first record off data and returns the rest.
func parseRecord(data []byte, r *rawRecord) ([]byte, error) {
	msec, k := binary.Varint(data)
	if k <= 0 {
		return nil, fmt.Errorf("%w: time", errCorrupt)
	}
	data = data[k:]
	status, k := binary.Uvarint(data)
	if k <= 0 || status > math.MaxUint16 {
		return nil, fmt.Errorf("%w: status", errCorrupt)
	}
	data = data[k:]
	r.msec, r.status = msec, uint16(status)
	for i := range r.fields {
		n, k := binary.Uvarint(data)
		if k <= 0 || n > uint64(len(data)-k) {
			return nil, fmt.Errorf("%w: field length", errCorrupt)
		}
		r.fields[i] = data[k : k+int(n)]
		data = data[k+int(n):]
	}
	return data, nil
}

// clampMilli keeps an event time, in Unix milliseconds, within what DateTime holds
// (1970 to 2106). Event times come from ingest, which rejects absurd ones; the archives
// clamp anyway, both the same way.
func clampMilli(msec int64) int64 { return min(max(msec, 0), maxDateTime*1000+999) }

// decode replaces c's contents with the first n records of data, as the rows of the
// insert block id whose seq numbers start at first, and returns the records after them.
func (c *columns) decode(data []byte, n int, id uint64, first int) ([]byte, error) {
	c.reset()
	strs := c.strings()
	var r rawRecord
	for i := range n {
		var err error
		if data, err = parseRecord(data, &r); err != nil {
			return nil, fmt.Errorf("%w (event %d)", err, first+i)
		}
		msec := clampMilli(r.msec)
		c.time = append(c.time, msec/1000)
		c.ms = append(c.ms, uint16(msec%1000))
		c.status = append(c.status, r.status)
		for j, col := range strs {
			*col = append(*col, bytesString(r.fields[j]))
		}
		c.batchID = append(c.batchID, id)
		c.seq = append(c.seq, uint32(first+i))
	}
	return data, nil
}

func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

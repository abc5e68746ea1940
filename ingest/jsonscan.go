package ingest

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"unicode/utf8"
)

// A jsonScanner reads a JSON record in place, for a parser that needs a few of its
// fields: the values it is not asked for are checked and skipped, never built, which
// costs less than a fastjson parse of the whole record into a tree.
//
// It is meant as a fast path in front of fastjson, and gives up (failed) on anything it
// does not handle: a key with an escape, an escape other than the plain ones or a \u of
// a non-surrogate, nesting deeper than maxScanDepth, anything that is not RFC 8259 JSON.
// A parser that sees it fail parses the record again with fastjson, whose verdict and
// errors are then the record's. So the scanner has one rule to keep: what it accepts,
// fastjson accepts too (fastjson is the more lenient: any escape, any number-like
// token), with the same values. Strings end where fastjson's do: at the first quote not
// escaped by an odd number of backslashes.
//
// Failing is sticky: after it, every method returns at once and more reports false, so
// a parser reads on without checking, and asks end whether the record was good.
type jsonScanner struct {
	b      []byte
	i      int
	first  bool // the container just entered has had no member or element yet
	depth  int
	failed bool
	buf    []byte // unescaped strings; never grown past its capacity, so earlier ones stay put
}

// maxScanDepth bounds nesting (fastjson's bound is 300: deeper records fall back to it).
const maxScanDepth = 64

// A jsonValue is a value as scanned: a string's text unescaped, a number's as written.
type jsonValue struct {
	kind jsonKind
	b    []byte
}

type jsonKind uint8

const (
	jsonAbsent jsonKind = iota // no value was read
	jsonNull
	jsonString
	jsonNumber
	jsonOther // true, false, an object or an array: checked and skipped
)

// reset starts reading b, which must stay unchanged while its values are used.
func (s *jsonScanner) reset(b []byte) {
	*s = jsonScanner{b: b, buf: s.buf[:0]}
	if cap(s.buf) < len(b) { // unescaping never lengthens a string
		s.buf = make([]byte, 0, len(b))
	}
}

func (s *jsonScanner) fail() {
	s.failed = true
	s.i = len(s.b)
}

func (s *jsonScanner) ws() {
	if s.i < len(s.b) && s.b[s.i] > ' ' { // records seldom have any
		return
	}
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// end reports whether the record was read without failing and nothing but white space
// follows it.
func (s *jsonScanner) end() bool {
	s.ws()
	if s.i != len(s.b) {
		s.fail()
	}
	return !s.failed
}

// enter opens the object ('{') or array ('[') that comes next, if one does.
func (s *jsonScanner) enter(open byte) bool {
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != open {
		return false
	}
	if s.depth++; s.depth > maxScanDepth {
		s.fail()
		return false
	}
	s.i++
	s.first = true
	return true
}

// more reports whether the container entered last has another member (close is '}')
// or element (']'), and steps over the comma before it; at the end, it steps out.
func (s *jsonScanner) more(close byte) bool {
	s.ws()
	switch {
	case s.i >= len(s.b):
		s.fail()
		return false
	case s.b[s.i] == close:
		s.i++
		s.depth--
		s.first = false // the container was a value of its parent
		return false
	case !s.first:
		if s.b[s.i] != ',' {
			s.fail()
			return false
		}
		s.i++
		s.ws()
	}
	s.first = false
	return true
}

// A keyOrder predicts the keys of an object from those of the last object read with it:
// records of one source are written by one program, whose objects list the same keys
// in the same order. A key as predicted is found by comparing text, which does not
// wait on the search for its end as reading it does.
type keyOrder struct {
	n    int // members read in the object being read
	lits [maxOrderKeys]orderSlot
}

// An orderSlot is what a keyOrder knows of one member.
type orderSlot struct {
	n int               // length of b, 0 if none is known
	b [maxOrderLit]byte // `"key":`
	// the value skipped last (skipMember), when it is no number
	vn int
	v  [maxOrderValue]byte
}

const maxOrderKeys, maxOrderLit, maxOrderValue = 32, 48, 192

// member is more('}') and then key: it steps to the next member of the object entered
// last and reads its key and the colon after it, or steps out at the end of the object
// and reports false. ko, reset (its n zeroed) when the object was entered, predicts the
// key, and learns it when it was not the one predicted.
func (s *jsonScanner) member(ko *keyOrder) ([]byte, bool) {
	b, i := s.b, s.i
	if !s.first && i < len(b) && b[i] == ',' {
		i++
	}
	if (i > s.i || s.first) && ko.n < maxOrderKeys {
		if lit := &ko.lits[ko.n]; lit.n > 0 && len(b)-i >= lit.n && string(b[i:i+lit.n]) == string(lit.b[:lit.n]) {
			ko.n++
			s.first = false
			s.i = i + lit.n
			s.ws()
			return b[i+1 : i+lit.n-2], true
		}
	}
	if !s.more('}') {
		return nil, false
	}
	start := s.i
	k := s.key()
	if ko.n < maxOrderKeys {
		lit := &ko.lits[ko.n]
		lit.n = 0
		// The key as written, when nothing but its quotes and the colon surround it.
		if n := len(k) + 3; !s.failed && n <= maxOrderLit && b[start+n-2] == '"' && b[start+n-1] == ':' {
			lit.n = copy(lit.b[:], b[start:start+n])
		}
	}
	ko.n++
	return k, true
}

// skipMember skips the value of the member member(ko) read last. A value the same as
// the one that member had in the last object is found by comparing text (one checked
// then, so it needs no checking); ARNs, source ids, empty lists and nulls are the same
// in most records of a web ACL. A number is never predicted: its text may go on.
func (s *jsonScanner) skipMember(ko *keyOrder) {
	k := ko.n - 1
	if k < 0 || k >= maxOrderKeys {
		s.skip()
		return
	}
	lit := &ko.lits[k]
	b, i := s.b, s.i
	if lit.vn > 0 && len(b)-i >= lit.vn && string(b[i:i+lit.vn]) == string(lit.v[:lit.vn]) {
		s.i = i + lit.vn
		return
	}
	s.skip()
	lit.vn = 0
	if n := s.i - i; !s.failed && n <= maxOrderValue {
		switch b[i] {
		case '"', '{', '[', 't', 'f', 'n':
			lit.vn = copy(lit.v[:], b[i:s.i])
		}
	}
}

// key reads a member's key and the colon after it.
func (s *jsonScanner) key() []byte {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		s.fail()
		return nil
	}
	start := s.i + 1
	j := s.special(start)
	if j >= len(s.b) || s.b[j] == '\\' {
		s.fail() // an escaped key is rare, and fastjson's way of matching one is its own
		return nil
	}
	k := s.b[start:j]
	s.i = j + 1
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		s.fail()
		return nil
	}
	s.i++
	s.ws()
	return k
}

// value reads the next value.
func (s *jsonScanner) value() jsonValue {
	if s.i >= len(s.b) {
		s.fail()
		return jsonValue{}
	}
	switch c := s.b[s.i]; {
	case c == '"':
		raw, escaped := s.rawString()
		if !escaped {
			return jsonValue{jsonString, raw}
		}
		return jsonValue{jsonString, s.unescape(raw)}
	case c == '-' || ('0' <= c && c <= '9'):
		return jsonValue{jsonNumber, s.number()}
	case c == 'n':
		s.literal("null")
		return jsonValue{kind: jsonNull}
	}
	s.skip()
	return jsonValue{kind: jsonOther}
}

// firstValue reads the next value into dst unless an earlier member of the same key did:
// the first of repeated keys wins, as in the fastjson-based parsers.
func (s *jsonScanner) firstValue(dst *jsonValue) {
	v := s.value()
	if dst.kind == jsonAbsent {
		*dst = v
	}
}

// open enters the object ('{') or array ('[') that comes next, or reads a null in its
// place and reports false; anything else fails.
func (s *jsonScanner) open(open byte) bool {
	if bytes.HasPrefix(s.b[s.i:], []byte("null")) {
		s.i += len("null")
		return false
	}
	if !s.enter(open) {
		s.fail()
		return false
	}
	return true
}

// nameValue reads a header entry written exactly as AWS WAF writes one,
// {"name":"...","value":"..."} without white space, where the name has no escape, and
// reports ok; it returns the value raw, and whether it has an escape, for the caller
// to unescape only when it uses the value. On any other text it reads nothing and
// reports false, for the caller to read the entry member by member.
//
// ko predicts the entries as member predicts keys: its n counts the entries of the
// list (the caller zeroes it), and it keeps each one's text up to its value,
// {"name":"...","value":", as the last list had it: clients send their headers in an
// order of their own, the same in each request.
func (s *jsonScanner) nameValue(ko *keyOrder) (name, value []byte, escaped, ok bool) {
	const nameKey, valueKey = `{"name":"`, `","value":"`
	b, i := s.b, s.i
	var lit *orderSlot
	if k := ko.n; k < maxOrderKeys {
		lit = &ko.lits[k]
	}
	ko.n++
	if lit != nil && lit.n > 0 && len(b)-i >= lit.n && string(b[i:i+lit.n]) == string(lit.b[:lit.n]) {
		name = b[i+len(nameKey) : i+lit.n-len(valueKey)]
		i += lit.n
	} else {
		if len(b)-i < len(nameKey) || string(b[i:i+len(nameKey)]) != nameKey {
			return nil, nil, false, false
		}
		j := s.special(i + len(nameKey))
		if len(b)-j < len(valueKey) || string(b[j:j+len(valueKey)]) != valueKey {
			return nil, nil, false, false // also a name with an escape: b[j] is '\\'
		}
		name = b[i+len(nameKey) : j]
		if lit != nil {
			lit.n = 0
			if n := j + len(valueKey) - i; n <= maxOrderLit {
				lit.n = copy(lit.b[:], b[i:j+len(valueKey)])
			}
		}
		i = j + len(valueKey)
	}
	j := s.special(i)
	for ; j < len(b) && b[j] == '\\'; j = s.special(j + 2) {
		escaped = true
	}
	if j+1 >= len(b) || b[j+1] != '}' {
		return nil, nil, false, false
	}
	s.i = j + 2
	return name, b[i:j], escaped, true
}

// skip steps over the next value, checking it.
func (s *jsonScanner) skip() {
	if s.i >= len(s.b) {
		s.fail()
		return
	}
	switch s.b[s.i] {
	case '"':
		s.rawString()
	case '{':
		s.enter('{')
		for s.more('}') {
			s.key()
			s.skip()
		}
	case '[':
		s.enter('[')
		for s.more(']') {
			s.skip()
		}
	case 't':
		s.literal("true")
	case 'f':
		s.literal("false")
	case 'n':
		s.literal("null")
	default:
		s.number()
	}
}

func (s *jsonScanner) literal(lit string) {
	if !bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		s.fail()
		return
	}
	s.i += len(lit)
}

// rawString reads a string, quotes excluded, escapes left as they are, and reports
// whether it has any.
func (s *jsonScanner) rawString() (raw []byte, escaped bool) {
	start := s.i + 1
	for j := s.special(start); j < len(s.b); j = s.special(j + 2) {
		if s.b[j] == '"' {
			s.i = j + 1
			return s.b[start:j], escaped
		}
		escaped = true
	}
	s.fail()
	return nil, false
}

// special returns the index of the first quote or backslash at or after i, len(s.b)
// if there is none. It tests eight bytes at a time (bytes.IndexByte costs more on the
// short strings of a record, and looks for one byte only).
func (s *jsonScanner) special(i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(s.b); i += 8 {
		x := binary.LittleEndian.Uint64(s.b[i:])
		q, bs := x^(ones*'"'), x^(ones*'\\')
		// The high bit of a byte of q (bs) is set where it was zero, below the first
		// such byte exactly, which is all the trailing count needs.
		if m := ((q-ones)&^q | (bs-ones)&^bs) & highs; m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
	}
	for ; i < len(s.b); i++ {
		if c := s.b[i]; c == '"' || c == '\\' {
			return i
		}
	}
	return len(s.b)
}

// number reads a number (RFC 8259's grammar: fastjson takes more).
func (s *jsonScanner) number() []byte {
	start := s.i
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	switch {
	case s.i < len(s.b) && s.b[s.i] == '0':
		s.i++
	case !s.digits():
		s.fail()
		return nil
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if !s.digits() {
			s.fail()
			return nil
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if !s.digits() {
			s.fail()
			return nil
		}
	}
	return s.b[start:s.i]
}

// digits steps over a run of decimal digits, reporting whether there was one.
func (s *jsonScanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// unescape decodes raw into buf as fastjson does, failing on the escapes it does not
// handle (surrogates, malformed or unknown escapes: fastjson keeps those as written).
func (s *jsonScanner) unescape(raw []byte) []byte {
	start := len(s.buf)
	for len(raw) > 0 {
		n := bytes.IndexByte(raw, '\\')
		if n < 0 {
			s.buf = append(s.buf, raw...)
			break
		}
		s.buf = append(s.buf, raw[:n]...)
		if n+1 >= len(raw) {
			s.fail()
			return nil
		}
		c := raw[n+1]
		raw = raw[n+2:]
		switch c {
		case '"', '\\', '/':
			s.buf = append(s.buf, c)
		case 'b':
			s.buf = append(s.buf, '\b')
		case 'f':
			s.buf = append(s.buf, '\f')
		case 'n':
			s.buf = append(s.buf, '\n')
		case 'r':
			s.buf = append(s.buf, '\r')
		case 't':
			s.buf = append(s.buf, '\t')
		case 'u':
			r, ok := hex4(raw)
			if !ok || (0xd800 <= r && r < 0xe000) {
				s.fail()
				return nil
			}
			s.buf = utf8.AppendRune(s.buf, r)
			raw = raw[4:]
		default:
			s.fail()
			return nil
		}
	}
	return s.buf[start:]
}

// hex4 reads the four hex digits of a \u escape.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// text is a value that must be a string, or unset: absent or null.
func (v jsonValue) text() (b []byte, ok bool) {
	switch v.kind {
	case jsonString:
		return v.b, true
	case jsonAbsent, jsonNull:
		return nil, true
	}
	return nil, false
}

// uint reads a number written as decimal digits alone, small enough for any int64.
func (v jsonValue) uint() (n int64, ok bool) {
	if v.kind != jsonNumber || len(v.b) == 0 || len(v.b) > 18 {
		return 0, false
	}
	for _, c := range v.b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

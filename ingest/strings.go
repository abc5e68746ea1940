package ingest

import "unsafe"

// arenaChunk is the size of the blocks an arena carves strings from. One allocation
// serves a few dozen ~1 KB records, which keeps parsing well under one allocation per event.
const arenaChunk = 32 << 10

// An arena hands out immutable strings carved from large chunks. A chunk is never
// written again once a string points into it; a full chunk is dropped, not reused, so
// every string stays valid for as long as anything holds it.
type arena struct {
	buf []byte
}

// String returns a string with the contents of b, which the caller may reuse at once.
func (a *arena) String(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > arenaChunk/8 {
		return string(b) // a rare giant field gets its own allocation rather than wasting a chunk
	}
	if cap(a.buf)-len(a.buf) < len(b) {
		a.buf = make([]byte, 0, arenaChunk)
	}
	start := len(a.buf)
	a.buf = append(a.buf, b...)
	return unsafe.String(&a.buf[start], len(b))
}

// maxInterned bounds an interner, whose keys come from client input.
const maxInterned = 4096

// An interner returns one shared string per distinct low-cardinality value (methods,
// countries, actions), so repeated values cost no allocation.
type interner struct {
	m map[string]string
}

// Intern returns the shared string equal to b, falling back to the arena when full.
func (in *interner) Intern(a *arena, b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := in.m[string(b)]; ok { // the compiler does not allocate for this lookup
		return s
	}
	s := string(b)
	if in.m == nil {
		in.m = make(map[string]string, 64)
	}
	if len(in.m) >= maxInterned || len(b) > 64 {
		return a.String(b)
	}
	in.m[s] = s
	return s
}

package ingest

import "hash/maphash"

// A memo remembers values computed from recent inputs, for a parser whose clients send
// the same token or user agent with every request. A slot keeps no input, only two
// 64-bit hashes of it under seeds drawn for this memo: a heap dump shows no token, and
// no client can aim an input of its own at another's slot and value (128 bits would
// have to collide under seeds it cannot know). An input is a string and some bytes,
// either possibly empty; ("ab", "c") and ("a", "bc") are different inputs.
type memo[V any] struct {
	size  int           // slots
	slots []memoSlot[V] // made on first use
	seeds [2]maphash.Seed
}

type memoSlot[V any] struct {
	sum [2]uint64 // the input's hashes; zero: empty
	v   V
}

// memoMaxInput is the longest input remembered: longer ones are rarely sent twice.
const memoMaxInput = 1024

// get returns the value of input (s, b) and whether it is known. On a miss the slot is
// the input's from then on, and the caller stores the value it computes there. It
// returns nil for an input too long to remember.
func (m *memo[V]) get(s string, b []byte) (v *V, hit bool) {
	if len(s)+len(b) > memoMaxInput {
		return nil, false
	}
	if m.slots == nil {
		m.slots = make([]memoSlot[V], m.size)
		m.seeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}
	}
	var sum [2]uint64
	for i, seed := range m.seeds {
		sum[i] = maphash.String(seed, s)
		if len(b) > 0 {
			sum[i] = (sum[i] ^ maphash.Bytes(seed, b)) * 0x9e3779b97f4a7c15
		}
	}
	slot := &m.slots[sum[0]%uint64(len(m.slots))]
	hit, slot.sum = slot.sum == sum, sum
	return &slot.v, hit
}

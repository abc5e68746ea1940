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

// slot returns the slot of input (s, b), whether it holds that input's value, and the
// input's hashes, which the caller stores in the slot with the value it computes on a
// miss. It returns nil for an input too long to remember.
func (m *memo[V]) slot(s string, b []byte) (slot *memoSlot[V], hit bool, sum [2]uint64) {
	if len(s)+len(b) > memoMaxInput {
		return nil, false, sum
	}
	if m.slots == nil {
		m.slots = make([]memoSlot[V], m.size)
		m.seeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}
	}
	for i, seed := range m.seeds {
		sum[i] = maphash.String(seed, s)
		if len(b) > 0 {
			sum[i] = (sum[i] ^ maphash.Bytes(seed, b)) * 0x9e3779b97f4a7c15
		}
	}
	slot = &m.slots[sum[0]%uint64(len(m.slots))]
	return slot, slot.sum == sum, sum
}

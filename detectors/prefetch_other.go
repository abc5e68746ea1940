//go:build !amd64

package detectors

import "unsafe"

// prefetchLines loads one byte of every cache line of the n > 0 bytes at p, and returns
// their sum: callers keep it, so that the loads are not optimised away. Loads, unlike
// the prefetches of prefetch_amd64.s, occupy the CPU until memory answers, so fewer
// misses overlap.
func prefetchLines(p unsafe.Pointer, n uintptr) uint64 {
	var s uint64
	for off := uintptr(0); off < n; off += 64 {
		s += uint64(*(*byte)(unsafe.Add(p, off)))
	}
	return s + uint64(*(*byte)(unsafe.Add(p, n-1)))
}

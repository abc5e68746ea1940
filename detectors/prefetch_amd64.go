package detectors

import "unsafe"

// prefetchLines asks the CPU to load every cache line of the n > 0 bytes at p, and
// returns at once: a prefetch does not wait for memory, so the misses of a whole run of
// events overlap. It returns 0; see prefetch_other.go.
//
//go:noescape
func prefetchLines(p unsafe.Pointer, n uintptr) uint64

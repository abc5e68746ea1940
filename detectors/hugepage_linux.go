package detectors

import (
	"syscall"
	"unsafe"
)

// hugePage is the size of a transparent huge page on x86-64, and on arm64 with 4 KiB
// pages.
const hugePage = 2 << 20

// growHuge returns s with room for n more elements. When it has to move them, it
// advises the new backing array for huge pages before copying into it, so that the
// copy, the first to touch that memory, already gets them.
func growHuge[T any](s []T, n int) []T {
	if cap(s)-len(s) >= n {
		return s
	}
	g := make([]T, len(s), max(len(s)+n, cap(s)+cap(s)/4, 16)) // append's growth for large slices
	adviseHuge(g)
	copy(g, s)
	return g
}

// adviseHuge asks Linux to back the whole 2 MiB pages inside s's backing array with
// transparent huge pages (madvise MADV_HUGEPAGE). A detector's key table, index and
// counts are hundreds of MiB read at random: with 4 KiB pages nearly every access to
// them misses the TLB too, and the page walk costs as much as the miss it comes with.
// Go's runtime asks for no huge pages, and distributions default to huge pages only
// where a program asks (transparent_hugepage=madvise). Where the administrator turned
// them off (never), the advice does nothing. Failing is harmless, so errors are
// ignored: the memory is as usable as before.
func adviseHuge[T any](s []T) {
	var zero T
	n := uintptr(cap(s)) * unsafe.Sizeof(zero)
	if n < 2*hugePage {
		return
	}
	p := unsafe.Pointer(unsafe.SliceData(s)) // cap(s) > 0: the start of its backing array
	start := uintptr(p)
	lo := (start + hugePage - 1) &^ (hugePage - 1)
	hi := (start + n) &^ (hugePage - 1)
	if hi <= lo {
		return
	}
	_ = syscall.Madvise(unsafe.Slice((*byte)(unsafe.Add(p, lo-start)), hi-lo), syscall.MADV_HUGEPAGE)
}

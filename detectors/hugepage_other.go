//go:build !linux

package detectors

import "slices"

// growHuge returns s with room for n more elements; transparent huge pages are
// Linux's (see hugepage_linux.go).
func growHuge[T any](s []T, n int) []T { return slices.Grow(s, n) }

func adviseHuge[T any](s []T) {}

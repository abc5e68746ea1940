package detectors

import (
	"slices"
	"testing"
	"unsafe"
)

// TestGrowHuge: growHuge keeps the elements and their order, makes room for n more,
// and moves nothing when there is room; adviseHuge takes any slice, large or not.
func TestGrowHuge(t *testing.T) {
	for _, tc := range []struct {
		name    string
		len, cp int
		n       int
		moved   bool
	}{
		{"empty", 0, 0, 1, true},
		{"room", 3, 8, 5, false},
		{"full", 8, 8, 1, true},
		{"many more", 8, 8, 100, true},
		{"large", 3 << 20, 3 << 20, 1, true}, // 24 MiB: advised
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := make([]uint64, tc.len, tc.cp)
			for i := range s {
				s[i] = uint64(i) * 7
			}
			want := slices.Clone(s)
			g := growHuge(s, tc.n)
			if cap(g)-len(g) < tc.n {
				t.Errorf("room for %d more, want %d", cap(g)-len(g), tc.n)
			}
			if moved := unsafe.SliceData(g) != unsafe.SliceData(s); moved != tc.moved {
				t.Errorf("moved %v, want %v", moved, tc.moved)
			}
			if !slices.Equal(g, want) {
				t.Error("elements changed")
			}
			adviseHuge(g)
			adviseHuge(g[:0])
		})
	}
}

//go:build unix

package ingest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestFileSourceReadsPipesOnce: named pipes (or a shell's <(zcat ...)) cannot be read
// twice. Looking for their first event time, then opening them again to read them,
// lost what the look had read, and a FIFO whose writer died with the first close hung
// the second open.
func TestFileSourceReadsPipesOnce(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	var paths, want []string
	for f := range 2 {
		path := filepath.Join(dir, fmt.Sprintf("fifo%d", f))
		if err := syscall.Mkfifo(path, 0o600); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
		paths = append(paths, path)
		var lines []string
		for i := range 200 {
			ua := fmt.Sprintf("f%d-%03d", f, i)
			lines = append(lines, nginxLineAt(t0.Add(time.Duration(f*200+i)*time.Second), ua))
			want = append(want, ua)
		}
		go func() {
			w, err := os.OpenFile(path, os.O_WRONLY, 0) // blocks until the source opens it
			if err != nil {
				return
			}
			defer w.Close()
			for _, l := range lines {
				fmt.Fprintln(w, l)
			}
		}()
	}
	src := newNginxSource(t, paths, nil, nil)
	if got := drain(t, src); !slices.Equal(got, want) {
		t.Errorf("read %d events, want the %d written in order (first %v)", len(got), len(want), got[:min(3, len(got))])
	}
}

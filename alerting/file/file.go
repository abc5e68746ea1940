// Package file is the alerting receiver that appends alerts to a local file as JSON
// lines: one alert a line, in the Alert JSON contract of DESIGN.md, fsync'd before
// Notify returns. It is the archive receiver, and what `gatewatch notify` and the tests
// use to see exactly what was delivered.
//
// Delivery is at least once: if gatewatch stops after a line reached the disk but
// before the outbox recorded it, the next run appends the same alert version again. A
// reader that needs each version once keeps the last line per (id, last_seen,
// labels.reminder).
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// Receiver appends alerts to one file. The file is opened at the first Notify and
// opened again when it was moved away (log rotation), so a rotation needs no signal.
type Receiver struct {
	name string
	path string

	mu  sync.Mutex // the Router never overlaps calls; this protects Close against Notify
	f   *os.File
	buf []byte
}

var _ alerting.Receiver = (*Receiver)(nil)

// New checks cfg and returns the receiver; it opens nothing yet, so a file on a disk
// that is mounted late does not stop gatewatch from starting.
func New(name string, cfg alerting.FileConfig) (*Receiver, error) {
	if name == "" {
		return nil, errors.New("file: receiver needs a name")
	}
	if cfg.Path == "" {
		return nil, fmt.Errorf("file: receiver %s: path must be set", name)
	}
	return &Receiver{name: name, path: filepath.Clean(cfg.Path)}, nil
}

// Name returns the receiver's name.
func (r *Receiver) Name() string { return r.name }

// Notify appends one line per alert with a single write and syncs the file. A write
// that fails part way is cut off again, so the file never holds a torn line that a
// retry would append to. Every failure is worth a retry: disks fill up and get
// mounted again.
func (r *Receiver) Notify(ctx context.Context, alerts []detectors.Alert) (bool, error) {
	if err := ctx.Err(); err != nil {
		return true, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = r.buf[:0]
	for i := range alerts {
		// MarshalJSON directly: json.Marshal would validate and compact its
		// output once more.
		b, err := alerts[i].MarshalJSON()
		if err != nil {
			// Nothing a retry could change.
			return false, fmt.Errorf("file: encode alert %s: %w", alerts[i].ID, err)
		}
		r.buf = append(append(r.buf, b...), '\n')
	}
	if err := r.open(); err != nil {
		return true, err
	}
	end, err := r.f.Seek(0, io.SeekEnd)
	if err != nil {
		r.drop()
		return true, fmt.Errorf("file: %s: %w", r.path, err)
	}
	if _, err := r.f.Write(r.buf); err != nil {
		return true, r.undo(end, err)
	}
	if err := r.f.Sync(); err != nil {
		return true, r.undo(end, err)
	}
	return false, nil
}

// open opens the file unless the one open is still at r.path.
func (r *Receiver) open() error {
	if r.f != nil {
		cur, err1 := r.f.Stat()
		now, err2 := os.Stat(r.path)
		if err1 == nil && err2 == nil && os.SameFile(cur, now) {
			return nil
		}
		r.drop() // moved away or removed: write to the new file at path
	}
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("file: open: %w", err)
	}
	r.f = f
	return nil
}

// undo cuts what a failed write or sync may have left after end and closes the file,
// so that the next attempt starts from a file that ends with a whole line.
func (r *Receiver) undo(end int64, err error) error {
	err = fmt.Errorf("file: append to %s: %w", r.path, err)
	if terr := r.f.Truncate(end); terr != nil {
		err = errors.Join(err, fmt.Errorf("file: cut back %s: %w", r.path, terr))
	}
	r.drop()
	return err
}

func (r *Receiver) drop() {
	if r.f != nil {
		_ = r.f.Close() // the file is given up; a close error adds nothing to the one reported
		r.f = nil
	}
}

// Close closes the file; a later Notify opens it again.
func (r *Receiver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	if err != nil {
		return fmt.Errorf("file: close %s: %w", r.path, err)
	}
	return nil
}

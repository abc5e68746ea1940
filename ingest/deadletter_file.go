package ingest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
)

// FileDeadLetters appends dead letters to a file as JSON lines, one per record, and
// syncs the file before Put returns, so an acknowledged record is never lost.
type FileDeadLetters struct {
	mu sync.Mutex
	f  *os.File
	w  *bufio.Writer
}

// OpenFileDeadLetters opens a dead-letter file for appending. Records may hold
// credentials, so the file is created mode 0600, and an existing file that others may
// read is made 0600 too; one that cannot be (another user's, say), or that is no
// regular file, is refused.
func OpenFileDeadLetters(path string) (*FileDeadLetters, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ingest: open dead-letter file: %w", err)
	}
	if err := ownerOnly(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("ingest: dead-letter file %s: %w", path, err)
	}
	return &FileDeadLetters{f: f, w: bufio.NewWriter(f)}, nil
}

// ownerOnly makes f readable and writable by its owner alone, or says why it cannot.
func ownerOnly(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("is no regular file (%s)", fi.Mode().Type())
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("others may read it (mode %v) and it cannot be made 0600: %w", fi.Mode().Perm(), err)
	}
	return nil
}

// Put writes letters and syncs them to disk.
func (d *FileDeadLetters) Put(_ context.Context, letters []DeadLetter) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	enc := json.NewEncoder(d.w)
	for i := range letters {
		if err := enc.Encode(&letters[i]); err != nil {
			return fmt.Errorf("ingest: write dead letter: %w", err)
		}
	}
	if err := d.w.Flush(); err != nil {
		return fmt.Errorf("ingest: write dead letter: %w", err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("ingest: sync dead letters: %w", err)
	}
	return nil
}

// Close closes the file.
func (d *FileDeadLetters) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.f.Close()
}

// ReportDeadLetters writes one human line per rejected record ("stdin:12: invalid_json:
// ..."), without the record itself, which may hold credentials. `parse` uses it on stderr.
type ReportDeadLetters struct {
	mu sync.Mutex
	W  io.Writer
}

// Put writes the report lines.
func (d *ReportDeadLetters) Put(_ context.Context, letters []DeadLetter) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, dl := range letters {
		where := fmt.Sprintf("%s:%d", dl.Source, dl.Offset)
		if dl.Partition >= 0 {
			where = fmt.Sprintf("%s[%d]@%d", dl.Source, dl.Partition, dl.Offset)
		}
		verdict := "rejected"
		if dl.Kept {
			verdict = "repaired"
		}
		if _, err := fmt.Fprintf(d.W, "%s: %s: %s\n", where, verdict, dl.Error); err != nil {
			return err
		}
	}
	return nil
}

// TeeDeadLetters stores every letter in each of its sinks in turn.
type TeeDeadLetters []DeadLetters

// Put stores letters in every sink, stopping at the first failure.
func (t TeeDeadLetters) Put(ctx context.Context, letters []DeadLetter) error {
	for _, d := range t {
		if err := d.Put(ctx, letters); err != nil {
			return err
		}
	}
	return nil
}

package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The spill keeps blocks that could not be written to ClickHouse on local disk until it
// is back. One block is one segment file, written to a temporary name, fsynced, renamed
// into place and the directory fsynced, so after a crash a segment is either whole or
// absent (a leftover .tmp is discarded at start: its block had not been spilled yet).
// A segment is deleted only after ClickHouse took its block; a crash between the two
// leaves the segment behind, and its replay then finds the block's batch_id in
// archive_batches and does not insert it again.
//
// A spill directory belongs to one writer: two instances sharing one would replay each
// other's segments, which is harmless (the batch_id check) but wasteful.
//
// Segment file, big-endian:
//
//	magic    8 bytes  "GWSPILL1"
//	batch id 8 bytes  the block's batch_id
//	events   4 bytes  how many events the data holds
//	crc      4 bytes  CRC-32C of data
//	data              the block's records (see appendRecord)
type spill struct {
	dir  string
	segs []segment // oldest first
	next uint64    // number of the next segment file
}

type segment struct {
	name string
	num  uint64 // the segment's place in the spill's order
	id   uint64
	n    int
	seq  uint64 // the block's seq in this process; 0 for segments an earlier process left
}

const (
	segMagic     = "GWSPILL1"
	segHeaderLen = 24
	segSuffix    = ".seg"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// openSpill opens dir, creating it, discards unfinished segments and lists the rest.
func openSpill(dir string) (*spill, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: spill: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: spill: %w", err)
	}
	s := &spill{dir: dir}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp"):
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("store: spill: %w", err)
			}
		case strings.HasSuffix(name, segSuffix):
			var num, id uint64
			if _, err := fmt.Sscanf(name, "%016x-%016x"+segSuffix, &num, &id); err != nil {
				continue // not ours
			}
			n, err := readSegmentHeader(filepath.Join(dir, name))
			if err != nil {
				// A renamed segment is whole unless the disk lied; keep it aside for a
				// human rather than loop on it or delete evidence.
				if rerr := os.Rename(filepath.Join(dir, name), filepath.Join(dir, name+".corrupt")); rerr != nil {
					return nil, fmt.Errorf("store: spill: %w", rerr)
				}
				continue
			}
			s.segs = append(s.segs, segment{name: name, num: num, id: id, n: n})
			s.next = max(s.next, num+1)
		}
	}
	slices.SortFunc(s.segs, func(a, b segment) int { return strings.Compare(a.name, b.name) })
	return s, nil
}

func readSegmentHeader(file string) (int, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var h [segHeaderLen]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return 0, fmt.Errorf("%w: %s: header: %v", errCorrupt, file, err)
	}
	if string(h[:8]) != segMagic {
		return 0, fmt.Errorf("%w: %s: not a spill segment", errCorrupt, file)
	}
	return int(binary.BigEndian.Uint32(h[16:20])), nil
}

// events returns how many events wait in the spill.
func (s *spill) events() int {
	n := 0
	for _, seg := range s.segs {
		n += seg.n
	}
	return n
}

// write stores b as the newest segment, durably.
func (s *spill) write(b *block) (err error) {
	name := fmt.Sprintf("%016x-%016x%s", s.next, b.id, segSuffix)
	final := filepath.Join(s.dir, name)
	tmp := final + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("store: spill: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	var h [segHeaderLen]byte
	copy(h[:8], segMagic)
	binary.BigEndian.PutUint64(h[8:16], b.id)
	binary.BigEndian.PutUint32(h[16:20], uint32(b.n))
	binary.BigEndian.PutUint32(h[20:24], crc32.Checksum(b.data, castagnoli))
	if _, err = f.Write(h[:]); err != nil {
		return fmt.Errorf("store: spill: %w", err)
	}
	if _, err = f.Write(b.data); err != nil {
		return fmt.Errorf("store: spill: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("store: spill: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("store: spill: %w", err)
	}
	if err = os.Rename(tmp, final); err != nil {
		return fmt.Errorf("store: spill: %w", err)
	}
	if err = syncDir(s.dir); err != nil {
		return fmt.Errorf("store: spill: %w", err)
	}
	s.next++
	s.segs = append(s.segs, segment{name: name, num: s.next - 1, id: b.id, n: b.n, seq: b.seq})
	return nil
}

// read loads the oldest segment's block. Its attempts count is 1: the block may have
// reached ClickHouse before it was spilled, or before a crash kept its segment.
func (s *spill) read(seg segment) (*block, error) {
	raw, err := os.ReadFile(filepath.Join(s.dir, seg.name))
	if err != nil {
		return nil, fmt.Errorf("store: spill: %w", err)
	}
	if len(raw) < segHeaderLen || string(raw[:8]) != segMagic {
		return nil, fmt.Errorf("%w: %s: bad header", errCorrupt, seg.name)
	}
	data := raw[segHeaderLen:]
	if crc32.Checksum(data, castagnoli) != binary.BigEndian.Uint32(raw[20:24]) {
		return nil, fmt.Errorf("%w: %s: checksum mismatch", errCorrupt, seg.name)
	}
	return &block{
		id:       binary.BigEndian.Uint64(raw[8:16]),
		n:        int(binary.BigEndian.Uint32(raw[16:20])),
		data:     data,
		attempts: 1,
	}, nil
}

// remove deletes the oldest segment once its block is in ClickHouse. The directory is
// not fsynced: should the deletion be lost in a crash, the replay finds the block
// already written and skips it.
func (s *spill) remove() error {
	seg := s.segs[0]
	if err := os.Remove(filepath.Join(s.dir, seg.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: spill: %w", err)
	}
	s.segs = s.segs[1:]
	return nil
}

// quarantine sets the oldest segment aside as .corrupt: it cannot be replayed, and a
// human should look at it rather than lose it silently.
func (s *spill) quarantine() error {
	seg := s.segs[0]
	p := filepath.Join(s.dir, seg.name)
	if err := os.Rename(p, p+".corrupt"); err != nil {
		return fmt.Errorf("store: spill: %w", err)
	}
	s.segs = s.segs[1:]
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

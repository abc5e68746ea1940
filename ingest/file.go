package ingest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FileOptions configures a FileSource.
type FileOptions struct {
	Format      string                // required: one of Formats
	Parser      ParserOptions         // each parsing goroutine builds its own parser from these
	DeadLetters DeadLetters           // nil: rejected records are only counted
	Registerer  prometheus.Registerer // required: the ingest metrics (NewMetrics)
	BatchSize   int                   // lines per batch, parsed by one goroutine; 0: 1024
	Workers     int                   // parsing goroutines; 0: GOMAXPROCS
	Stdin       io.Reader             // what "-" reads; nil: os.Stdin
}

// FileSource reads records, one per line, from files, directories (every regular file
// below, in name order), gzip files (recognised by their magic bytes) and stdin ("-").
// Lines are parsed on several goroutines and handed out in input order, so the events
// are the same, in the same order, whatever the number of workers.
type FileSource struct {
	paths  []string
	opts   FileOptions
	m      *Metrics
	cancel context.CancelFunc
	out    chan chunk
	done   chan struct{}
	err    error // set by the reader before out is closed
}

// chunk is a run of lines that one worker parses; results arrive on res in order.
type chunk struct {
	source string
	first  int64 // line number of lines[0]
	lines  [][]byte
	res    chan parsed
}

type parsed struct {
	events  []Event
	letters []DeadLetter
}

const (
	defaultFileBatch = 1024
	fileReadBuffer   = 256 << 10
)

// NewFileSource checks the paths and options; reading starts on the first Next.
func NewFileSource(paths []string, opts FileOptions) (*FileSource, error) {
	if len(paths) == 0 {
		return nil, errors.New("ingest: no input paths")
	}
	if !slices.Contains(Formats, opts.Format) {
		return nil, fmt.Errorf("%w %q", ErrUnknownFormat, opts.Format)
	}
	po, err := opts.Parser.withDefaults()
	if err != nil {
		return nil, err
	}
	opts.Parser = po
	if opts.Registerer == nil {
		return nil, errors.New("ingest: FileOptions.Registerer is required")
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = defaultFileBatch
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.Stdin == nil {
		opts.Stdin = os.Stdin
	}
	var files []string
	for _, p := range paths {
		if p == "-" {
			files = append(files, p)
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("ingest: input: %w", err)
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if strings.HasPrefix(d.Name(), ".") && path != p {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.Type().IsRegular() {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("ingest: input: %w", err)
		}
	}
	return &FileSource{paths: files, opts: opts, m: NewMetrics(opts.Registerer)}, nil
}

func (s *FileSource) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.out = make(chan chunk, 2*s.opts.Workers)
	s.done = make(chan struct{})
	work := make(chan chunk, 2*s.opts.Workers)
	for range s.opts.Workers {
		p, _ := NewParser(s.opts.Format, s.opts.Parser) // options were checked in NewFileSource
		go s.parse(p, work)
	}
	go func() {
		defer close(s.done)
		defer close(work)
		defer close(s.out)
		for _, path := range s.paths {
			if err := s.read(ctx, path, work); err != nil {
				s.err = err
				return
			}
		}
	}()
}

// parse turns chunks into events and dead letters with one parser.
func (s *FileSource) parse(p Parser, work <-chan chunk) {
	for c := range work {
		var r parsed
		r.events = make([]Event, 0, len(c.lines))
		for i, line := range c.lines {
			r.events = append(r.events, Event{})
			ev := &r.events[len(r.events)-1]
			if err := p.Parse(ev, line); err != nil {
				if !Kept(err) {
					r.events = r.events[:len(r.events)-1]
				}
				r.letters = append(r.letters, NewDeadLetter(time.Now(), c.source, s.opts.Format, -1, c.first+int64(i), line, err))
			}
		}
		c.res <- r
	}
}

// read splits one input into chunks of lines. A line longer than the cap is not kept
// whole: its head becomes the dead letter, the rest is skipped up to the next newline.
func (s *FileSource) read(ctx context.Context, path string, work chan<- chunk) error {
	var r io.Reader
	name := path
	if path == "-" {
		r, name = s.opts.Stdin, "stdin"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("ingest: open input: %w", err)
		}
		defer f.Close()
		r = f
	}
	br := bufio.NewReaderSize(r, fileReadBuffer)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("ingest: %s: %w", name, err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, fileReadBuffer)
	}
	s.m.Init(name)
	limit := s.opts.Parser.MaxLineBytes
	var (
		lineNo int64
		c      = chunk{source: name, first: 1}
		buf    []byte // backing store of the chunk's lines; a new one per chunk
	)
	flush := func() error {
		if len(c.lines) == 0 {
			return nil
		}
		c.res = make(chan parsed, 1)
		select {
		case work <- c:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case s.out <- c:
		case <-ctx.Done():
			return ctx.Err()
		}
		c = chunk{source: name, first: lineNo + 1}
		buf = nil
		return nil
	}
	var long []byte // a line longer than the read buffer, kept up to limit+1 bytes
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = appendCapped(long, line, limit+1)
			continue
		}
		if long != nil {
			line, long = appendCapped(long, line, limit+1), nil
		}
		if len(line) > 0 {
			lineNo++
			if line[len(line)-1] == '\n' { // a line cut at the cap has no newline left
				line = bytes.TrimRight(line, "\r\n")
			}
			if len(line) > 0 {
				if len(c.lines) == 0 {
					c.first = lineNo
				}
				if cap(buf)-len(buf) < len(line) {
					buf = make([]byte, 0, max(fileReadBuffer, len(line)))
				}
				start := len(buf)
				buf = append(buf, line...)
				c.lines = append(c.lines, buf[start:len(buf):len(buf)])
				if len(c.lines) >= s.opts.BatchSize {
					if ferr := flush(); ferr != nil {
						return ferr
					}
				}
			}
		}
		if err == io.EOF {
			return flush()
		}
		if err != nil {
			return fmt.Errorf("ingest: read %s: %w", name, err)
		}
	}
}

// appendCapped appends b to dst without letting dst grow past limit bytes. A line cut
// at limit (one more than the cap) is still rejected as oversized, and its dead letter
// keeps that head rather than the whole of a runaway line.
func appendCapped(dst, b []byte, limit int) []byte {
	if dst == nil {
		dst = make([]byte, 0, min(2*len(b), limit))
	}
	return append(dst, b[:min(len(b), limit-len(dst))]...)
}

// Next returns the next batch of events in input order, or io.EOF after the last. A
// batch holds the events of BatchSize lines, as one goroutine parsed them: handing it
// out as it is costs no copy.
// Rejected records are stored in the dead-letter sink before their batch is returned.
func (s *FileSource) Next(ctx context.Context) (*Batch, error) {
	if s.out == nil {
		s.start()
	}
	for {
		var c chunk
		var ok bool
		select {
		case c, ok = <-s.out:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if !ok {
			if s.err != nil {
				return nil, s.err
			}
			return nil, io.EOF
		}
		var r parsed
		select {
		case r = <-c.res:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		m := s.m
		m.Records.WithLabelValues(c.source).Add(float64(len(c.lines)))
		m.Events.WithLabelValues(c.source).Add(float64(len(r.events)))
		for _, dl := range r.letters {
			m.DeadLetters.WithLabelValues(c.source, dl.Reason).Inc()
		}
		if len(r.letters) > 0 && s.opts.DeadLetters != nil {
			if err := s.opts.DeadLetters.Put(ctx, r.letters); err != nil {
				return nil, fmt.Errorf("ingest: dead letters: %w", err)
			}
		}
		if len(r.events) > 0 { // a chunk of nothing but rejects makes no batch
			return NewBatch(r.events, nil), nil
		}
	}
}

// Close stops reading. Batches already returned stay valid.
func (s *FileSource) Close() error {
	if s.cancel != nil {
		s.cancel()
		go func() { // unblock the reader if it waits to hand out a chunk
			for range s.out {
			}
		}()
		<-s.done
	}
	return nil
}

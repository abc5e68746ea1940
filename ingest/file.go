package ingest

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/bzip2"
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
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
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
	// Lateness is how far an event may lag behind the newest event read before it, from
	// any input, without counting as late in FileStats: the detectors' allowed_lateness.
	Lateness time.Duration
}

// FileStats is what a FileSource read from one input.
type FileStats struct {
	Name     string    // the path, or "stdin"
	Records  int64     // records read: lines, or the joined parts of a split container line
	Events   int64     // records that became events, repaired ones included
	Rejected int64     // records rejected (they went to the dead-letter sink)
	Repaired int64     // records kept after repair (see ParseError.Kept)
	First    time.Time // the earliest event time read from the input
	Last     time.Time // the latest
	// Late counts the events more than FileOptions.Lateness older than the newest event
	// read before them: out of order for the detectors, whose windows have moved on.
	Late int64
	// MaxLag is the furthest an event came behind the newest event read before it: the
	// allowed_lateness that would have taken every event of the input.
	MaxLag time.Duration
	Err    error // an *InputError when the input was damaged; what came before was read
}

// An InputError is damage to one input: a truncated or corrupt gzip stream, a read
// error, a file that cannot be opened. Every record before the damage was read and
// parsed, the other inputs are read all the same, and the caller learns of it from
// FileSource.Stats.
type InputError struct {
	Name   string
	Line   int64 // the last line read whole before the damage
	Offset int64 // bytes (after decompression) read whole before the damage
	Err    error
}

func (e *InputError) Error() string {
	if e.Line == 0 && e.Offset == 0 {
		return fmt.Sprintf("ingest: %s: %v", e.Name, e.Err)
	}
	return fmt.Sprintf("ingest: %s: damaged after line %d (byte %d): %v; the %d lines before it were read", e.Name, e.Line, e.Offset, e.Err, e.Line)
}

func (e *InputError) Unwrap() error { return e.Err }

// FileSource reads records, one per line, from files, directories (every regular file
// below), gzip files (recognised by their magic bytes) and stdin ("-").
//
// Each input is a partition of its own. Inputs are opened in the order of their first
// event time, each when the events read reach it, and merged by event time: the logs
// of several pods or gateways over the same hours are read side by side, and rotated
// logs (access.log.2.gz, access.log.1, access.log) one after the other, oldest first,
// whatever their names. An input whose first records hold no event time, or a pipe
// (its records would be lost to the look), comes last. Lines are parsed on several
// goroutines, and the events are the same, in the same order, whatever the number of
// workers. A damaged input (a truncated gzip)
// ends at the damage: everything before it is kept and parsed, the record cut short
// goes to the dead-letter sink as truncated, the damage is reported in Stats, and the
// next input is read. The parts of a line a container runtime split (Kubernetes CRI
// "P" lines, Docker json-file lines without their newline) are joined into one record.
type FileSource struct {
	inputs []string    // paths in the order of their first event time; "-" is stdin
	first  []time.Time // each input's first event time, zero when unknown (see orderByEventTime)
	opts   FileOptions
	m      *Metrics
	cancel context.CancelFunc
	ctx    context.Context
	work   chan chunk // to the parsing goroutines
	// open are the inputs being read, merged by event time; next is the first input
	// not opened yet.
	open    []*stream
	next    int
	readers sync.WaitGroup // the open inputs' readers, stdin's aside
	// free holds line buffers the workers are done with, for the reader to fill again:
	// copying every line into fresh memory was most of what a replay allocated.
	free chan []byte
	// freeEvents holds event slices of batches their consumer released (Batch.Release).
	freeEvents chan []Event
	workers    sync.WaitGroup

	eof    bool // Next returned io.EOF
	mu     sync.Mutex
	stats  []FileStats // by input, in the order of inputs
	newest time.Time   // the newest event time handed out, for Late
}

// A stream is an input being read: its reader's chunks, in order, and the events of
// the one at its head not handed out yet.
type stream struct {
	in    int
	out   chan chunk
	evs   []Event // the head chunk's events left
	buf   []Event // the head chunk's events, to reuse once handed out
	ended bool    // its last chunk is the head
}

// chunk is a run of records of one input that one worker parses; results arrive on res
// in order.
type chunk struct {
	input  int    // index into FileSource.inputs
	source string // its name, for dead letters
	first  int64  // line number of lines[0]
	lines  [][]byte
	size   int       // bytes of lines
	bufs   [][]byte  // the line buffers lines point into, handed back to free once parsed
	nums   []int64   // line number of each record when they are not consecutive (joined parts), else nil
	cut    []cutLine // records the reader could not keep whole
	end    bool      // the input's last chunk
	err    error     // with end: the damage that ended the input
	res    chan parsed
}

// cutLine is a record the reader cut: an oversized one, whose head alone is kept, or one
// cut short by damage to the input.
type cutLine struct {
	index int // in chunk.lines
	size  int // the record's real size
	err   error
}

type parsed struct {
	events  []Event
	letters []DeadLetter
}

const (
	defaultFileBatch = 1024
	fileReadBuffer   = 256 << 10
	// freeBuffers bounds the line buffers kept for reuse: about what the chunks in
	// flight (queued for the workers and being parsed) hold with ~1.5 KB records.
	freeBuffers = 64
	// peekRecords and peekBytes bound how far NewFileSource reads into an input to find
	// its first event time: past what a container writes to stderr as it starts (a
	// rotated pod log beginning with 70 lines of nginx's notices was taken for one
	// without event times, and read last, all of it late).
	peekRecords = 1024
	peekBytes   = 1 << 20
)

// NewFileSource checks the paths and options and orders the inputs by their first event
// time; reading starts on the first Next.
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
			if len(paths) > 1 {
				return nil, errors.New("ingest: stdin (-) cannot be read together with other inputs")
			}
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
			} else if d.Type()&fs.ModeSymlink != 0 {
				// Kubernetes' /var/log/containers holds symlinks to the pods' logs; a
				// link to a directory is not followed (it could loop).
				if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
					files = append(files, path)
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("ingest: input: %w", err)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("ingest: no files in %s", strings.Join(paths, ", "))
	}
	files = distinct(files)
	inputs, first := orderByEventTime(files, opts)
	s := &FileSource{opts: opts, inputs: inputs, first: first, m: NewMetrics(opts.Registerer)}
	s.stats = make([]FileStats, len(s.inputs))
	for i, in := range s.inputs {
		s.stats[i].Name = inputName(in)
	}
	return s, nil
}

func inputName(path string) string {
	if path == "-" {
		return "stdin"
	}
	return path
}

// distinct drops the files named again (the same file by another path, a directory
// and a file in it): read twice, every event and its evidence would count double.
func distinct(files []string) []string {
	var seen []os.FileInfo
	return slices.DeleteFunc(files, func(f string) bool {
		fi, err := os.Stat(f)
		if err != nil || f == "-" {
			return false // an error is reported when the input is read
		}
		if slices.ContainsFunc(seen, func(o os.FileInfo) bool { return os.SameFile(o, fi) }) {
			return true
		}
		seen = append(seen, fi)
		return false
	})
}

// orderByEventTime sorts files by the event time of their first record that parses,
// and returns those times; files without one (and pipes, which cannot be read twice)
// keep their name order, after the others, with a zero time.
func orderByEventTime(files []string, opts FileOptions) ([]string, []time.Time) {
	first := make([]time.Time, len(files))
	if len(files) < 2 {
		return files, first
	}
	p, _ := NewParser(opts.Format, opts.Parser) // options were checked
	at := make(map[string]time.Time, len(files))
	for _, f := range files {
		at[f] = firstEventTime(f, p)
	}
	slices.SortStableFunc(files, func(a, b string) int {
		ta, tb := at[a], at[b]
		switch {
		case ta.IsZero() != tb.IsZero():
			if ta.IsZero() {
				return 1
			}
			return -1
		case ta.IsZero():
			return strings.Compare(a, b)
		}
		return cmp.Or(ta.Compare(tb), strings.Compare(a, b))
	})
	for i, f := range files {
		first[i] = at[f]
	}
	return files, first
}

// firstEventTime returns the time of the first record of path that parses, among its
// first few; zero when there is none.
func firstEventTime(path string, p Parser) time.Time {
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
		return time.Time{} // a pipe's records would be lost to the peek
	}
	br, closeInput, err := openInput(path, nil)
	if err != nil {
		return time.Time{}
	}
	defer closeInput()
	var ev Event
	read := 0
	for range peekRecords {
		line, err := br.ReadSlice('\n')
		read += len(line)
		if len(line) > 0 && !errors.Is(err, bufio.ErrBufferFull) {
			if perr := p.Parse(&ev, bytes.TrimRight(line, "\r\n")); perr == nil || Kept(perr) {
				return ev.Time
			}
		}
		if (err != nil && !errors.Is(err, bufio.ErrBufferFull)) || read > peekBytes {
			break
		}
	}
	return time.Time{}
}

// openInput opens a file (or stdin for "-") for reading lines, decompressing gzip.
func openInput(path string, stdin io.Reader) (*bufio.Reader, func() error, error) {
	var r io.Reader
	closeInput := func() error { return nil }
	if path == "-" {
		r = stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		r, closeInput = f, f.Close
	}
	br := bufio.NewReaderSize(r, fileReadBuffer)
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			closeInput()
			return nil, nil, fmt.Errorf("gzip header: %w", err)
		}
		br = bufio.NewReaderSize(zr, fileReadBuffer)
	case bytes.HasPrefix(magic, []byte("BZh")) && len(magic) > 3 && magic[3] >= '1' && magic[3] <= '9':
		br = bufio.NewReaderSize(bzip2.NewReader(br), fileReadBuffer)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			closeInput()
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		closeFile := closeInput
		closeInput = func() error { zr.Close(); return closeFile() }
		br = bufio.NewReaderSize(zr, fileReadBuffer)
	case bytes.Equal(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		closeInput()
		return nil, nil, errors.New("xz-compressed, which is not read: decompress it first (xz -d)")
	}
	return br, closeInput, nil
}

func (s *FileSource) start() {
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.free = make(chan []byte, freeBuffers)
	s.freeEvents = make(chan []Event, 2*s.opts.Workers+2)
	s.work = make(chan chunk, 2*s.opts.Workers)
	for range s.opts.Workers {
		p, _ := NewParser(s.opts.Format, s.opts.Parser) // options were checked in NewFileSource
		s.workers.Go(func() { s.parse(s.ctx, p, s.work) })
	}
}

// openNext starts reading the next input.
func (s *FileSource) openNext() {
	st := &stream{in: s.next, out: make(chan chunk, 2)}
	s.next++
	s.open = append(s.open, st)
	read := func() {
		defer close(st.out)
		s.read(s.ctx, st.in, st.out)
	}
	if s.inputs[st.in] == "-" {
		go read() // nothing interrupts a read from stdin: Close does not wait for it
	} else {
		s.readers.Go(read)
	}
}

// parse turns chunks into events and dead letters with one parser, until the reader
// is done or the source closed.
func (s *FileSource) parse(ctx context.Context, p Parser, work <-chan chunk) {
	for {
		var c chunk
		var ok bool
		select {
		case c, ok = <-work:
		case <-ctx.Done():
			return
		}
		if !ok {
			return
		}
		var r parsed
		r.events = s.eventBuffer(len(c.lines))
		cut := c.cut
		for i, line := range c.lines {
			num := c.first + int64(i)
			if c.nums != nil {
				num = c.nums[i]
			}
			var err error
			if len(cut) > 0 && cut[0].index == i {
				err, cut = cut[0].err, cut[1:]
			} else {
				r.events, err = AppendParsed(p, r.events, line)
			}
			if err != nil {
				r.letters = append(r.letters, NewDeadLetter(time.Now(), c.source, s.opts.Format, -1, num, line, err))
			}
		}
		// Neither the events nor the dead letters point into the lines: their buffers
		// can be filled again.
		for _, b := range c.bufs {
			if cap(b) != fileReadBuffer {
				continue // one of a giant line: not worth keeping
			}
			select {
			case s.free <- b[:0]:
			default:
			}
		}
		c.res <- r
	}
}

// lineReader turns one input into chunks: it numbers lines, cuts runaway ones, joins the
// parts of split container lines and hands full chunks to the workers and to Next.
type lineReader struct {
	s     *FileSource
	ctx   context.Context
	out   chan<- chunk // to Next, in order
	input int
	name  string
	c     chunk
	buf   []byte // backing store of the chunk's lines, from FileSource.free when it has one
	parts joiner
}

// add appends one record, first read at line num, to the chunk, sending the chunk when
// it is full. size is the record's real size when the reader cut it; err, when set,
// rejects the record without parsing it.
func (lr *lineReader) add(line []byte, num int64, size int, err error) error {
	c := &lr.c
	if len(c.lines) == 0 {
		c.first = num
		if c.lines == nil { // sized once: appending from nil copied it ten times a chunk
			c.lines = make([][]byte, 0, lr.s.opts.BatchSize)
		}
	}
	if c.nums == nil && num != c.first+int64(len(c.lines)) {
		c.nums = make([]int64, len(c.lines), cap(c.lines))
		for i := range c.nums {
			c.nums[i] = c.first + int64(i)
		}
	}
	if c.nums != nil {
		c.nums = append(c.nums, num)
	}
	if max := lr.s.opts.Parser.MaxLineBytes; err == nil && size > max {
		err = OversizedError(size, max)
	}
	if err != nil {
		c.cut = append(c.cut, cutLine{index: len(c.lines), size: size, err: err})
	}
	if cap(lr.buf)-len(lr.buf) < len(line) {
		lr.buf = lr.s.lineBuffer(len(line))
		c.bufs = append(c.bufs, lr.buf)
	}
	start := len(lr.buf)
	lr.buf = append(lr.buf, line...)
	c.lines = append(c.lines, lr.buf[start:len(lr.buf):len(lr.buf)])
	c.size += len(line)
	if len(c.lines) >= lr.s.opts.BatchSize || c.size >= MaxBatchBytes {
		return lr.send(false, nil)
	}
	return nil
}

// send hands the chunk to a worker and, in order, to Next.
func (lr *lineReader) send(end bool, damage error) error {
	c := lr.c
	if len(c.lines) == 0 && !end {
		return nil
	}
	c.input, c.source, c.end, c.err = lr.input, lr.name, end, damage
	c.res = make(chan parsed, 1)
	select {
	case lr.s.work <- c:
	case <-lr.ctx.Done():
		return lr.ctx.Err()
	}
	select {
	case lr.out <- c:
	case <-lr.ctx.Done():
		return lr.ctx.Err()
	}
	lr.c, lr.buf = chunk{}, nil
	return nil
}

// eventBuffer returns an empty slice for n events: one a batch's consumer released when
// there is one of room enough.
func (s *FileSource) eventBuffer(n int) []Event {
	select {
	case evs := <-s.freeEvents:
		if cap(evs) >= n {
			return evs
		}
	default:
	}
	return make([]Event, 0, n)
}

// releaseEvents keeps a released batch's events for eventBuffer. They are not cleared:
// parsing overwrites each, and until then they hold on to a few string chunks at most.
func (s *FileSource) releaseEvents(evs []Event) {
	select {
	case s.freeEvents <- evs:
	default:
	}
}

// lineBuffer returns an empty buffer for lines, of room for n bytes at least: a free one
// when there is one and n fits.
func (s *FileSource) lineBuffer(n int) []byte {
	if n <= fileReadBuffer {
		select {
		case b := <-s.free:
			return b
		default:
		}
	}
	return make([]byte, 0, max(fileReadBuffer, n))
}

// read splits one input into chunks. A line longer than the cap is not kept whole: its
// head becomes the dead letter, the rest is skipped up to the next newline. It returns
// an error only when cancelled; damage to the input ends it with an InputError in its
// last chunk.
func (s *FileSource) read(ctx context.Context, in int, out chan<- chunk) error {
	name := inputName(s.inputs[in])
	lr := &lineReader{s: s, ctx: ctx, out: out, input: in, name: name}
	lr.parts.max = s.opts.Parser.MaxLineBytes
	br, closeInput, err := openInput(s.inputs[in], s.opts.Stdin)
	if err != nil {
		return lr.send(true, &InputError{Name: name, Err: err})
	}
	defer closeInput()
	s.m.Init(name, s.opts.Format)
	limit := s.opts.Parser.MaxLineBytes
	var (
		lineNo, offset int64
		long           []byte // a line longer than the read buffer, kept up to limit+1 bytes
		longSize       int    // its real size
	)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = appendCapped(long, line, limit+1)
			longSize += len(line)
			continue
		}
		raw := longSize + len(line) // bytes read, newline included
		size := raw                 // the record's size
		if n := len(line); n > 0 && line[n-1] == '\n' {
			size--
			if n > 1 && line[n-2] == '\r' {
				size--
			}
		}
		if long != nil {
			line, long, longSize = appendCapped(long, line, limit+1), nil, 0
		}
		if err != nil && err != io.EOF {
			// Damage: what ReadSlice returned before the error is a record cut short.
			if len(line) > 0 {
				cut := parseErrorf(ReasonTruncated, "record cut short after %d bytes by damage to the input", size)
				if aerr := lr.add(line, lineNo+1, size, cut); aerr != nil {
					return aerr
				}
			}
			if aerr := lr.flushParts(); aerr != nil {
				return aerr
			}
			return lr.send(true, &InputError{Name: name, Line: lineNo, Offset: offset, Err: err})
		}
		if len(line) > 0 {
			lineNo++
			offset += int64(raw)
			if line[len(line)-1] == '\n' { // a line cut at the cap has no newline left
				line = bytes.TrimRight(line, "\r\n")
			}
			if lineNo == 1 {
				line = bytes.TrimPrefix(line, utf8BOM) // an editor's, or a Windows tool's
			}
			// A file truncated under a writer that does not append (logrotate's
			// copytruncate) holds zeros where the writer's offset was.
			line = bytes.TrimLeft(line, "\x00")
			if len(line) > 0 {
				if rec, num, recSize, ok := lr.parts.join(line, lineNo, size); ok {
					if aerr := lr.add(rec, num, recSize, nil); aerr != nil {
						return aerr
					}
				}
			}
		}
		if err == io.EOF {
			if aerr := lr.flushParts(); aerr != nil {
				return aerr
			}
			return lr.send(true, nil)
		}
	}
}

var utf8BOM = []byte("\ufeff")

// flushParts adds the parts of split container lines still open.
func (lr *lineReader) flushParts() error {
	for _, p := range lr.parts.flush() {
		if err := lr.add(p.line, p.num, p.size, nil); err != nil {
			return err
		}
	}
	return nil
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

// Next returns the next batch of events, or io.EOF after the last. The inputs whose
// event times overlap (the logs of several pods or replicas over the same hours) are
// read side by side and merged by event time, each input a partition of its own; an
// input is opened when the merge reaches its first event time, so rotated logs of one
// stream are read one after the other. A batch of one input, when no other input's
// events could come between its own, is handed out as one goroutine parsed it, at no
// cost of copying. Rejected records are stored in the dead-letter sink before the
// events read with them are returned. Damage to an input does not end the source: see
// Stats.
func (s *FileSource) Next(ctx context.Context) (*Batch, error) {
	if s.work == nil {
		s.start()
	}
	var (
		evs   []Event
		runs  []Run
		ins   []int // the input of each run
		ended []Partition
	)
	for len(evs) < s.opts.BatchSize {
		if err := s.heads(ctx); err != nil {
			return nil, err
		}
		s.open = slices.DeleteFunc(s.open, func(st *stream) bool {
			if st.ended && len(st.evs) == 0 {
				ended = append(ended, s.partition(st.in))
				return true
			}
			return false
		})
		if len(s.open) == 0 {
			if s.next < len(s.inputs) {
				s.openNext()
				continue
			}
			break
		}
		if st := s.open[0]; evs == nil && len(s.open) == 1 && len(st.evs) == len(st.buf) && !s.dueWithin(st.evs) {
			b := NewBatch(st.evs, nil)
			b.release = s.releaseEvents
			b.Runs = []Run{{Partition: s.partition(st.in), N: len(st.evs)}}
			s.handedOut(st.in, st.evs)
			st.evs, st.buf = nil, nil
			if st.ended {
				ended = append(ended, b.Runs[0].Partition)
				s.open = s.open[:0]
			}
			b.Ended = ended
			return b, nil
		}
		if evs == nil {
			evs = s.eventBuffer(s.opts.BatchSize)
		}
		st := s.open[0]
		for _, o := range s.open[1:] {
			if o.evs[0].Time.Before(st.evs[0].Time) {
				st = o
			}
		}
		evs = append(evs, st.evs[0])
		if k := len(runs) - 1; k >= 0 && ins[k] == st.in {
			runs[k].N++
		} else {
			runs, ins = append(runs, Run{Partition: s.partition(st.in), N: 1}), append(ins, st.in)
		}
		if st.evs = st.evs[1:]; len(st.evs) == 0 {
			s.releaseEvents(st.buf[:0]) // every event was copied out
			st.buf = nil
		}
	}
	if len(evs) == 0 && len(ended) == 0 {
		if !s.eof {
			s.eof = true
			close(s.work) // no reader is left to send to it
		}
		return nil, io.EOF
	}
	for k, i := 0, 0; k < len(runs); i, k = i+runs[k].N, k+1 {
		s.handedOut(ins[k], evs[i:i+runs[k].N])
	}
	b := NewBatch(evs, nil)
	b.release = s.releaseEvents
	b.Runs, b.Ended = runs, ended
	return b, nil
}

// heads receives chunks until every open input has events in hand or has ended, and
// opens the inputs whose first event time the merge has reached.
func (s *FileSource) heads(ctx context.Context) error {
	for {
		for _, st := range s.open {
			for len(st.evs) == 0 && !st.ended {
				var c chunk
				var ok bool
				select {
				case c, ok = <-st.out:
				case <-ctx.Done():
					return ctx.Err()
				}
				if !ok { // its reader was stopped: Close
					st.ended = true
					break
				}
				var r parsed
				select {
				case r = <-c.res:
				case <-ctx.Done():
					return ctx.Err()
				}
				s.account(&c, &r)
				if len(r.letters) > 0 && s.opts.DeadLetters != nil {
					if err := s.opts.DeadLetters.Put(ctx, r.letters); err != nil {
						return fmt.Errorf("ingest: dead letters: %w", err)
					}
				}
				st.evs, st.buf, st.ended = r.events, r.events, c.end
			}
		}
		if s.next == len(s.inputs) || s.first[s.next].IsZero() {
			return nil
		}
		due := false
		for _, st := range s.open {
			if len(st.evs) > 0 && !st.evs[0].Time.Before(s.first[s.next]) {
				due = true
			}
		}
		if !due {
			return nil
		}
		s.openNext()
	}
}

// dueWithin reports whether the next input to open starts within the span of evs: its
// events would come between theirs.
func (s *FileSource) dueWithin(evs []Event) bool {
	if s.next == len(s.inputs) || s.first[s.next].IsZero() {
		return false
	}
	for i := range evs {
		if !evs[i].Time.Before(s.first[s.next]) {
			return true
		}
	}
	return false
}

func (s *FileSource) partition(in int) Partition { return Partition{Source: s.stats[in].Name} }

// account adds a parsed chunk to the metrics and the stats of its input.
func (s *FileSource) account(c *chunk, r *parsed) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.stats[c.input]
	m := s.m
	m.Records.WithLabelValues(st.Name, s.opts.Format).Add(float64(len(c.lines)))
	m.Events.WithLabelValues(st.Name, s.opts.Format).Add(float64(len(r.events)))
	st.Records += int64(len(c.lines))
	st.Events += int64(len(r.events))
	for _, dl := range r.letters {
		m.DeadLetters.WithLabelValues(st.Name, dl.Reason).Inc()
		if dl.Kept {
			st.Repaired++
		} else {
			st.Rejected++
		}
	}
	if c.end && c.err != nil {
		st.Err = c.err
	}
}

// handedOut notes the event times of input in's events as they are handed out.
func (s *FileSource) handedOut(in int, evs []Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.stats[in]
	for i := range evs {
		t := evs[i].Time
		if st.First.IsZero() || t.Before(st.First) {
			st.First = t
		}
		if t.After(st.Last) {
			st.Last = t
		}
		if lag := s.newest.Sub(t); lag > 0 {
			st.MaxLag = max(st.MaxLag, lag)
			if lag > s.opts.Lateness {
				st.Late++
			}
		} else {
			s.newest = t
		}
	}
}

// Stats returns what was read from each input so far, in reading order.
func (s *FileSource) Stats() []FileStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.stats)
}

// Close stops reading and waits for the source's goroutines, so nothing uses the
// parser options (the GeoIP database, say) after it returns. Batches already returned
// stay valid. The one exception is a read from stdin, which nothing can interrupt: the
// reader blocked in it ends when stdin does, touching nothing of the source's.
func (s *FileSource) Close() error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	s.workers.Wait()
	s.readers.Wait()
	return nil
}

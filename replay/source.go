package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// Archive is a source that reads events back from the store's archive, in time order:
// one stream, as they were archived (after the live pipeline parsed them). A goroutine
// of its own reads the archive a few batches ahead, so decoding what the store sends
// runs beside the engines rather than between their batches.
type Archive struct {
	seq     iter.Seq2[ingest.Event, error]
	batch   int
	started bool
	out     chan archiveBatch // closed after the last batch
	done    chan struct{}     // closed by Close: the reader stops
	wg      sync.WaitGroup
}

type archiveBatch struct {
	events []ingest.Event
	err    error
}

// NewArchive reads the events of seq (what store.Store.ReadEvents yields) in batches.
// It starts reading with the first Next.
func NewArchive(seq iter.Seq2[ingest.Event, error]) *Archive {
	return &Archive{seq: seq, batch: defaultRangeBatch}
}

func (a *Archive) start() {
	a.started = true
	a.out, a.done = make(chan archiveBatch, 2), make(chan struct{})
	a.wg.Go(func() {
		defer close(a.out)
		send := func(b archiveBatch) bool {
			select {
			case a.out <- b:
				return true
			case <-a.done:
				return false
			}
		}
		evs := make([]ingest.Event, 0, a.batch)
		for ev, err := range a.seq {
			if err != nil {
				if len(evs) == 0 || send(archiveBatch{events: evs}) {
					send(archiveBatch{err: fmt.Errorf("archive: %w", err)})
				}
				return
			}
			evs = append(evs, ev)
			if len(evs) == a.batch {
				if !send(archiveBatch{events: evs}) {
					return
				}
				evs = make([]ingest.Event, 0, a.batch)
			}
		}
		if len(evs) > 0 {
			send(archiveBatch{events: evs})
		}
	})
}

// Next returns the next batch of archived events, io.EOF after the last. Its errors do
// not begin with "replay: ": Run, WriteEvents and Timelines, which read it, say that.
func (a *Archive) Next(ctx context.Context) (*ingest.Batch, error) {
	if !a.started {
		a.start()
	}
	select {
	case b, ok := <-a.out:
		switch {
		case !ok:
			return nil, io.EOF
		case b.err != nil:
			return nil, b.err
		}
		return ingest.NewBatch(b.events, nil), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close stops reading the archive and waits for the reader.
func (a *Archive) Close() error {
	if a.started && a.done != nil {
		close(a.done)
		a.wg.Wait()
		a.done = nil
	}
	return nil
}

// A Filter keeps the events of some keys, routes or client IPs (--key, --route,
// --client-ip): an event passes when it matches one value of every list that is set.
type Filter struct {
	Keys      []string // client_key or token_fp
	Routes    []string // "METHOD /route/{id}" or "/route/{id}"
	ClientIPs []string // addresses, or networks in CIDR notation (an IPv6 client's /64 key)
}

// IsZero reports whether f keeps every event.
func (f Filter) IsZero() bool { return len(f.Keys) == 0 && len(f.Routes) == 0 && len(f.ClientIPs) == 0 }

// Match reports whether ev passes f.
func (f Filter) Match(ev *ingest.Event) bool {
	if len(f.Keys) > 0 && !slices.Contains(f.Keys, ev.ClientKey) && (ev.TokenFP == "" || !slices.Contains(f.Keys, ev.TokenFP)) {
		return false
	}
	if len(f.ClientIPs) > 0 && !slices.ContainsFunc(f.ClientIPs, func(c string) bool { return ipMatches(c, ev.ClientIP) }) {
		return false
	}
	if len(f.Routes) > 0 && !slices.ContainsFunc(f.Routes, func(r string) bool { return routeMatches(r, ev) }) {
		return false
	}
	return true
}

// ipMatches reports whether c, an address or a network, names ip.
// Events hold an address in canonical form (see ingest), c as an analyst wrote it:
// "2001:DB8::0001" and "::ffff:203.0.113.7" name the clients 2001:db8::1 and
// 203.0.113.7.
func ipMatches(c, ip string) bool {
	if c == ip {
		return true
	}
	if ip == "" {
		return false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.WithZone("").Unmap()
	if !strings.Contains(c, "/") {
		ca, err := netip.ParseAddr(c)
		return err == nil && ca.WithZone("").Unmap() == a
	}
	p, err := netip.ParsePrefix(c)
	if err != nil {
		return false
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Contains(a)
}

// routeMatches reports whether r names ev's route, with or without its method.
func routeMatches(r string, ev *ingest.Event) bool {
	if r == ev.Route {
		return true
	}
	return len(r) == len(ev.Method)+1+len(ev.Route) && r[:len(ev.Method)] == ev.Method && r[len(ev.Method)] == ' ' && r[len(ev.Method)+1:] == ev.Route
}

// Filtered returns src with only the events f keeps.
func Filtered(src detectors.EventSource, f Filter) detectors.EventSource {
	if f.IsZero() {
		return src
	}
	return &filtered{src: src, f: f}
}

type filtered struct {
	src detectors.EventSource
	f   Filter
}

func (s *filtered) Next(ctx context.Context) (*ingest.Batch, error) {
	b, err := s.src.Next(ctx)
	if b != nil {
		b.Filter(s.f.Match)
	}
	return b, err
}

// A Span counts the events a source yields, before any filter: how many, how many
// fall within [From, To), and the times of the earliest and latest. A replay that read
// events and kept none of them was given a range beside its data, and the span says
// where the data is.
type Span struct {
	From, To    time.Time // zero: unbounded
	Read        int
	Within      int
	First, Last time.Time // of every event read
}

// Source returns src, counting its events into s.
func (s *Span) Source(src detectors.EventSource) detectors.EventSource {
	return &spanned{src: src, s: s}
}

type spanned struct {
	src detectors.EventSource
	s   *Span
}

func (p *spanned) Next(ctx context.Context) (*ingest.Batch, error) {
	b, err := p.src.Next(ctx)
	if b == nil {
		return nil, err
	}
	s := p.s
	s.Read += len(b.Events)
	for i := range b.Events {
		t := b.Events[i].Time
		if inRange(t, s.From, s.To) {
			s.Within++
		}
		if s.First.IsZero() || t.Before(s.First) {
			s.First = t
		}
		if t.After(s.Last) {
			s.Last = t
		}
	}
	return b, err
}

// inRange reports whether t is in [from, to), a zero bound being none.
func inRange(t, from, to time.Time) bool {
	return (from.IsZero() || !t.Before(from)) && (to.IsZero() || t.Before(to))
}

// WriteEvents writes the events of src in [from, to) (zero: unbounded) to w as JSON
// lines, the normalised events `parse` prints, and returns how many it wrote.
func WriteEvents(ctx context.Context, src detectors.EventSource, from, to time.Time, w io.Writer) (int, error) {
	n := 0
	var line []byte
	for {
		b, err := src.Next(ctx)
		if b != nil {
			for i := range b.Events {
				ev := &b.Events[i]
				if !inRange(ev.Time, from, to) {
					continue
				}
				line = append(ev.AppendJSON(line[:0]), '\n')
				if _, werr := w.Write(line); werr != nil {
					return n, fmt.Errorf("replay: write event: %w", werr)
				}
				n++
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			return n, nil
		case err != nil:
			return n, fmt.Errorf("replay: reading the input: %w", err)
		}
	}
}

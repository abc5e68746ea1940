package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/gatewatch/gatewatch/replay"
)

// progressBar shows how far a replay is on a terminal: its position in event time
// between the start and the end of the range, events/s, and the time left. Without a
// range it shows the events read and the event time reached.
type progressBar struct {
	bar   *progressbar.ProgressBar
	start time.Time // the range's start: the bar's zero
	began time.Time
	drawn time.Time        // when update last drew the bar
	now   func() time.Time // time.Now; for the rate, never for the replay
}

// redraw is how often at most the bar is drawn: update comes with every batch.
const redraw = 200 * time.Millisecond

// newProgressBar returns a bar drawn on w, or nil when w is not a terminal: a replay
// whose stderr goes to a file or a pipe writes no bar into it.
func newProgressBar(w io.Writer, start, end time.Time) *progressBar {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return startProgressBar(w, start, end)
}

// startProgressBar draws the bar on w whatever w is.
func startProgressBar(w io.Writer, start, end time.Time) *progressBar {
	max := int64(-1) // a spinner: the input's end is unknown
	if !start.IsZero() && !end.IsZero() {
		max = int64(end.Sub(start) / time.Second)
	}
	bar := progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetPredictTime(max > 0),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetDescription("replay"),
	)
	return &progressBar{bar: bar, start: start, began: time.Now(), now: time.Now}
}

// update moves the bar to p's event time. The rate shows from the first second on:
// before it, a few batches say little about the speed.
func (b *progressBar) update(p replay.Progress) {
	now := b.now()
	if !b.drawn.IsZero() && now.Sub(b.drawn) < redraw {
		return
	}
	b.drawn = now
	if b.bar.GetMax64() > 0 && !p.EventTime.IsZero() {
		_ = b.bar.Set64(min(max(int64(p.EventTime.Sub(b.start)/time.Second), 0), b.bar.GetMax64()))
	}
	desc := fmt.Sprintf("replay %s · %d events", p.EventTime.UTC().Format("2006-01-02 15:04:05Z"), p.Events)
	if d := now.Sub(b.began); d >= time.Second {
		desc += fmt.Sprintf(" · %.0f events/s", float64(p.Events)/d.Seconds())
	}
	b.bar.Describe(desc) // draws the bar
}

// finish takes the bar off the terminal; nil does nothing.
func (b *progressBar) finish() {
	if b == nil {
		return
	}
	_ = b.bar.Finish()
	_ = b.bar.Clear()
}

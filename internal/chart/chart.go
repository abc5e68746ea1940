// Package chart draws gatewatch's charts as SVG with gonum's plot package: the
// requests-per-minute timeline of a key or route around an alert, which replay's report
// and the analyst console both show, and bar charts (a threshold sweep's alerts per
// value). It takes plain numbers and times and imports no part of gatewatch, so every
// part may draw with it.
//
// The SVG it writes is self-contained: no script, no style sheet, no font file (text
// names a font family the browser has, or falls back on), so it renders on an
// air-gapped analyst machine, inline in an HTML page or on its own.
//
// Its API (Timeline, Bars, Series, ErrNoData, DefaultWidth, DefaultHeight) is shared by
// replay and the console: change it only in ways that keep both building.
package chart

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Default sizes, in points (1/72 inch).
const (
	DefaultWidth  = 640
	DefaultHeight = 220
)

var (
	requestsColor  = color.RGBA{R: 0x1f, G: 0x5f, B: 0xa8, A: 0xff}
	thresholdColor = color.RGBA{R: 0xc0, G: 0x39, B: 0x2b, A: 0xff}
	windowColor    = color.NRGBA{R: 0xf3, G: 0x9c, B: 0x12, A: 0x50}
	barColors      = []color.Color{
		color.RGBA{R: 0x1f, G: 0x5f, B: 0xa8, A: 0xff},
		color.RGBA{R: 0x27, G: 0xae, B: 0x60, A: 0xff},
		color.RGBA{R: 0xc0, G: 0x39, B: 0x2b, A: 0xff},
		color.RGBA{R: 0x8e, G: 0x44, B: 0xad, A: 0xff},
	}
)

// A Timeline is requests per minute of one key or route, with what an alert on it
// means drawn over it: the threshold (a count per minute) and the alert's window.
type Timeline struct {
	Title  string
	Start  time.Time // the minute Counts[0] counts; Counts[i] is the minute Start+i
	Counts []float64 // requests in each minute
	// Threshold, when above 0, is drawn as a dashed horizontal line, labelled
	// ThresholdLabel in the legend ("threshold" when empty).
	Threshold      float64
	ThresholdLabel string
	// WindowStart and WindowEnd, when set, shade the alert's window: its first_seen
	// to its last_seen.
	WindowStart, WindowEnd time.Time
	Width, Height          float64 // points; 0: DefaultWidth, DefaultHeight
}

// ErrNoData is returned for a chart with nothing to draw.
var ErrNoData = errors.New("chart: nothing to draw")

// WriteSVG draws the timeline as an SVG document to w.
func (t *Timeline) WriteSVG(w io.Writer) error {
	if len(t.Counts) == 0 {
		return ErrNoData
	}
	p := plot.New()
	p.Title.Text = t.Title
	p.Y.Label.Text = "requests / minute"
	p.X.Tick.Marker = plot.TimeTicks{Format: timeFormat(len(t.Counts)), Ticker: minuteTicks{}, Time: func(v float64) time.Time {
		return time.Unix(int64(v), 0).UTC()
	}}
	p.Add(plotter.NewGrid())
	start := float64(t.Start.Unix())
	// Each minute is drawn as a step over the minute it counts, so the alert window
	// lines up with the minutes it covers; the extra point closes the last step.
	pts := make(plotter.XYs, len(t.Counts)+1)
	top := 0.0
	for i, c := range t.Counts {
		pts[i] = plotter.XY{X: start + 60*float64(i), Y: c}
		top = max(top, c)
	}
	pts[len(t.Counts)] = plotter.XY{X: start + 60*float64(len(t.Counts)), Y: t.Counts[len(t.Counts)-1]}
	end := pts[len(t.Counts)].X
	top = max(top, t.Threshold)
	if top == 0 {
		top = 1
	}
	if !t.WindowStart.IsZero() && !t.WindowEnd.IsZero() {
		x0 := math.Max(float64(t.WindowStart.Unix()), start)
		x1 := math.Min(math.Max(float64(t.WindowEnd.Unix()), x0+1), end)
		poly, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: 0}, {X: x1, Y: 0}, {X: x1, Y: top * 1.05}, {X: x0, Y: top * 1.05}})
		if err != nil {
			return fmt.Errorf("chart: alert window: %w", err)
		}
		poly.Color = windowColor
		poly.LineStyle.Width = 0
		p.Add(poly)
		p.Legend.Add("alert window", poly)
	}
	line, err := plotter.NewLine(pts)
	if err != nil {
		return fmt.Errorf("chart: timeline: %w", err)
	}
	line.StepStyle = plotter.PostStep
	line.Color = requestsColor
	line.Width = vg.Points(1.5)
	p.Add(line)
	p.Legend.Add("requests", line)
	if t.Threshold > 0 {
		th, err := plotter.NewLine(plotter.XYs{{X: start, Y: t.Threshold}, {X: end, Y: t.Threshold}})
		if err != nil {
			return fmt.Errorf("chart: threshold: %w", err)
		}
		th.Color = thresholdColor
		th.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		p.Add(th)
		label := t.ThresholdLabel
		if label == "" {
			label = "threshold"
		}
		p.Legend.Add(label, th)
	}
	p.Legend.Top = true
	p.X.Min, p.X.Max = start, end
	p.Y.Min, p.Y.Max = 0, top*1.1
	return write(p, w, t.Width, t.Height)
}

// minuteTicks puts the time axis' labels on round minutes: every 1, 5, 10, 15 or 30
// minutes, or hours, whichever gives about six labels.
type minuteTicks struct{}

func (minuteTicks) Ticks(lo, hi float64) []plot.Tick {
	step := 60.0
	for _, s := range []float64{60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400} {
		step = s
		if (hi-lo)/s <= 8 {
			break
		}
	}
	var ticks []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi; v += step {
		ticks = append(ticks, plot.Tick{Value: v, Label: "x"}) // TimeTicks writes the label
	}
	return ticks
}

// timeFormat is the tick label layout: minutes, with the date when the span is long.
func timeFormat(minutes int) string {
	if minutes > 24*60 {
		return "01-02 15:04"
	}
	return "15:04"
}

// Bars is a bar chart: one group of bars per label, one bar in each group per series.
type Bars struct {
	Title, XLabel, YLabel string
	Labels                []string // one per group, along the x axis
	Series                []Series
	Width, Height         float64 // points; 0: DefaultWidth, DefaultHeight
}

// Series is one bar per group, in the order of Bars.Labels.
type Series struct {
	Name   string
	Values []float64
}

// WriteSVG draws the bars as an SVG document to w.
func (b *Bars) WriteSVG(w io.Writer) error {
	if len(b.Labels) == 0 || len(b.Series) == 0 {
		return ErrNoData
	}
	p := plot.New()
	p.Title.Text = b.Title
	p.X.Label.Text = b.XLabel
	p.Y.Label.Text = b.YLabel
	p.Add(plotter.NewGrid())
	width := vg.Points(min(40, 360/float64(len(b.Labels)*len(b.Series))))
	for i, s := range b.Series {
		if len(s.Values) != len(b.Labels) {
			return fmt.Errorf("chart: series %q has %d values for %d labels", s.Name, len(s.Values), len(b.Labels))
		}
		bars, err := plotter.NewBarChart(plotter.Values(s.Values), width)
		if err != nil {
			return fmt.Errorf("chart: series %q: %w", s.Name, err)
		}
		bars.Color = barColors[i%len(barColors)]
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-float64(len(b.Series)-1)/2)
		p.Add(bars)
		if len(b.Series) > 1 {
			p.Legend.Add(s.Name, bars)
		}
	}
	p.Legend.Top = true
	p.NominalX(b.Labels...)
	p.X.Min, p.X.Max = -0.5, float64(len(b.Labels))-0.5
	p.Y.Min = 0
	return write(p, w, b.Width, b.Height)
}

// write renders p to w as SVG, without embedding fonts.
func write(p *plot.Plot, w io.Writer, width, height float64) error {
	if width <= 0 {
		width = DefaultWidth
	}
	if height <= 0 {
		height = DefaultHeight
	}
	c := vgsvg.NewWith(vgsvg.UseWH(vg.Points(width), vg.Points(height)), vgsvg.EmbedFonts(false))
	p.Draw(draw.New(c))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return fmt.Errorf("chart: writing svg: %w", err)
	}
	// The XML prolog is for a file of its own; an SVG inline in HTML starts at <svg.
	out := buf.Bytes()
	if i := bytes.Index(out, []byte("<svg")); i > 0 {
		out = out[i:]
	}
	_, err := w.Write(out)
	return err
}

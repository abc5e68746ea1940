package chart_test

import (
	"bytes"
	"fmt"
	"time"

	"github.com/gatewatch/gatewatch/internal/chart"
)

// A timeline of one key's requests per minute around an alert: the threshold it
// crossed and the alert's window drawn over it, ready to inline in an HTML page.
func ExampleTimeline() {
	start := time.Date(2026, 3, 1, 11, 45, 0, 0, time.UTC)
	counts := make([]float64, 31) // 11:45 to 12:15, a minute each
	for i := range counts {
		counts[i] = 2
	}
	counts[15], counts[16] = 42, 37
	tl := chart.Timeline{
		Title:          "forbidden_burst · 1e3b89e77b4f1e40",
		Start:          start,
		Counts:         counts,
		Threshold:      20,
		ThresholdLabel: "threshold: 20 responses [403] in 1m0s",
		WindowStart:    start.Add(15 * time.Minute),
		WindowEnd:      start.Add(17 * time.Minute),
	}
	var svg bytes.Buffer
	if err := tl.WriteSVG(&svg); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(bytes.HasPrefix(svg.Bytes(), []byte("<svg")), bytes.Contains(svg.Bytes(), []byte("alert window")))
	// Output: true true
}

// Bars of a threshold sweep: one group per value, one bar per series.
func ExampleBars() {
	b := chart.Bars{
		Title:  "incidents per value of detectors.forbidden_burst.threshold",
		XLabel: "detectors.forbidden_burst.threshold",
		YLabel: "incidents",
		Labels: []string{"10", "20", "50"},
		Series: []chart.Series{
			{Name: "forbidden_burst incidents", Values: []float64{9, 4, 1}},
			{Name: "attacks caught (labelled)", Values: []float64{2, 2, 1}},
		},
	}
	var svg bytes.Buffer
	if err := b.WriteSVG(&svg); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(bytes.HasPrefix(svg.Bytes(), []byte("<svg")))
	// Output: true
}

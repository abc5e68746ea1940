package chart

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// checkSVG checks out is one well-formed SVG element that loads nothing from outside.
func checkSVG(t *testing.T, out []byte) {
	t.Helper()
	if !bytes.HasPrefix(out, []byte("<svg")) {
		t.Fatalf("output does not start with <svg: %.60q", out)
	}
	dec := xml.NewDecoder(bytes.NewReader(out))
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			switch se.Name.Local {
			case "script", "style", "image", "use", "foreignObject":
				t.Errorf("the SVG has a <%s> element", se.Name.Local)
			}
			for _, a := range se.Attr {
				if a.Name.Local == "href" || a.Name.Local == "src" || strings.Contains(a.Value, "url(") {
					t.Errorf("<%s %s=%q> refers to something", se.Name.Local, a.Name.Local, a.Value)
				}
			}
		}
	}
}

func TestTimeline(t *testing.T) {
	start := time.Date(2026, 3, 1, 11, 45, 0, 0, time.UTC)
	counts := make([]float64, 45)
	for i := range counts {
		counts[i] = 3
	}
	counts[20], counts[21] = 48, 35
	for _, tc := range []struct {
		name string
		tl   Timeline
		want []string
	}{
		{"threshold and window", Timeline{Title: "forbidden_burst key-1", Start: start, Counts: counts, Threshold: 20,
			ThresholdLabel: "threshold 20 per 1m", WindowStart: start.Add(20 * time.Minute), WindowEnd: start.Add(22 * time.Minute)},
			[]string{"forbidden_burst key-1", "threshold 20 per 1m", "alert window", "requests / minute", ">12:00<", ">12:20<"}},
		{"bare", Timeline{Start: start, Counts: counts[:3]}, []string{"requests"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.tl.WriteSVG(&b); err != nil {
				t.Fatal(err)
			}
			checkSVG(t, b.Bytes())
			for _, w := range tc.want {
				if !bytes.Contains(b.Bytes(), []byte(w)) {
					t.Errorf("SVG lacks %q", w)
				}
			}
			if tc.tl.Threshold == 0 && bytes.Contains(b.Bytes(), []byte("threshold")) {
				t.Error("a threshold is drawn for a timeline without one")
			}
		})
	}
	if err := (&Timeline{Start: start}).WriteSVG(io.Discard); !errors.Is(err, ErrNoData) {
		t.Errorf("empty timeline: %v, want ErrNoData", err)
	}
}

func TestBars(t *testing.T) {
	b := Bars{Title: "alerts per threshold", XLabel: "detectors.forbidden_burst.threshold", YLabel: "incidents",
		Labels: []string{"10", "20", "50"},
		Series: []Series{{Name: "incidents", Values: []float64{9, 4, 1}}, {Name: "attacks caught", Values: []float64{2, 2, 1}}}}
	var out bytes.Buffer
	if err := b.WriteSVG(&out); err != nil {
		t.Fatal(err)
	}
	checkSVG(t, out.Bytes())
	for _, w := range []string{"alerts per threshold", "attacks caught", ">50<"} {
		if !bytes.Contains(out.Bytes(), []byte(w)) {
			t.Errorf("SVG lacks %q", w)
		}
	}
	b.Series[1].Values = b.Series[1].Values[:2]
	if err := b.WriteSVG(io.Discard); err == nil {
		t.Error("a series shorter than the labels was drawn")
	}
	if err := (&Bars{}).WriteSVG(io.Discard); !errors.Is(err, ErrNoData) {
		t.Errorf("empty bars: %v, want ErrNoData", err)
	}
}

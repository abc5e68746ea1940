package replay

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

// A Sweep is --sweep detectors.NAME.PARAM=V1,V2,...: one engine per value, in one pass.
type Sweep struct {
	Param  string // detectors.NAME.PARAM
	Values []string
}

// ParseSweep reads a --sweep argument. Values are separated by commas outside
// brackets, so a list value reads as [401,403].
func ParseSweep(s string) (Sweep, error) {
	param, list, ok := strings.Cut(s, "=")
	if ok && strings.HasPrefix(param, "detectors.") && strings.Count(param, ".") == 1 && list != "" {
		return Sweep{}, fmt.Errorf("--sweep %q: %s is engine-wide, not one detector's: a sweep varies one detector's setting; run a replay per value with --set", s, param)
	}
	if !ok || !strings.HasPrefix(param, "detectors.") || strings.Count(param, ".") < 2 || list == "" {
		return Sweep{}, fmt.Errorf("--sweep %q: want detectors.NAME.PARAM=V1,V2,...", s)
	}
	sw := Sweep{Param: param}
	depth, start := 0, 0
	for i := 0; i <= len(list); i++ {
		switch {
		case i == len(list) || (list[i] == ',' && depth == 0):
			v := strings.TrimSpace(list[start:i])
			if v == "" {
				return Sweep{}, fmt.Errorf("--sweep %q: an empty value", s)
			}
			if slices.Contains(sw.Values, v) {
				return Sweep{}, fmt.Errorf("--sweep %q: %s twice", s, v)
			}
			sw.Values = append(sw.Values, v)
			start = i + 1
		case list[i] == '[' || list[i] == '{':
			depth++
		case list[i] == ']' || list[i] == '}':
			depth--
		}
	}
	return sw, nil
}

// Variants returns one variant of base per value, named by the value.
func (s Sweep) Variants(base detectors.Config) ([]Variant, error) {
	out := make([]Variant, 0, len(s.Values))
	for _, v := range s.Values {
		cfg := base
		if err := cfg.Set(s.Param, v); err != nil {
			return nil, err
		}
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("%s=%s: %w", s.Param, v, err)
		}
		out = append(out, Variant{Name: v, Detectors: cfg})
	}
	return out, nil
}

// Detector returns the name of the detector the sweep tunes.
func (s Sweep) Detector() string {
	return strings.SplitN(strings.TrimPrefix(s.Param, "detectors."), ".", 2)[0]
}

// A Label says whether an alert was a real attack (--labels FILE, JSON lines
// {"id": ..., "attack": true|false}; the alert's detector, key, first_seen and
// last_seen may come along, else they are taken from the replay's own alerts).
type Label struct {
	ID        string    `json:"id"`
	Attack    *bool     `json:"attack"`
	Detector  string    `json:"detector"`
	Key       string    `json:"key"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// ReadLabels reads labels as JSON lines, naming the line of any that is not one. An
// alert labelled twice alike is counted once (a sweep would count its attack twice);
// one labelled both an attack and not is an error, as no value of a sweep can be right
// about it.
func ReadLabels(r io.Reader) ([]Label, error) {
	var out []Label
	type seen struct{ i, line int } // the label's index in out, and its line
	byID := map[string]seen{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var l Label
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			return nil, fmt.Errorf("labels line %d: %w", n, err)
		}
		if l.ID == "" || l.Attack == nil {
			return nil, fmt.Errorf(`labels line %d: want {"id": "<alert id>", "attack": true|false}`, n)
		}
		if first, ok := byID[l.ID]; ok {
			if *out[first.i].Attack != *l.Attack {
				return nil, fmt.Errorf("labels line %d: alert %s is labelled attack %t, and %t on line %d: label it once",
					n, l.ID, *l.Attack, *out[first.i].Attack, first.line)
			}
			continue
		}
		byID[l.ID] = seen{len(out), n}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("labels: %w", err)
	}
	return out, nil
}

// ResolveLabels fills in the detector, key and times of labels that lack them from
// alerts (the replay's own, of its base config), and reports the labels it could not
// place.
func ResolveLabels(labels []Label, alerts []detectors.Alert) error {
	byID := map[string]*detectors.Alert{}
	for i := range alerts {
		byID[alerts[i].ID] = &alerts[i]
	}
	var missing []string
	for i := range labels {
		l := &labels[i]
		if l.Detector != "" && l.Key != "" && !l.FirstSeen.IsZero() {
			if l.LastSeen.IsZero() {
				l.LastSeen = l.FirstSeen
			}
			continue
		}
		a := byID[l.ID]
		if a == nil {
			missing = append(missing, l.ID)
			continue
		}
		l.Detector, l.Key, l.FirstSeen, l.LastSeen = a.Detector, a.Key, a.FirstSeen, a.LastSeen
	}
	if len(missing) > 0 {
		return fmt.Errorf("labels: %d alert ids this replay did not raise with its base config (%s): give each its detector, key, first_seen and last_seen",
			len(missing), strings.Join(missing[:min(3, len(missing))], ", "))
	}
	return nil
}

// catches reports whether alerts hold the labelled incident: the same id, or an alert of
// the same detector and key whose span overlaps its span.
func (l *Label) caughtBy(alerts []detectors.Alert) bool {
	return slices.ContainsFunc(alerts, func(a detectors.Alert) bool {
		return a.ID == l.ID || (a.Detector == l.Detector && a.Key == l.Key &&
			!a.FirstSeen.After(l.LastSeen) && !a.LastSeen.Before(l.FirstSeen))
	})
}

// SweepRow is what one value of a sweep raised.
type SweepRow struct {
	Value     string
	Incidents int // of the swept detector
	All       int // of every detector
	// With labels: the attacks still caught, and the alerts labelled false still raised.
	Caught, FalseAlarms int
	Missed              []string // ids of the attacks this value no longer catches
}

// SweepRows returns a row per value; results are the sweep's variants, in order.
func SweepRows(s Sweep, results []Result, labels []Label) []SweepRow {
	rows := make([]SweepRow, 0, len(results))
	det := s.Detector()
	for _, r := range results {
		row := SweepRow{Value: r.Name, Incidents: r.Incidents[det], All: len(r.Alerts)}
		for i := range labels {
			l := &labels[i]
			switch caught := l.caughtBy(r.Alerts); {
			case *l.Attack && caught:
				row.Caught++
			case *l.Attack:
				row.Missed = append(row.Missed, l.ID)
			case caught:
				row.FalseAlarms++
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// WriteSweep writes the sweep as a table: per value, the incidents of the swept
// detector and of all, and with labels the attacks caught and the false alarms.
func WriteSweep(w io.Writer, s Sweep, rows []SweepRow, labels []Label) {
	attacks := 0
	for _, l := range labels {
		if *l.Attack {
			attacks++
		}
	}
	fmt.Fprintf(w, "sweep of %s (%s incidents; all detectors):\n", s.Param, s.Detector())
	fmt.Fprintf(w, "  %-12s %9s %6s", "value", "incidents", "all")
	if len(labels) > 0 {
		fmt.Fprintf(w, " %14s %12s  %s", "attacks caught", "false alarms", "missed")
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		fmt.Fprintf(w, "  %-12s %9d %6d", r.Value, r.Incidents, r.All)
		if len(labels) > 0 {
			fmt.Fprintf(w, " %9d of %-2d %12d  %s", r.Caught, attacks, r.FalseAlarms, strings.Join(r.Missed, ","))
		}
		fmt.Fprintln(w)
	}
}

// Diff is what two configs raised differently over the same events.
type Diff struct {
	OnlyA, OnlyB []detectors.Alert
}

// Compare returns the incidents only one of a and b raised, by alert id.
func Compare(a, b Result) Diff {
	ids := func(r Result) map[string]bool {
		m := map[string]bool{}
		for _, x := range r.Alerts {
			m[x.ID] = true
		}
		return m
	}
	ia, ib := ids(a), ids(b)
	var d Diff
	for _, x := range a.Alerts {
		if !ib[x.ID] {
			d.OnlyA = append(d.OnlyA, x)
		}
	}
	for _, x := range b.Alerts {
		if !ia[x.ID] {
			d.OnlyB = append(d.OnlyB, x)
		}
	}
	return d
}

// WriteCompare writes per detector the incidents of a and b, then the incidents only
// one of them raised.
func WriteCompare(w io.Writer, nameA string, a Result, nameB string, b Result) Diff {
	d := Compare(a, b)
	fmt.Fprintf(w, "compare: %s against %s\n", nameA, nameB)
	fmt.Fprintf(w, "  %-22s %9s %9s\n", "detector", "A", "B")
	names := slices.Concat(detectors.Names, slices.Collect(maps.Keys(a.Incidents)), slices.Collect(maps.Keys(b.Incidents)))
	slices.Sort(names)
	for _, n := range slices.Compact(names) {
		fmt.Fprintf(w, "  %-22s %9d %9d\n", n, a.Incidents[n], b.Incidents[n])
	}
	for _, side := range []struct {
		name   string
		alerts []detectors.Alert
	}{{"A (" + nameA + ")", d.OnlyA}, {"B (" + nameB + ")", d.OnlyB}} {
		fmt.Fprintf(w, "  only in %s: %d\n", side.name, len(side.alerts))
		for _, x := range side.alerts {
			fmt.Fprintf(w, "    %s %s %s %s %s\n", x.ID, x.Detector, x.Key, x.FirstSeen.UTC().Format(time.RFC3339), x.Summary)
		}
	}
	return d
}

package alerting

import (
	"slices"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

// target is a receiver an alert goes to, with the repeat interval of the route that
// sent it there.
type target struct {
	receiver string
	repeat   time.Duration
}

// routeTable picks receivers the way Alertmanager's routing tree does, flattened to
// one level: routes are tried in order, the first that matches wins unless it says
// continue, and a receiver named by several matching routes gets the alert once, with
// the repeat interval of the first. Without routes every alert goes to every
// receiver.
type routeTable struct {
	routes []Route
	all    []string // every receiver, sorted: the targets when there are no routes
	repeat time.Duration
}

// match appends the targets of a to dst.
func (t *routeTable) match(a *detectors.Alert, dst []target) []target {
	if len(t.routes) == 0 {
		for _, n := range t.all {
			dst = append(dst, target{n, t.repeat})
		}
		return dst
	}
	start := len(dst)
	for i := range t.routes {
		rt := &t.routes[i]
		if !rt.Match.Matches(a) {
			continue
		}
		repeat := rt.RepeatInterval
		if repeat == 0 {
			repeat = t.repeat
		}
		for _, n := range rt.Receivers {
			if !slices.ContainsFunc(dst[start:], func(x target) bool { return x.receiver == n }) {
				dst = append(dst, target{n, repeat})
			}
		}
		if !rt.Continue {
			break
		}
	}
	return dst
}

// silencer mutes the alerts a silence matches until the silence expires.
type silencer struct {
	silences []Silence
}

// mutes reports whether a silence in force at now matches a.
func (s *silencer) mutes(a *detectors.Alert, now time.Time) bool {
	for i := range s.silences {
		sl := &s.silences[i]
		if now.Before(sl.Expires) && sl.Match.Matches(a) {
			return true
		}
	}
	return false
}

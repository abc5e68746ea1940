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
	group    *grouping // nil: not grouped
}

// compiledRoute is a Route with its grouping resolved.
type compiledRoute struct {
	Route
	group *grouping
}

// routeTable picks receivers the way Alertmanager's routing tree does, flattened to
// one level: routes are tried in order, the first that matches wins unless it says
// continue, and a receiver named by several matching routes gets the alert once, with
// the repeat interval of the first. Without routes every alert goes to every
// receiver.
type routeTable struct {
	routes []compiledRoute
	all    []string // every receiver, sorted: the targets when there are no routes
	repeat time.Duration
	group  *grouping // the alerting section's, for the targets when there are no routes
}

func newRouteTable(cfg *Config, receivers []string) routeTable {
	t := routeTable{all: receivers, repeat: cfg.RepeatInterval, group: compileGrouping(Grouping{}, cfg.Grouping)}
	for _, rt := range cfg.Routes {
		t.routes = append(t.routes, compiledRoute{Route: rt, group: compileGrouping(rt.Grouping, cfg.Grouping)})
	}
	return t
}

// match appends the targets of a to dst.
func (t *routeTable) match(a *detectors.Alert, dst []target) []target {
	if len(t.routes) == 0 {
		for _, n := range t.all {
			dst = append(dst, target{n, t.repeat, t.group})
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
				dst = append(dst, target{n, repeat, rt.group})
			}
		}
		if !rt.Continue {
			break
		}
	}
	return dst
}

// silencer mutes the alerts a silence matches until the silence expires: those of
// the config file, and those made while running (nil: none).
type silencer struct {
	silences []Silence
	set      *Silences
}

// mutes reports whether a silence in force at now matches a.
func (s *silencer) mutes(a *detectors.Alert, now time.Time) bool {
	for i := range s.silences {
		sl := &s.silences[i]
		if now.Before(sl.Expires) && sl.Match.Matches(a) {
			return true
		}
	}
	_, ok := s.set.Muting(a, now)
	return ok
}

func (s *silencer) any() bool { return len(s.silences) > 0 || s.set != nil }

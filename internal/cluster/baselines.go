package cluster

import (
	"context"

	"github.com/gatewatch/gatewatch/detectors"
)

// taskBaselines is the store as one task sees it: it loads only the baselines of the
// keys its internal partition carries (client keys, and clients per route, for a client
// task; routes for a route task; none for a token or IP task), so that each task holds
// its own keys, not every task's, and its state does not depend on how far the others
// got.
type taskBaselines struct {
	detectors.BaselineStore
	kind      Kind
	partition int
	n         int           // partitions of the internal topic
	loads     chan struct{} // the replica's: one load at a time (nil: no limit)
}

func (b taskBaselines) LoadBaselines(ctx context.Context) (detectors.Baselines, error) {
	if b.loads != nil {
		select {
		case b.loads <- struct{}{}:
			defer func() { <-b.loads }()
		case <-ctx.Done():
			return detectors.Baselines{}, ctx.Err()
		}
	}
	all, err := b.BaselineStore.LoadBaselines(ctx)
	if err != nil {
		return all, err
	}
	out := detectors.Baselines{TrafficSince: all.TrafficSince}
	switch b.kind {
	case Client:
		out.Keys = mine(all.Keys, b, func(k detectors.KeyBaseline) string { return k.Key })
		out.Clients = mine(all.Clients, b, func(c detectors.ClientBaseline) string { return c.Key })
		out.Objects = mine(all.Objects, b, func(o detectors.ObjectBaseline) string { return o.Client })
		out.Privileged = mine(all.Privileged, b, func(p detectors.PrivilegeBaseline) string { return p.Key })
	case Route:
		// A route baseline's key is "METHOD route", the route topic's key.
		out.Routes = mine(all.Routes, b, func(r detectors.RouteBaseline) string { return r.Route })
	}
	return out, nil
}

// mine returns the entries of all whose key falls in b's partition.
func mine[T any](all []T, b taskBaselines, key func(T) string) []T {
	var out []T
	for _, e := range all {
		if partitionOf(key(e), b.n) == b.partition {
			out = append(out, e)
		}
	}
	return out
}

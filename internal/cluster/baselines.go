package cluster

import (
	"context"

	"github.com/gatewatch/gatewatch/detectors"
)

// taskBaselines is the store as one task sees it: it loads only the baselines of the
// keys its internal partition carries (client keys, and clients per route, for a client
// task; routes for a route task; none for a token or IP task), so that each task holds
// its own keys, not every task's, and its state does not depend on how far the others
// got. A load reads the most recent baselines of every partition, up to the task's
// limits times the partitions, and keeps its share, up to the limits.
type taskBaselines struct {
	detectors.BaselineStore
	kind      Kind
	partition int
	n         int           // partitions of the internal topic
	loads     chan struct{} // the replica's: one load at a time (nil: no limit)
}

func (b taskBaselines) LoadBaselines(ctx context.Context, lim detectors.BaselineLimits) (detectors.Baselines, error) {
	out, _, err := b.LoadBaselinesSince(ctx, lim, 0)
	return out, err
}

// LoadBaselinesSince loads what changed in every partition, when the store can tell
// (detectors.BaselineChanges), and keeps the task's share; else it loads every
// baseline, and returns 0 so that the next load does too.
func (b taskBaselines) LoadBaselinesSince(ctx context.Context, lim detectors.BaselineLimits, since uint64) (detectors.Baselines, uint64, error) {
	if b.loads != nil {
		select {
		case b.loads <- struct{}{}:
			defer func() { <-b.loads }()
		case <-ctx.Done():
			return detectors.Baselines{}, 0, ctx.Err()
		}
	}
	// The task's detectors hold max_keys/partitions keys (lim): the n partitions'
	// most recent lim each are about the store's most recent lim*n, one engine's worth.
	var (
		all  detectors.Baselines
		next uint64
		err  error
	)
	if bc, ok := b.BaselineStore.(detectors.BaselineChanges); ok {
		all, next, err = bc.LoadBaselinesSince(ctx, lim.Times(b.n), since)
	} else {
		all, err = b.BaselineStore.LoadBaselines(ctx, lim.Times(b.n))
	}
	if err != nil {
		return all, 0, err
	}
	set := detectors.NewRecentSet(lim)
	switch b.kind {
	case Client:
		mine(all.Keys, b, func(k detectors.KeyBaseline) string { return k.Key }, set.AddKey)
		mine(all.Clients, b, func(c detectors.ClientBaseline) string { return c.Key }, set.AddClient)
		mine(all.Objects, b, func(o detectors.ObjectBaseline) string { return o.Client }, set.AddObject)
		mine(all.Privileged, b, func(p detectors.PrivilegeBaseline) string { return p.Key }, set.AddPrivileged)
	case Route:
		// A route baseline's key is "METHOD route", the route topic's key.
		mine(all.Routes, b, func(r detectors.RouteBaseline) string { return r.Route }, set.AddRoute)
	}
	out := set.Baselines()
	out.TrafficSince = all.TrafficSince
	return out, next, nil
}

// mine adds to a RecentSet (add) the entries of all whose key falls in b's partition.
func mine[T any](all []T, b taskBaselines, key func(T) string, add func(T)) {
	for _, e := range all {
		if partitionOf(key(e), b.n) == b.partition {
			add(e)
		}
	}
}

// LookupBaselines looks keys and routes up in the store when it can (see
// detectors.BaselineLookup); the keys a task sees are its partition's already.
func (b taskBaselines) LookupBaselines(ctx context.Context, keys, routes []string) (detectors.Baselines, error) {
	if l, ok := b.BaselineStore.(detectors.BaselineLookup); ok {
		return l.LookupBaselines(ctx, keys, routes)
	}
	return detectors.Baselines{}, nil
}

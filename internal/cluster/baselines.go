package cluster

import (
	"context"

	"github.com/gatewatch/gatewatch/detectors"
)

// taskBaselines is the store as one task sees it: it loads only the baselines of the
// keys its internal partition carries (client keys for a client task, routes for a
// route task, none for a token task), so that each task holds its own keys, not every
// task's, and its state does not depend on how far the others got.
type taskBaselines struct {
	detectors.BaselineStore
	kind      Kind
	partition int
	n         int // partitions of the internal topic
}

func (b taskBaselines) LoadBaselines(ctx context.Context) (detectors.Baselines, error) {
	all, err := b.BaselineStore.LoadBaselines(ctx)
	if err != nil {
		return all, err
	}
	out := detectors.Baselines{TrafficSince: all.TrafficSince}
	switch b.kind {
	case Client:
		for _, k := range all.Keys {
			if partitionOf(k.Key, b.n) == b.partition {
				out.Keys = append(out.Keys, k)
			}
		}
	case Route:
		for _, r := range all.Routes {
			if partitionOf(r.Route, b.n) == b.partition { // "METHOD route", the route topic's key
				out.Routes = append(out.Routes, r)
			}
		}
	}
	return out, nil
}

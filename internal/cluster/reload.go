package cluster

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/config"
)

// taskEngines are the engines of the replica's running tasks and the detectors config
// a new task is built with, which a reload changes.
type taskEngines struct {
	start   detectors.Config // the config the replica started with
	current detectors.Config
	live    map[*detectors.Engine]Kind
}

// taskEngineConfig is the engine config of a task of kind k, one of partitions, under
// the detectors section cfg: the kind's detectors, each with its share of max_keys,
// and the engine's idle rule backing up the task source's.
func taskEngineConfig(cfg detectors.Config, k Kind, partitions int) detectors.Config {
	cfg = taskConfig(cfg, k)
	// The task's source decides when a source partition is idle (it waits for it in the
	// merge, and relays stage one's idle marks); the engine's own wall-clock rule only
	// backs it up, for a task that gets nothing at all.
	cfg.IdleTimeout *= 2
	// A detector's keys are spread over the partitions of its topic by a hash, each
	// task tracking its own: with a share of max_keys each, a replica that holds every
	// task stays within the memory bound of one engine (README, "Sizing"), however
	// many keys hostile clients make up.
	_, commons := detectorFields(&cfg)
	for _, c := range commons {
		c.MaxKeys = (c.MaxKeys + partitions - 1) / partitions
	}
	return cfg
}

// PrepareReload checks a changed detectors section against every kind of task, as
// detectors.Engine.PrepareReload does, and builds it for the running tasks. The
// returned function puts it in force in every task, and in the tasks started later; it
// changes nothing until called, so that a reload is all or nothing.
func (r *Replica) PrepareReload(cfg detectors.Config) (apply func(), err error) {
	if err := CheckDetectors(cfg); err != nil {
		return nil, err
	}
	r.tasksMu.Lock()
	defer r.tasksMu.Unlock()
	// Against an engine of each kind as the replica started, so that a replica with no
	// task yet refuses what one with tasks would.
	// Every kind refuses a changed shared setting (allowed_lateness) alike: name it once.
	var errs []error
	seen := map[string]bool{}
	for k := range numKinds {
		ref, err := detectors.NewEngine(taskEngineConfig(r.tasks.start, k, r.cfg.Partitions), detectors.Options{Registerer: prometheus.NewRegistry()})
		if err == nil {
			_, err = ref.PrepareReload(taskEngineConfig(cfg, k, r.cfg.Partitions))
		}
		for _, e := range config.Errors(err) {
			if !seen[e.Error()] {
				seen[e.Error()] = true
				errs = append(errs, e)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	prepared := map[*detectors.Engine]*detectors.Reload{}
	for e, k := range r.tasks.live {
		p, err := e.PrepareReload(taskEngineConfig(cfg, k, r.cfg.Partitions))
		if err != nil {
			return nil, fmt.Errorf("cluster: task engine: %w", err)
		}
		prepared[e] = p
	}
	return func() {
		r.tasksMu.Lock()
		defer r.tasksMu.Unlock()
		for e, k := range r.tasks.live {
			if p := prepared[e]; p != nil {
				p.Apply()
			} else if err := e.Reconfigure(taskEngineConfig(cfg, k, r.cfg.Partitions)); err != nil {
				// A task started since PrepareReload, from the config its checks passed.
				r.log.Error("a task started during a reload keeps the previous detector settings", "err", err)
			}
		}
		r.tasks.current = cfg
	}, nil
}

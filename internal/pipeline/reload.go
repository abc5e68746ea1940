package pipeline

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/config"
)

// Reload puts cfg in force without a restart: routes, silences, receivers and the rest
// of alerting (a new router over the same outbox; what the old one had not delivered
// stays there for the new one), and the detectors' thresholds, overrides, allowlists
// and the like, in the engine or every task of a cluster replica, with their state
// kept (see detectors.Engine.PrepareReload). cfg must have passed validation. Settings
// that only a restart can change (the Kafka source, the store, the admin endpoint, the
// console, the detector settings that shape kept state) make Reload refuse the whole
// config, naming them; the config in force keeps running, all of it.
func (p *Pipeline) Reload(ctx context.Context, cfg Config) error {
	err := p.reload(ctx, &cfg)
	{
		if err != nil {
			p.m.reloads.WithLabelValues("failure").Inc()
			p.m.configOK.Set(0)
		} else {
			p.m.reloads.WithLabelValues("success").Inc()
			p.m.configOK.Set(1)
			p.m.configTime.SetToCurrentTime()
		}
	}
	return err
}

// ReloadFailed records a reload refused before it reached the pipeline: a config file
// that does not load. The config in force keeps running.
func (p *Pipeline) ReloadFailed(err error) {
	p.log.Error("config reload refused; the config in force keeps running", "err", err)
	p.m.reloads.WithLabelValues("failure").Inc()
	p.m.configOK.Set(0)
}

func (p *Pipeline) reload(ctx context.Context, cfg *Config) error {
	select {
	case <-p.stopped:
		return errors.New("pipeline: not running")
	default:
	}
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	p.mu.Lock()
	alerts, detection := p.alerts, p.detection
	p.mu.Unlock()
	if alerts == nil || detection == nil {
		return errors.New("pipeline: still starting; reload again once it runs")
	}
	old := p.cfg.Load()
	var restart []string
	for _, s := range []struct {
		name     string
		old, new any
	}{
		{"ingest", old.Ingest, cfg.Ingest},
		{"store", old.Store, cfg.Store},
		{"admin", old.Admin, cfg.Admin},
		{"console", old.Console, cfg.Console},
	} {
		if !reflect.DeepEqual(s.old, s.new) {
			restart = append(restart, s.name)
		}
	}
	if len(restart) > 0 {
		return fmt.Errorf("pipeline: reload refused, these take effect only after a restart: %s", strings.Join(restart, "; "))
	}
	// The detectors are checked and built first and put in force last: every step
	// that can fail comes before anything changes.
	var applyDetectors func()
	if !reflect.DeepEqual(old.Detectors, cfg.Detectors) {
		apply, err := detection(cfg.Detectors)
		if err != nil {
			return fmt.Errorf("pipeline: reload refused: %w", config.Prefix("detectors", err))
		}
		applyDetectors = apply
	}
	if !reflect.DeepEqual(old.Alerting, cfg.Alerting) {
		if err := alerts.swap(ctx, cfg); err != nil {
			return fmt.Errorf("pipeline: reload: alerting: %w", err)
		}
	}
	if applyDetectors != nil {
		applyDetectors()
	}
	p.cfg.Store(cfg)
	p.log.Info("config reloaded")
	return nil
}

// setDetection makes a reload reach the detectors through prepare.
func (p *Pipeline) setDetection(prepare func(detectors.Config) (func(), error)) {
	p.mu.Lock()
	p.detection = prepare
	p.mu.Unlock()
}

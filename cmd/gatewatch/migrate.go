package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/store"
)

func runMigrate(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "migrate", "migrate --config FILE")
	configPath := fs.String("config", "", "config file whose store.clickhouse section names the server (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *configPath == "" {
		fmt.Fprintln(env.stderr, "migrate: --config is required")
		fs.Usage()
		return errUsage
	}
	cfg, err := loadConfigFile(*configPath)
	if err != nil {
		return err
	}
	if cfg.Store.ClickHouse == nil {
		return errors.New("store.clickhouse is not configured: the embedded local store needs no migration")
	}
	logger := slog.New(slog.NewTextHandler(env.stderr, nil))
	ch, err := store.NewClickHouse(cfg.Store, store.ClickHouseOptions{Logger: logger.With("component", "store"), Registerer: prometheus.NewRegistry()})
	if err != nil {
		return err
	}
	defer ch.Close(context.WithoutCancel(ctx))
	if err := ch.Migrate(ctx); err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "migrate: schema of %s is up to date\n", cfg.Store.ClickHouse.Database)
	return nil
}

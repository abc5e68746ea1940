package store

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestOpenChoosesTheConfiguredStore(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	if _, err := Open(cfg, Options{}); err == nil {
		t.Error("Open without a Registerer succeeded")
	}
	s, err := Open(cfg, Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.(*Local); !ok {
		t.Errorf("no clickhouse block: Open returned %T, want *Local", s)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	ch := DefaultClickHouseConfig()
	ch.Addr = []string{"127.0.0.1:1"} // never dialled: the ClickHouse store connects lazily
	cfg.ClickHouse = &ch
	s, err = Open(cfg, Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.(*ClickHouse); !ok {
		t.Errorf("clickhouse block: Open returned %T, want *ClickHouse", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Errorf("Close with nothing buffered: %v", err)
	}
}

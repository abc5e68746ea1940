package alerting_test

import (
	"sync"
	"testing"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
)

// memStore is a MemoryOutbox that survives its Close, the way a file survives a
// process: opening the same dir again returns what was left there.
type memStore struct{ *alerting.MemoryOutbox }

func (memStore) Close() error { return nil }

func TestMemoryOutbox(t *testing.T) {
	var mu sync.Mutex
	dirs := map[string]*alerting.MemoryOutbox{}
	alertingtest.RunOutboxSuite(t, func(t *testing.T, dir string) alertingtest.Store {
		mu.Lock()
		defer mu.Unlock()
		m, ok := dirs[dir]
		if !ok {
			m = alerting.NewMemoryOutbox()
			dirs[dir] = m
		}
		return memStore{m}
	})
}

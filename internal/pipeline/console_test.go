package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/detectors"
)

// TestSyncAnalyst: a replica whose store others share puts the silences, expiries and
// acknowledgements they made in force within analystSync, and keeps reading; over a
// store of its own it retries a store that failed at start-up until one load succeeds,
// then stops. Time is synctest's.
func TestSyncAnalyst(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Run("shared store", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := alertingtest.NewAnalystStore()
			silA, acksA := openReplica(t, st)
			silB, acksB := openReplica(t, st)
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() {
				syncAnalyst(ctx, func(ctx context.Context) error { return errors.Join(silB.Load(ctx), acksB.Load(ctx)) }, true, false, log)
				close(done)
			}()
			alert := detectors.Alert{Detector: detectors.ForbiddenBurst, Severity: detectors.SeverityHigh, Key: "scanner-key"}
			muted := func() bool { _, ok := silB.Muting(&alert, time.Now()); return ok }
			rec, err := silA.Create(ctx, alerting.SilenceRecord{Match: alerting.Matcher{Key: []string{alert.Key}},
				Expires: time.Now().Add(time.Hour), Comment: "pentest", CreatedBy: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(analystSync - time.Millisecond)
			synctest.Wait()
			if muted() {
				t.Fatal("B mutes before a sync: the test proves nothing")
			}
			time.Sleep(time.Millisecond)
			synctest.Wait()
			if !muted() {
				t.Errorf("B does not mute %v after A made the silence", analystSync)
			}
			if _, err := silA.Expire(ctx, rec.ID, "bob"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := acksA.Acknowledge(ctx, "alert-1", "bob", "console"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(analystSync)
			synctest.Wait()
			if muted() {
				t.Errorf("B still mutes %v after A expired the silence", analystSync)
			}
			if _, ok := acksB.Ack("alert-1"); !ok {
				t.Errorf("B does not show A's acknowledgement %v after it", analystSync)
			}
			cancel()
			<-done
		})
	})
	t.Run("own store, down at start-up", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			sil, _ := openReplica(t, alertingtest.NewAnalystStore())
			var loads atomic.Int32
			var down atomic.Bool // the store
			down.Store(true)
			done := make(chan struct{})
			go func() {
				syncAnalyst(t.Context(), func(ctx context.Context) error {
					loads.Add(1)
					if down.Load() {
						return errors.New("connection refused")
					}
					return sil.Load(ctx)
				}, false, true, log)
				close(done)
			}()
			time.Sleep(3 * analystSync)
			synctest.Wait()
			if n := loads.Load(); n != 3 {
				t.Errorf("%d loads in %v while the store is down, want 3", n, 3*analystSync)
			}
			down.Store(false)
			time.Sleep(analystSync)
			synctest.Wait()
			select {
			case <-done:
			default:
				t.Error("still loading after a load succeeded over a store of its own")
			}
		})
	})
}

func openReplica(t *testing.T, st *alertingtest.AnalystStore) (*alerting.Silences, *alerting.Acks) {
	t.Helper()
	sil, err := alerting.OpenSilences(t.Context(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	acks, err := alerting.OpenAcks(t.Context(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sil, acks
}

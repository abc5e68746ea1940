package store

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

type rater interface {
	ArchiveEvents(ctx context.Context, evs []ingest.Event) error
	Flush(ctx context.Context) error
	RequestsPerMinute(ctx context.Context, q RateQuery, from, to time.Time) ([]int64, error)
}

// testRate archives three minutes of traffic of two clients on two routes and reads
// each one's requests per minute back, by client key, token fingerprint and route.
func testRate(t *testing.T, st rater) {
	ctx := testContext(t)
	var evs []ingest.Event
	add := func(minute, n int, key, tok, method, route string) {
		for i := range n {
			evs = append(evs, ingest.Event{Time: h0.Add(time.Duration(minute)*time.Minute + time.Duration(i)*time.Second),
				ClientKey: key, TokenFP: tok, ClientIP: "192.0.2.1", Method: method, Route: route, Path: route, Status: 200,
				RequestID: "r", Source: "waf"})
		}
	}
	add(0, 3, "k1", "t1", "GET", "/v1/a")
	add(1, 5, "k1", "t1", "POST", "/v1/b")
	add(1, 2, "k2", "t2", "GET", "/v1/a")
	add(3, 4, "k2", "t2", "GET", "/v1/a")
	if err := st.ArchiveEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	if err := st.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		q    RateQuery
		want []int64
	}{
		{"client key", RateQuery{Key: "k1"}, []int64{3, 5, 0, 0, 0}},
		{"token fingerprint", RateQuery{Key: "t2"}, []int64{0, 2, 0, 4, 0}},
		{"route", RateQuery{Method: "GET", Route: "/v1/a"}, []int64{3, 2, 0, 4, 0}},
	} {
		got, err := st.RequestsPerMinute(ctx, c.q, h0.Add(30*time.Second), h0.Add(5*time.Minute))
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: RequestsPerMinute = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	if _, err := st.RequestsPerMinute(ctx, RateQuery{Key: "k1"}, h0, h0.Add(48*time.Hour)); err == nil {
		t.Error("a two-day window was read")
	}
}

func TestLocalRate(t *testing.T) {
	testRate(t, newTestLocal(t, Config{DataDir: t.TempDir()}))
}

func TestClickHouseRate(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	testRate(t, startClickHouse(t, testConfig(t, addr, db), prometheus.NewRegistry()))
}

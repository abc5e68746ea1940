package store

import (
	"testing"

	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// TestClickHouseSlackThreads: the largest version of a thread wins whatever the order
// of the writes, per receiver and id, and a thread never saved is reported missing.
func TestClickHouseSlackThreads(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	c := startClickHouse(t, testConfig(t, addr, db), nil)
	ctx := testContext(t)
	for _, w := range []struct {
		receiver, id, thread string
		version              uint64
	}{
		{"soc", "a", `{"ts":"1.1"}`, 10},
		{"soc", "a", `{"ts":"1.3"}`, 30},
		{"soc", "a", `{"ts":"1.2"}`, 20}, // written last, older
		{"other", "a", `{"ts":"9.9"}`, 40},
		{"soc", "b", `{"ts":"2.1"}`, 5},
	} {
		if err := c.SaveSlackThread(ctx, w.receiver, w.id, w.thread, w.version); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		receiver, id string
		want         string
		wantVersion  uint64
		wantOK       bool
	}{
		{"soc", "a", `{"ts":"1.3"}`, 30, true},
		{"other", "a", `{"ts":"9.9"}`, 40, true},
		{"soc", "b", `{"ts":"2.1"}`, 5, true},
		{"soc", "c", "", 0, false},
		{"nobody", "b", "", 0, false},
	} {
		got, v, ok, err := c.SlackThread(ctx, tc.receiver, tc.id)
		if err != nil || got != tc.want || v != tc.wantVersion || ok != tc.wantOK {
			t.Errorf("SlackThread(%s, %s) = (%q, %d, %v, %v), want (%q, %d, %v, nil)", tc.receiver, tc.id, got, v, ok, err, tc.want, tc.wantVersion, tc.wantOK)
		}
	}
}

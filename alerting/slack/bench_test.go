package slack

import (
	"encoding/json"
	"testing"
)

// BenchmarkSlackBlocks measures building the Block Kit message of one alert and
// encoding its blocks, which is what each Slack post costs us before the network.
// Compare runs with: go test -run '^$' -bench SlackBlocks -benchmem -count 6 | benchstat.
func BenchmarkSlackBlocks(b *testing.B) {
	alerts := readAlerts(b)
	a := &alerts[4] // forbidden_burst: the most fields and samples
	b.ReportAllocs()
	var size int
	for b.Loop() {
		m := parentMessage(a, testReplay, nil)
		out, err := json.Marshal(m.blocks)
		if err != nil {
			b.Fatal(err)
		}
		size = len(out)
	}
	b.SetBytes(int64(size))
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

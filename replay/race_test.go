//go:build race

package replay_test

// raceEnabled: the race detector slows every event about tenfold.
const raceEnabled = true

// Package ingest breaks the rule on purpose: it imports detectors.
package ingest

import "example.com/violation/detectors"

// Event is what ingest owns.
type Event struct{ Seen detectors.Alert }

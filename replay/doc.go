// Package replay runs history through the same detectors.Engine that runs live: log
// files (and, later, time ranges of Kafka topics and of the ClickHouse archive) are read
// in order, parsed by the ingest parsers and observed by the engine, so what a replay
// raises is what live would have raised on the same events.
package replay

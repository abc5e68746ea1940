// Package replay runs history through the same detectors.Engine that runs live: log
// files, a time range of Kafka topics (KafkaRange) or the store's event archive
// (Archive) are read in event-time order, parsed by the ingest parsers and observed by
// the engine, so what a replay raises is what live would have raised on the same
// events. Run drives more engines over one read of the input for --compare and --sweep
// (Variant, Sweep, Compare, Label), and WriteReport writes the self-contained HTML
// report, its charts drawn by internal/chart.
package replay

// Package kafka is gatewatch's Kafka source and Kafka dead-letter sink.
//
// Source is one member of a consumer group reading several topics, each in its own log
// format. It parses records into ingest.Events, sends the records its parsers reject to
// the dead-letter sink, and hands the events out in batches whose offsets are committed
// only when the pipeline acknowledges them. DeadLetterWriter is an ingest.DeadLetters
// that writes each rejected record as one JSON message to a topic.
//
// # Delivery
//
// Source is a member of the consumer group through kafka-go's ConsumerGroup and
// Generation API, which says which partitions each generation assigns to the member and
// ends a generation's context on a rebalance; it never guesses ownership. For each
// assigned partition it runs a partition reader for the generation's lifetime and
// fetches with FetchMessage; offsets are committed explicitly, through the generation
// (Generation.CommitOffsets), only when the pipeline acknowledges them. Each batch
// remembers, per partition, the run of offsets it holds, rejected records included: a
// rejected record counts as handled once the dead-letter sink stored it, which happens
// before the batch is handed out. Batch.Ack marks the runs done, and per partition the
// source commits the end of the contiguous done prefix. Batches may be acknowledged in
// any order; nothing is committed past a record still in flight.
//
// On a rebalance:
//
//   - A partition the member keeps goes on where its reader stopped, after the last
//     record taken into a batch, not from the group's committed offset: batches in
//     flight across the rebalance still commit it when acknowledged, and no record is
//     read twice.
//   - A partition the member loses is forgotten at once: batches in flight commit
//     nothing for it, its records go to the new owner from the group's committed
//     offset, and the next batch handed out lists it in Batch.Ended.
//   - A partition new to the member starts from the group's committed offset (or
//     kafka.start_offset when the group has none) and is listed in Batch.Opened of the
//     next batch, before any of its events, so the engine waits for its event time.
//   - A commit that fails (the coordinator refuses it while the group rebalances, or a
//     generation ended) is logged and tried again with the next acknowledgement or at
//     the start of the next generation. The offsets stay uncommitted meanwhile, which at
//     worst delivers their records again.
//
// Each partition's reader parses its records, and the source merges the partitions by
// event time (each partition's records in offset order), with Batch.Runs saying which
// partition each run of events is of: the engine judges event time per partition.
//
// The guarantee is at least once. A record is committed only after the batch holding it
// and every earlier batch of its partition were acknowledged. Records not acknowledged
// when a member stops, crashes or loses their partition are delivered again, to it or to
// another member, and no record is skipped.
package kafka

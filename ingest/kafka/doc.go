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
// Source reads through a github.com/segmentio/kafka-go Reader with GroupID and
// GroupTopics, fetching with FetchMessage and committing explicitly (CommitInterval 0).
// ReadMessage, which commits records before anything processed them, is never used.
// Each batch remembers, per partition, the run of offsets it holds, rejected records
// included: a rejected record counts as handled once the dead-letter sink stored it,
// which happens before the batch is handed out. Batch.Ack marks the runs done, and per
// partition the source commits the end of the contiguous done prefix. Batches may be
// acknowledged in any order; nothing is committed past a record still in flight.
//
// What kafka-go v0.4.51 does on a rebalance (reader.go, consumergroup.go), and what the
// source adds:
//
//   - Every generation restarts the partition readers at the group's committed offsets,
//     for the partitions the member keeps as well as for new ones. The source remembers,
//     per partition, which offsets it already took into batches in this process and drops
//     records fetched again below that point: their batches are in flight here (or were
//     acknowledged) and commit when acknowledged. A kept partition thus neither repeats
//     nor skips a record. If the group's offset went back below everything taken (an
//     operator reset the group, or a former owner committed late), the source starts
//     that partition afresh from there and its batches in flight no longer commit it:
//     records repeat, none is lost.
//   - kafka-go does not tell a member which partitions it owns. The source counts the
//     generations that started (Reader.Stats().Rebalances) and after each one commits a
//     partition only once it has fetched a record of it in the new generation. Batches of
//     a partition that moved to another member then commit nothing, unless the partition
//     comes back: their acknowledgement may then commit an offset below the one the other
//     member reached, which repeats records and loses none.
//   - One gap remains. kafka-go keeps a CommitMessages issued after a generation ended
//     and runs it under the next generation, and the coordinator checks a commit's
//     generation and member, not the assignment. A batch acknowledged while the group is
//     rebalancing can therefore commit a partition that just moved. The offset committed
//     is still the end of records this member processed completely, so at worst it moves
//     the new owner's committed offset back and records after it are delivered again
//     after the next rebalance or restart; it never moves past a record nobody processed.
//
// The guarantee is at least once. A record is committed only after the batch holding it
// and every earlier batch of its partition were acknowledged. Records not acknowledged
// when a member stops, crashes or loses their partition are delivered again, to it or to
// another member, and no record is skipped. Records delivered twice are ones that had
// not been acknowledged, apart from the late commits described above.
package kafka

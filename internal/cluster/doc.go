// Package cluster scales gatewatch out over Kafka, the way Kafka Streams does: with a
// cluster section, every `gatewatch run` is a Replica that runs two stages, each a
// member of its own consumer group.
//
// Stage one reads the raw topics (ingest.kafka.group), parses them, decides each
// event's lateness within its source partition, and writes a compact record of the
// event to one internal topic per key the detectors key by: <prefix>-client (client
// key, else client IP), <prefix>-token (token fingerprint) and <prefix>-route (method
// and route template), to the partition its key hashes to. Each source partition's
// stream time (its largest event time), and its being opened or idle, travel in-band:
// marks records written to every internal partition. The raw offsets are committed
// only after the brokers acknowledged every record a batch became.
//
// Stage two (ingest.kafka.group + "-tasks") runs a task for each internal partition
// assigned to it: a detectors.Engine with only the detectors of that topic's key,
// whose watermark is the minimum over the source partitions it hears of (idle ones
// excluded). A task commits its partition's offset with, as the commit's metadata, the
// highest source offset it took of each source partition; a task rebuilt from the
// commit (after a crash or a rebalance, on any replica) drops records at or below
// them. Stage one writes the same records for the same source records, so a record
// written twice is dropped as a duplicate, and the alerts do not depend on how many
// replicas run or which replica runs which task. Since nothing reads an internal
// partition below its commit, each replica deletes the records below its tasks'
// commits every 30 s (purger), as Kafka Streams purges its repartition topics.
package cluster

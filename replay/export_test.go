package replay

// SyncEvery lets tests change syncEvery.
var SyncEvery = &syncEvery

// RangeChunkRecords is how many records of a partition KafkaRange parses at once.
const RangeChunkRecords = rangeChunkRecords

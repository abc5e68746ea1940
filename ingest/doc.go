// Package ingest turns API-gateway and WAF access logs into normalised Events.
//
// It owns the first stage of the gatewatch pipeline: sources that read raw records
// (a Kafka consumer group, files, stdin), one parser per vendor format, GeoIP
// enrichment, keyed token fingerprints and the dead-letter sink that receives every
// record a parser rejects. Raw bearer tokens and API keys never leave a parser: an
// Event carries only their keyed HMAC fingerprints.
//
// ingest imports no other part of gatewatch; the detectors consume its Events.
package ingest

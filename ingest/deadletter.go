package ingest

import (
	"context"
	"time"
)

// A DeadLetter is a record a parser rejected, with why and where it came from, so that
// nothing is lost: an operator can fix the cause and feed the record back.
//
// Record holds the raw bytes as read. It may contain credentials, so the dead-letter
// sink deserves the same protection as the source topic; nothing else of gatewatch
// (logs, metrics, errors, events) ever quotes it.
type DeadLetter struct {
	Time      time.Time `json:"time"`           // when the record was rejected
	Source    string    `json:"source"`         // topic or file name
	Format    string    `json:"format"`         // the format it was parsed as
	Partition int       `json:"partition"`      // Kafka partition; -1 for files
	Offset    int64     `json:"offset"`         // Kafka offset, or the 1-based line number in a file
	Reason    string    `json:"reason"`         // one of the Reason constants
	Error     string    `json:"error"`          // the parser's explanation
	Record    string    `json:"record"`         // the raw record (invalid UTF-8 replaced by U+FFFD in JSON)
	Kept      bool      `json:"kept,omitempty"` // the record was repaired and its event kept (see ParseError.Kept)
}

// DeadLetters receives rejected records. Put returns once the records are stored; a
// source does not acknowledge a batch whose rejects could not be stored.
type DeadLetters interface {
	Put(ctx context.Context, letters []DeadLetter) error
}

// NewDeadLetter describes a record the parser of format rejected (or repaired: see
// ParseError.Kept) with err, at now. An error that is no ParseError breaks the Parser
// contract; the record still goes where an operator sees it, as bad_value.
func NewDeadLetter(now time.Time, source, format string, partition int, offset int64, record []byte, err error) DeadLetter {
	reason := ReasonOf(err)
	if reason == "" {
		reason = ReasonBadValue
	}
	return DeadLetter{
		Time:      now.UTC(),
		Source:    source,
		Format:    format,
		Partition: partition,
		Offset:    offset,
		Reason:    reason,
		Error:     err.Error(),
		Record:    string(record),
		Kept:      Kept(err),
	}
}

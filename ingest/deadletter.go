package ingest

import (
	"context"
	"encoding/base64"
	"fmt"
	"time"
	"unicode/utf8"
)

// A DeadLetter is a record a parser rejected, with why and where it came from, so that
// nothing is lost: an operator can fix the cause and feed the record back.
//
// Record holds the raw bytes as read, exactly: as text when they are valid UTF-8 (JSON
// escapes round-trip every byte of it), else base64-encoded with Encoding "base64", so a
// record with a stray byte is not silently repaired on its way to the sink. Raw decodes
// either. A record may contain credentials, so the dead-letter sink deserves the same
// protection as the source topic; nothing else of gatewatch (logs, metrics, errors,
// events) ever quotes it.
type DeadLetter struct {
	Time      time.Time `json:"time"`               // when the record was rejected
	Source    string    `json:"source"`             // topic or file name
	Format    string    `json:"format"`             // the format it was parsed as
	Partition int       `json:"partition"`          // Kafka partition; -1 for files
	Offset    int64     `json:"offset"`             // Kafka offset, or the 1-based line number in a file
	Reason    string    `json:"reason"`             // one of the Reason constants
	Error     string    `json:"error"`              // the parser's explanation
	Record    string    `json:"record"`             // the raw record: text, or base64 (see Encoding)
	Encoding  string    `json:"encoding,omitempty"` // "base64" when the record is not valid UTF-8, else empty
	Kept      bool      `json:"kept,omitempty"`     // the record was repaired and its event kept (see ParseError.Kept)
}

// EncodingBase64 marks a DeadLetter whose Record is base64 (standard, padded).
const EncodingBase64 = "base64"

// Raw returns the record's bytes exactly as they were read.
func (d *DeadLetter) Raw() ([]byte, error) {
	switch d.Encoding {
	case "":
		return []byte(d.Record), nil
	case EncodingBase64:
		return base64.StdEncoding.DecodeString(d.Record)
	}
	return nil, fmt.Errorf("ingest: dead letter: unknown record encoding %q", d.Encoding)
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
	dl := DeadLetter{
		Time:      now.UTC(),
		Source:    source,
		Format:    format,
		Partition: partition,
		Offset:    offset,
		Reason:    reason,
		Error:     err.Error(),
		Kept:      Kept(err),
	}
	if utf8.Valid(record) {
		dl.Record = string(record)
	} else {
		dl.Record, dl.Encoding = base64.StdEncoding.EncodeToString(record), EncodingBase64
	}
	return dl
}

package ingest

import (
	"errors"
	"fmt"
)

// ErrUnknownFormat is returned by NewParser for a format it does not know.
var ErrUnknownFormat = errors.New("ingest: unknown format")

// Reasons a record is rejected. Each is a stable token: the dead-letter record's reason
// and the value of the reason label on gatewatch_ingest_dead_letters_total.
const (
	ReasonOversized     = "oversized"      // longer than the configured line cap
	ReasonBadUTF8       = "bad_utf8"       // not valid UTF-8: repaired (bytes replaced by U+FFFD) and kept, see ParseError.Kept
	ReasonInvalidJSON   = "invalid_json"   // a JSON format whose record does not parse as a JSON object
	ReasonBadSyntax     = "bad_syntax"     // a text format whose line does not match its layout
	ReasonMissingField  = "missing_field"  // the time, a request (method, path or status) or a client is absent
	ReasonBadTimestamp  = "bad_timestamp"  // the time does not parse, or is absurd (before 1990, or too far ahead)
	ReasonBadValue      = "bad_value"      // a field has the wrong type or an impossible value
	ReasonUnknownFormat = "unknown_format" // --format auto recognised no format
	ReasonTruncated     = "truncated"      // cut short by damage to its input (a truncated gzip)
	// ReasonStderr: a line a container wrote to stderr (a container runtime's log says
	// which stream) that is no access log record: the program's own log, set aside.
	ReasonStderr = "stderr"
)

// Reasons lists every rejection reason, for pre-creating metric series.
var Reasons = []string{ReasonOversized, ReasonBadUTF8, ReasonInvalidJSON, ReasonBadSyntax,
	ReasonMissingField, ReasonBadTimestamp, ReasonBadValue, ReasonUnknownFormat, ReasonTruncated, ReasonStderr}

// A ParseError says why a record was rejected. Its text never quotes the record, which
// may hold credentials.
type ParseError struct {
	Reason string // one of the Reason constants
	Err    error
	// Kept means the record was repaired rather than rejected: the event is filled and
	// valid, and the raw record still goes to the dead-letter sink so nothing is lost.
	// Invalid UTF-8 is repaired this way, so that one stray byte in a header an attacker
	// controls cannot hide a request from the detectors.
	Kept bool
}

func (e *ParseError) Error() string { return fmt.Sprintf("ingest: %s: %v", e.Reason, e.Err) }
func (e *ParseError) Unwrap() error { return e.Err }

func parseErrorf(reason, format string, args ...any) *ParseError {
	return &ParseError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Kept reports whether err describes a repaired record whose event is valid.
func Kept(err error) bool {
	var pe *ParseError
	return errors.As(err, &pe) && pe.Kept
}

// ReasonOf returns the rejection reason carried by err, or "" when err is no ParseError.
func ReasonOf(err error) string {
	var pe *ParseError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	return ""
}

package ingest

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// record is the layer in front of every parser NewParser returns. It applies what holds
// for a record whatever its format, in this order:
//
//   - a record over the size cap is rejected as oversized;
//   - a record that is not valid UTF-8 is parsed with each invalid byte replaced by
//     U+FFFD instead of being dropped: nginx (escape=json) and Envoy write header bytes as
//     they came, so a client could otherwise hide its requests from the detectors with
//     one stray byte in its user agent. The event is kept, with a kept ParseError, so the
//     raw record still reaches the dead-letter sink and the repair is counted;
//   - the format parses the record, and the event must be complete (see complete);
//   - a record that does not parse as it is gets its container-runtime or shipper
//     envelope taken off (see unwrapper), and what was inside is parsed instead;
//   - a record that still does not parse, and that its container wrote to stderr, is
//     rejected as stderr: the program's own log, not a record of the wrong format.
type record struct {
	p     Parser
	max   int
	fixed []byte // the record with invalid UTF-8 replaced
	env   unwrapper
}

var errRepaired = errors.New("record is not valid UTF-8: invalid bytes replaced by U+FFFD")

func (r *record) Parse(ev *Event, line []byte) error {
	if len(line) > r.max {
		return OversizedError(len(line), r.max)
	}
	repaired := !utf8.Valid(line)
	if repaired {
		r.fixed = appendValidUTF8(r.fixed[:0], line)
		line = r.fixed
	}
	err := r.parse(ev, line)
	if err != nil {
		switch inner, uerr := r.env.unwrap(line); {
		case uerr != nil:
			err = uerr
		case inner != nil:
			err = r.parse(ev, inner)
		}
	}
	if err == nil && repaired {
		return &ParseError{Reason: ReasonBadUTF8, Err: errRepaired, Kept: true}
	}
	if err != nil && !Kept(err) {
		if stream, _, _, _, _, _, _ := splitPart(line); stream == 1 {
			// nginx's notices, an ingress controller's own log: next to its access log
			// in the pod's file, but no request, and not a sign of a wrong --format.
			return &ParseError{Reason: ReasonStderr, Err: fmt.Errorf("a line its container wrote to stderr, which is no access log record: %w", err)}
		}
	}
	return err
}

func (r *record) parse(ev *Event, line []byte) error {
	if err := r.p.Parse(ev, line); err != nil {
		return err
	}
	return complete(ev)
}

// newFormatParser builds the parser of one format around a shared base.
func newFormatParser(format string, b *base) (Parser, error) {
	switch format {
	case FormatAWSWAF:
		return newAWSWAFParser(b), nil
	case FormatAPIGateway:
		return newAPIGatewayParser(b), nil
	case FormatKong:
		return newKongParser(b), nil
	case FormatCloudflare:
		return newCloudflareParser(b), nil
	case FormatEnvoy:
		return newEnvoyParser(b), nil
	case FormatNginx:
		return newNginxParser(b), nil
	case FormatAuto:
		return newAutoParser(b), nil
	}
	return nil, ErrUnknownFormat
}

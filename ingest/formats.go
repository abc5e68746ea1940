package ingest

import (
	"errors"
	"unicode/utf8"
)

// repairing wraps a format parser so that a record that is not valid UTF-8 is parsed with
// each invalid byte replaced by U+FFFD, instead of being dropped: nginx (escape=json)
// and Envoy write header bytes as they came, so a client could otherwise hide its
// requests from the detectors with one stray byte in its user agent. The parser still
// reports a kept ParseError, so the raw record reaches the dead-letter sink and the
// repair is counted.
type repairing struct {
	p   Parser
	max int
	buf []byte
}

func (r *repairing) Parse(ev *Event, line []byte) error {
	if len(line) > r.max || utf8.Valid(line) {
		return r.p.Parse(ev, line)
	}
	r.buf = appendValidUTF8(r.buf[:0], line)
	if err := r.p.Parse(ev, r.buf); err != nil {
		return err
	}
	return &ParseError{Reason: ReasonBadUTF8, Err: errors.New("record is not valid UTF-8: invalid bytes replaced by U+FFFD"), Kept: true}
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

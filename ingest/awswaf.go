package ingest

// awswafParser is being written in this session; until then it rejects every record.
type awswafParser struct{ *base }

func newAWSWAFParser(b *base) *awswafParser { return &awswafParser{b} }

func (p *awswafParser) Parse(ev *Event, line []byte) error {
	return parseErrorf(ReasonUnknownFormat, "the awswaf parser is not written yet")
}

package ingest

// apigwParser is being written in this session; until then it rejects every record.
type apigwParser struct{ *base }

func newAPIGatewayParser(b *base) *apigwParser { return &apigwParser{b} }

func (p *apigwParser) Parse(ev *Event, line []byte) error {
	return parseErrorf(ReasonUnknownFormat, "the apigw parser is not written yet")
}

package ingest

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

package ingest

// idPlaceholder replaces identifier segments when a path is folded into a route.
const idPlaceholder = "{id}"

// minHexID is the shortest run of hex digits folded as an id; shorter words such as
// "cafe" or "add" are ordinary path segments.
const minHexID = 16

// AppendRoute appends path with identifier segments (all digits, UUIDs, hex strings of
// at least 16 digits) replaced by {id}, so /users/42/orders/7f3e... becomes
// /users/{id}/orders/{id}. The query string, if any, is dropped.
func AppendRoute(dst, path []byte) []byte {
	for i, c := range path {
		if c == '?' || c == '#' {
			path = path[:i]
			break
		}
	}
	for len(path) > 0 {
		if path[0] == '/' {
			dst = append(dst, '/')
			path = path[1:]
			continue
		}
		end := len(path)
		for i, c := range path {
			if c == '/' {
				end = i
				break
			}
		}
		seg := path[:end]
		if isIDSegment(seg) {
			dst = append(dst, idPlaceholder...)
		} else {
			dst = append(dst, seg...)
		}
		path = path[end:]
	}
	return dst
}

func isIDSegment(s []byte) bool {
	if len(s) == 0 {
		return false
	}
	digits, hex := true, true
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			digits = false
		default:
			digits, hex = false, false
		}
	}
	return digits || (hex && len(s) >= minHexID) || isUUID(s)
}

func isUUID(s []byte) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

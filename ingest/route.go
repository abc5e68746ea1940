package ingest

// idPlaceholder replaces identifier segments when a path is folded into a route.
const idPlaceholder = "{id}"

// minHexID is the shortest run of hex digits folded as an id; shorter words such as
// "cafe" or "add" are ordinary path segments.
const minHexID = 16

// AppendRoute appends path with identifier segments replaced by {id} (see
// isIDSegment), so /users/42/orders/7f3e... becomes /users/{id}/orders/{id}. The query
// string, if any, is dropped.
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

// isIDSegment reports whether a path segment is an identifier: all digits, a UUID, a
// run of at least 16 hex digits, or an opaque id as APIs mint them: a prefixed id
// (Stripe's cus_NffrFeUfNV2Hib, itm_7kHKluwL0W: a short word, an underscore and at
// least 8 letters and digits, with a digit or both cases), a ULID (26 characters of
// Crockford's base32), or a random token of at least 16 letters, digits, '-' and '_'
// holding both cases and two digits, and no four lower-case letters in a row, which
// words have. Left unfolded, every object is a route of its own:
// object_enumeration sees one object per route, and a popular item is a "quiet
// endpoint". Words are not folded, camelCase and snake_case ones included
// (getUserInfo, user_preferences, report-2024.pdf, oauth2callback): a route folded
// into {id} would merge endpoints.
func isIDSegment(s []byte) bool {
	if len(s) == 0 {
		return false
	}
	digits, hex := true, true
	var nDigit, nUpper, nLower, nOther int
	run, longest := 0, 0 // lower-case letters in a row
	under := -1          // the first '_'
	for i, c := range s {
		if c >= 'a' && c <= 'z' {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
		switch {
		case c >= '0' && c <= '9':
			nDigit++
			continue
		case c >= 'a' && c <= 'f':
			nLower++
		case c >= 'A' && c <= 'F':
			nUpper++
		case c >= 'g' && c <= 'z':
			nLower++
			hex = false
		case c >= 'G' && c <= 'Z':
			nUpper++
			hex = false
		case c == '_':
			if under < 0 {
				under = i
			}
			nOther++
			hex = false
		case c == '-':
			nOther++
			hex = false
		default:
			return false
		}
		digits = false
	}
	switch {
	case digits || hex && len(s) >= minHexID || isUUID(s):
		return true
	case under > 0 && under <= 10 && isPrefixedID(s[:under], s[under+1:]):
		return true
	case len(s) == 26 && nOther == 0 && nDigit > 0 && isULID(s):
		return true
	}
	return len(s) >= 16 && nDigit >= 2 && nUpper > 0 && nLower > 0 && longest < 4
}

// isPrefixedID reports whether prefix_tail is a prefixed id: prefix letters, tail at
// least 8 letters and digits with a digit or both cases.
func isPrefixedID(prefix, tail []byte) bool {
	for _, c := range prefix {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	if len(tail) < 8 {
		return false
	}
	var digit, upper, lower bool
	for _, c := range tail {
		switch {
		case c >= '0' && c <= '9':
			digit = true
		case c >= 'a' && c <= 'z':
			lower = true
		case c >= 'A' && c <= 'Z':
			upper = true
		default:
			return false
		}
	}
	return digit || upper && lower
}

// isULID reports whether s, 26 letters and digits, is in Crockford's base32 (no I, L,
// O or U), either case, its first character 0 to 7.
func isULID(s []byte) bool {
	if s[0] > '7' {
		return false
	}
	for _, c := range s {
		switch c | 0x20 {
		case 'i', 'l', 'o', 'u':
			return false
		}
	}
	return true
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

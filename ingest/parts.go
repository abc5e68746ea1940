package ingest

import "bytes"

// A joiner puts back together the lines a container runtime split. Both runtimes cut a
// line longer than 16 KiB into parts and log each part as a line of its own:
//
//	CRI (kubelet's /var/log/pods):  <time> <stream> P <part> ... <time> <stream> F <last part>
//	Docker json-file:               {"log":"<part>","stream":...}  (no "\n" at the end of a part)
//
// Parts of one stream follow each other; the other stream's lines may come in between.
// A joined record is one line of the same envelope holding the whole line (its size
// capped at max+1 bytes, so a runaway one is still rejected as oversized with its real
// size). Parts still open at the end of the input are handed out as they are: the record
// layer rejects such a part saying what it is.
type joiner struct {
	max  int
	open [2]*partLine // by stream: stdout, stderr
}

type partLine struct {
	num  int64  // line number of the first part
	buf  []byte // the record so far
	size int    // its real size
	tag  int    // CRI: where the tag is in buf, set to F when complete; -1 for Docker
	tail []byte // Docker: what follows the log string in the last part
}

type joinedLine struct {
	line []byte
	num  int64
	size int
}

const dockerPrefix = `{"log":"`

var dockerStream = []byte(`","stream":"`)

// join takes one line (read at line num, size bytes as read). It returns the record to
// hand on, if any: the line itself when it is no part, the joined record when line ends
// one, nothing when line opens or continues one, or is a runtime's line around a blank
// line (what a program printed as an empty line: no record, as a plain empty line is
// none).
func (j *joiner) join(line []byte, num int64, size int) (rec []byte, recNum int64, recSize int, ok bool) {
	stream, head, tagAt, content, tail, last, isPart := splitPart(line)
	if stream < 0 {
		return line, num, size, true
	}
	p := j.open[stream]
	if p == nil && !isPart {
		if last && blankContent(content) {
			return nil, 0, 0, false
		}
		return line, num, size, true // a whole line
	}
	if p == nil {
		p = &partLine{num: num, tag: tagAt}
		p.buf = append(p.buf, head...)
		j.open[stream] = p
	}
	p.size += len(content)
	if room := j.max + 1 - len(p.buf); room > 0 {
		p.buf = append(p.buf, content[:min(len(content), room)]...)
	}
	p.tail = tail
	if !last {
		return nil, 0, 0, false
	}
	j.open[stream] = nil
	return p.finish(true), p.num, p.size + len(head) + len(tail), true
}

// finish returns the record p holds, marked whole when it is.
func (p *partLine) finish(whole bool) []byte {
	if p.tag >= 0 {
		if whole {
			p.buf[p.tag] = 'F'
		}
		return p.buf
	}
	if whole && !bytes.HasPrefix(p.tail, []byte(`\n`)) {
		p.buf = append(p.buf, `\n`...) // the newline of the whole line (Docker's last part has it)
	}
	return append(p.buf, p.tail...)
}

// flush hands out the parts still open, each as the partial record it is.
func (j *joiner) flush() []joinedLine {
	var out []joinedLine
	for i, p := range j.open {
		if p != nil {
			out = append(out, joinedLine{line: p.finish(false), num: p.num, size: p.size})
			j.open[i] = nil
		}
	}
	return out
}

// splitPart reads a line of either runtime's log. stream is 0 (stdout) or 1 (stderr), or
// -1 when the line is neither kind. head is what comes before the line's content
// (CRI: "<time> <stream> <tags> ", with its tag letter at tagAt; Docker: `{"log":"`,
// tagAt -1), tail what follows it (Docker only). isPart reports a part that is not the
// last of its line, last that the line ends here.
func splitPart(line []byte) (stream int, head []byte, tagAt int, content, tail []byte, last, isPart bool) {
	if bytes.HasPrefix(line, []byte(dockerPrefix)) {
		i := bytes.Index(line, dockerStream)
		if i < 0 {
			return -1, nil, -1, nil, nil, false, false
		}
		content, tail = line[len(dockerPrefix):i], line[i:]
		stream = streamIndex(tail[len(dockerStream):])
		whole := len(content) >= 2 && content[len(content)-1] == 'n' && escapedAt(content, len(content)-1)
		return stream, line[:len(dockerPrefix)], -1, content, tail, whole, !whole
	}
	if len(line) == 0 || line[0] < '0' || line[0] > '9' {
		return -1, nil, -1, nil, nil, false, false
	}
	ts, streamTok, tag, rest, ok := splitCRI(line)
	if !ok {
		return -1, nil, -1, nil, nil, false, false
	}
	return streamIndex(streamTok), line[:len(line)-len(rest)], len(ts) + 1 + len(streamTok) + 1, rest, nil, tag == 'F', tag == 'P'
}

// blankContent reports whether a runtime's line holds nothing but white space, Docker's
// JSON escapes of it included.
func blankContent(content []byte) bool {
	for len(content) > 0 {
		switch {
		case content[0] == ' ' || content[0] == '\t' || content[0] == '\r' || content[0] == '\n':
			content = content[1:]
		case len(content) > 1 && content[0] == '\\' && (content[1] == 'n' || content[1] == 'r' || content[1] == 't'):
			content = content[2:]
		default:
			return false
		}
	}
	return true
}

func streamIndex(s []byte) int {
	switch {
	case bytes.HasPrefix(s, []byte("stdout")):
		return 0
	case bytes.HasPrefix(s, []byte("stderr")):
		return 1
	}
	return -1
}

// splitCRI splits a line of the CRI logging format, "<RFC 3339 time> <stdout|stderr>
// <tag>[:<tag>...] <content>", returning the first tag's letter (F or P).
func splitCRI(line []byte) (ts, stream []byte, tag byte, content []byte, ok bool) {
	ts, rest := cutToken(line)
	if _, err := parseISO(ts); err != nil {
		return nil, nil, 0, nil, false
	}
	stream, rest = cutToken(rest)
	if string(stream) != "stdout" && string(stream) != "stderr" {
		return nil, nil, 0, nil, false
	}
	tags, rest := cutToken(rest)
	if i := bytes.IndexByte(tags, ':'); i >= 0 {
		tags = tags[:i]
	}
	if len(tags) != 1 || (tags[0] != 'F' && tags[0] != 'P') {
		return nil, nil, 0, nil, false
	}
	return ts, stream, tags[0], rest, true
}

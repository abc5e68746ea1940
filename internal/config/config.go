// Package config holds what the configuration of every part of gatewatch shares, so
// that it means one thing everywhere, in the spirit of prometheus/common's config
// package:
//
//   - Error, the one error that checking a setting reports: the setting's key path
//     and, once the loader has found the key in the file, its position.
//   - SecretRef and Secret: where a credential comes from (a *_file or *_env
//     setting) and its value once loaded, which never prints.
//   - TLS, the tls block of every client, with the one rule for when TLS is on and
//     the one builder of its settings.
//   - SASL, Kafka's authentication block, for the source and the kafka receiver.
//
// It imports nothing of gatewatch, so every part may use it.
package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// An Error is one invalid setting. Path is the setting's dotted key path
// ("kafka.topics[1].format"): relative to its part's section where the part reports
// it, and prefixed with the section (Prefix) by whoever composes the parts. The
// loader fills File, Line and Column once it has found the key in the file.
type Error struct {
	Path   string
	Msg    string
	File   string
	Line   int // 0: not placed in a file
	Column int
}

// Errorf returns an *Error at path.
func Errorf(path, format string, args ...any) error {
	return &Error{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Error reads "file:line:col: path: msg", leaving out what is not known.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteString(":" + strconv.Itoa(e.Line))
			if e.Column > 0 {
				b.WriteString(":" + strconv.Itoa(e.Column))
			}
		}
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Key returns the dotted key path of the setting.
func (e *Error) Key() string { return e.Path }

// Join returns path joined below prefix: "ingest" and "kafka.tls" give
// "ingest.kafka.tls", "receivers" and "[0].name" give "receivers[0].name".
func Join(prefix, path string) string {
	switch {
	case prefix == "":
		return path
	case path == "":
		return prefix
	case path[0] == '[':
		return prefix + path
	}
	return prefix + "." + path
}

// Prefix returns err with every *Error in it placed below prefix. An error that is no
// *Error becomes one at prefix, so that every error has a key. nil stays nil.
func Prefix(prefix string, err error) error {
	es := Errors(err)
	if len(es) == 0 {
		return nil
	}
	out := make([]error, len(es))
	for i, e := range es {
		c := *e
		c.Path = Join(prefix, e.Path)
		out[i] = &c
	}
	if len(out) == 1 {
		return out[0]
	}
	return errors.Join(out...)
}

// Errors flattens err (errors.Join trees, and errors wrapping them) into its *Errors,
// in order. An error that is no *Error becomes one with no path.
func Errors(err error) []*Error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		return []*Error{e}
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []*Error
		for _, e := range j.Unwrap() {
			out = append(out, Errors(e)...)
		}
		return out
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return []*Error{e} // wrapped: the key is what places it
	}
	return []*Error{{Msg: err.Error()}}
}

package config

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// WholeNumbers returns an error for each number with a fraction (a YAML float) that
// node, a document or mapping decoded into v (a pointer to a struct), gives to an
// integer setting: yaml decodes 20.5 into an int as 20 without a word, and a
// threshold of 45.9 would fire at 45. Each error is placed at its value in node.
func WholeNumbers(node *yaml.Node, v any) []*Error {
	var errs []*Error
	wholeNumbers(node, reflect.TypeOf(v), "", &errs)
	return errs
}

var durationType = reflect.TypeFor[time.Duration]()

func wholeNumbers(n *yaml.Node, t reflect.Type, path string, errs *[]*Error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			wholeNumbers(c, t, path, errs)
		}
	case yaml.AliasNode:
		// An alias's target is checked where it is defined.
	case yaml.ScalarNode:
		// yaml refuses a float for a time.Duration itself; 401.0 decodes as 401.
		var f float64
		if n.Tag != "!!float" || t == durationType || t.Kind() < reflect.Int || t.Kind() > reflect.Uint64 ||
			(n.Decode(&f) == nil && f == math.Trunc(f)) {
			return
		}
		*errs = append(*errs, &Error{Path: path, Line: n.Line, Column: n.Column,
			Msg: fmt.Sprintf("must be a whole number, got %s", n.Value)})
	case yaml.SequenceNode:
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return
		}
		for i, c := range n.Content {
			wholeNumbers(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			switch t.Kind() {
			case reflect.Map:
				wholeNumbers(val, t.Elem(), Join(path, k.Value), errs)
			case reflect.Struct:
				if ft, ok := fieldType(t, k.Value); ok {
					wholeNumbers(val, ft, Join(path, k.Value), errs)
				}
			}
		}
	}
}

// fieldType returns the type of struct t's field that the YAML key name decodes into,
// inline structs' fields included, as yaml.v3 names them (the yaml tag's name, else
// the field's name in lower case).
func fieldType(t reflect.Type, name string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		key, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				if got, ok := fieldType(ft, name); ok {
					return got, true
				}
			}
			continue
		}
		if key == "" {
			key = strings.ToLower(f.Name)
		}
		if key == name {
			return f.Type, true
		}
	}
	return nil, false
}

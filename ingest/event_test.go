package ingest

import (
	"reflect"
	"testing"
	"unsafe"
)

// TestEventClone: every string field of a clone survives the reuse of the buffer the
// original's strings point into, whatever fields Event gains.
func TestEventClone(t *testing.T) {
	buf := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	var ev Event
	v := reflect.ValueOf(&ev).Elem()
	var want []string
	for i := range v.NumField() {
		if f := v.Field(i); f.Kind() == reflect.String {
			s := unsafe.String(&buf[i], 4) // a parser's string: a window on its buffer
			f.SetString(s)
			want = append(want, string(buf[i:i+4]))
		}
	}
	c := ev.Clone()
	for i := range buf {
		buf[i] = '-' // the source reuses the buffer
	}
	cv := reflect.ValueOf(c)
	j := 0
	for i := range cv.NumField() {
		if f := cv.Field(i); f.Kind() == reflect.String {
			if got := f.String(); got != want[j] {
				t.Errorf("%s = %q after the buffer's reuse, want %q: Clone does not copy it", cv.Type().Field(i).Name, got, want[j])
			}
			j++
		}
	}
}

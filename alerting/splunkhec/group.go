package splunkhec

import (
	"bytes"
	"context"
	"fmt"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// maxGroupBody bounds one request of a group: Splunk's max_content_length is 800 MB
// today but was 1 MB in older releases; a group larger than this (a thousand verbose
// alerts) goes in as few requests of this size as it takes.
const maxGroupBody = 1 << 20

var _ alerting.GroupReceiver = (*Receiver)(nil)

// NotifyGroup sends an ungrouped delivery as Notify does, in requests of batch_size
// events, and a group in one request (up to 1 MiB), whatever batch_size says: each
// incident is still its own event, with the group's key in the event's "group" field,
// so a search can gather a storm and still reach every incident's evidence.
func (r *Receiver) NotifyGroup(ctx context.Context, g alerting.Group) (bool, error) {
	if g.Key == "" {
		return r.Notify(ctx, g.Alerts)
	}
	var body []byte
	start := 0
	for i := range g.Alerts {
		n := len(body)
		var err error
		if body, err = r.appendGroupEvent(body, &g.Alerts[i], g.Key); err != nil {
			return false, fmt.Errorf("splunkhec: receiver %s: encode alert %s: %w", r.name, g.Alerts[i].ID, err)
		}
		if len(body) > maxGroupBody && n > 0 {
			if retry, err := r.post(ctx, body[:n]); err != nil {
				return retry, fmt.Errorf("splunkhec: receiver %s: group %s, events %d-%d of %d: %w", r.name, g.Key, start+1, i, len(g.Alerts), err)
			}
			body = append(body[:0], body[n:]...)
			start = i
		}
	}
	if retry, err := r.post(ctx, body); err != nil {
		return retry, fmt.Errorf("splunkhec: receiver %s: group %s, events %d-%d of %d: %w", r.name, g.Key, start+1, len(g.Alerts), len(g.Alerts), err)
	}
	return false, nil
}

// appendGroupEvent appends a's event with "group":key after its schema_version.
func (r *Receiver) appendGroupEvent(dst []byte, a *detectors.Alert, key string) ([]byte, error) {
	start := len(dst)
	dst, err := r.AppendEvent(dst, a)
	if err != nil {
		return dst, err
	}
	marker := []byte(`"schema_version":"` + SchemaVersion + `",`)
	ev := dst[start:]
	i := bytes.Index(ev, marker)
	if i < 0 {
		return dst, fmt.Errorf("event without its schema_version")
	}
	insert := appendField(nil, "group", key)[1:] // without the leading comma
	insert = append(insert, ',')
	at := start + i + len(marker)
	dst = append(dst, insert...)
	copy(dst[at+len(insert):], dst[at:len(dst)-len(insert)])
	copy(dst[at:], insert)
	return dst, nil
}

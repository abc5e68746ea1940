package cluster

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unsafe"

	"github.com/cespare/xxhash/v2"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// Config is the cluster section of gatewatch.yaml.
type Config struct {
	InternalTopicPrefix string `yaml:"internal_topic_prefix"`
	// Partitions of each internal topic: fixed for the life of a deployment, since it
	// decides which task owns which key.
	Partitions int `yaml:"partitions"`
}

// A Kind is what one internal topic is keyed by.
type Kind uint8

// The internal topics, one per key the detectors key by.
const (
	Client Kind = iota // client key, else client IP
	Token              // token fingerprint
	Route              // method and route template
	IP                 // client IP, else client key
	numKinds
)

// kindSpec is what travels on one kind's topic: the detectors keyed by it, and the
// fields of an event those detectors read (nothing else is written, which is most of
// what keeps the internal records small).
type kindSpec struct {
	name      string
	detectors []string
	fields    fieldSet
	key       func(ev *ingest.Event, buf *keyBuf) string // the detectors' key, which may point into buf
}

var kinds = [numKinds]kindSpec{
	Client: {
		name: "client",
		detectors: []string{detectors.NewCountry, detectors.ForbiddenBurst, detectors.ObjectEnumeration,
			detectors.PrivilegeAnomaly, detectors.ClientVolumeSpike},
		fields: fClientKey | fClientIP | fCountry | fMethod | fRoute | fPath | fStatus | fRequestID,
		key: func(ev *ingest.Event, buf *keyBuf) string {
			k, _ := detectors.ClientOf(ev, &buf.addr)
			return k
		},
	},
	Token: {
		name:      "token",
		detectors: []string{detectors.TokenReuse},
		fields:    fTokenFP | fDevice | fClientIP | fCountry | fRoute,
		key:       func(ev *ingest.Event, _ *keyBuf) string { return ev.TokenFP },
	},
	IP: {
		name:      "ip",
		detectors: []string{detectors.AuthFailureSpray, detectors.RouteScan},
		fields:    fClientIP | fClientKey | fTokenFP | fMethod | fRoute | fPath | fStatus | fAction | fRequestID | fUserAgent,
		key: func(ev *ingest.Event, buf *keyBuf) string {
			k, _ := detectors.HostOf(ev, &buf.addr)
			return k
		},
	},
	Route: {
		name:      "route",
		detectors: []string{detectors.QuietEndpointSpike},
		fields:    fMethod | fRoute | fClientKey | fClientIP | fPath | fStatus | fRequestID,
		key: func(ev *ingest.Event, buf *keyBuf) string {
			if ev.Route == "" {
				return ""
			}
			buf.b = append(append(append(buf.b[:0], ev.Method...), ' '), ev.Route...)
			return unsafe.String(unsafe.SliceData(buf.b), len(buf.b))
		},
	},
}

// A keyBuf is where a kind's key function writes a key it builds, valid until its next
// use: keys are only hashed, and building them allocated for every event.
type keyBuf struct {
	addr detectors.AddrBuf
	b    []byte
}

func (k Kind) String() string {
	if k < numKinds {
		return kinds[k].name
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Topic returns the name of kind k's internal topic.
func (c Config) Topic(k Kind) string { return c.InternalTopicPrefix + "-" + k.String() }

// kindOf returns the kind whose topic is name.
func (c Config) kindOf(name string) (Kind, bool) {
	for k := range numKinds {
		if c.Topic(k) == name {
			return k, true
		}
	}
	return 0, false
}

// Validate checks the section.
func (c Config) Validate() error {
	var errs []error
	if c.InternalTopicPrefix == "" {
		errs = append(errs, errors.New("cluster: internal_topic_prefix is empty"))
	}
	if c.Partitions < 1 {
		errs = append(errs, fmt.Errorf("cluster: partitions must be positive, got %d", c.Partitions))
	}
	return errors.Join(errs...)
}

// partitionOf is the internal partition of key among n: a fixed hash, so that every
// replica and every restart sends a key to the same task.
func partitionOf(key string, n int) int { return int(xxhash.Sum64String(key) % uint64(n)) }

// detectorFields returns, in config order, the detector name (its YAML key) and its
// common settings of every detector in cfg: the fields of detectors.Config that embed
// detectors.Common.
func detectorFields(cfg *detectors.Config) (names []string, commons []*detectors.Common) {
	v := reflect.ValueOf(cfg).Elem()
	common := reflect.TypeFor[detectors.Common]()
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Kind() != reflect.Struct {
			continue
		}
		c, ok := f.Type().FieldByName("Common")
		if !ok || c.Type != common || !c.Anonymous {
			continue
		}
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
		names = append(names, name)
		commons = append(commons, f.FieldByName("Common").Addr().Interface().(*detectors.Common))
	}
	return names, commons
}

// CheckDetectors reports the enabled detectors that no internal topic carries: scale-out
// cannot yet run them, and running without them would be silence that looks like
// success.
func CheckDetectors(cfg detectors.Config) error {
	names, commons := detectorFields(&cfg)
	var missing []string
	for i, n := range names {
		if !commons[i].Enabled {
			continue
		}
		if !slices.ContainsFunc(kinds[:], func(s kindSpec) bool { return slices.Contains(s.detectors, n) }) {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("cluster: detectors %s are not yet keyed by any internal topic; disable them (enabled: false) to run with a cluster section", strings.Join(missing, ", "))
	}
	return nil
}

// taskConfig is cfg with only the detectors of kind k enabled.
func taskConfig(cfg detectors.Config, k Kind) detectors.Config {
	names, commons := detectorFields(&cfg)
	for i, n := range names {
		if !slices.Contains(kinds[k].detectors, n) {
			commons[i].Enabled = false
		}
	}
	return cfg
}

package alerting

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gatewatch/gatewatch/detectors"
)

// A SilenceRecord is a silence a person made while gatewatch runs (from the console,
// or a Slack button), as the store keeps it. Unlike the silences of the config file it
// has an author and an id, and can be ended early; a record is never deleted, so the
// console can show who silenced what, and until when.
type SilenceRecord struct {
	ID        string    `json:"id"`
	Match     Matcher   `json:"match"`
	Comment   string    `json:"comment"`
	CreatedBy string    `json:"created_by"` // who: a console user, "slack:<user id>"
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	// ExpiredBy is who ended the silence before its expiry (Expires is then when).
	ExpiredBy string `json:"expired_by,omitempty"`
	// Updated orders versions of one record: the store keeps the latest.
	Updated time.Time `json:"updated"`
}

// Active reports whether the silence is in force at now.
func (s *SilenceRecord) Active(now time.Time) bool { return now.Before(s.Expires) }

// Describe says what the silence mutes, for lists and the audit log.
func (s *SilenceRecord) Describe() string {
	var parts []string
	add := func(name string, vals []string) {
		if len(vals) > 0 {
			parts = append(parts, name+"="+strings.Join(vals, "|"))
		}
	}
	add("detector", s.Match.Detector)
	sev := make([]string, len(s.Match.Severity))
	for i, v := range s.Match.Severity {
		sev[i] = string(v)
	}
	add("severity", sev)
	add("key", s.Match.Key)
	for _, k := range slices.Sorted(maps.Keys(s.Match.Labels)) {
		parts = append(parts, "labels."+k+"="+s.Match.Labels[k])
	}
	return strings.Join(parts, " ")
}

// SilenceStore keeps silence records across restarts; the store implements it
// (store.Local, store.ClickHouse).
type SilenceStore interface {
	// LoadSilences returns every record, the latest version of each.
	LoadSilences(ctx context.Context) ([]SilenceRecord, error)
	// SaveSilence stores a version of a record; the one with the latest Updated wins.
	SaveSilence(ctx context.Context, s SilenceRecord) error
}

// Limits of run-time silences: every one is checked against every alert, and each is
// typed by a person, so far fewer are ever needed.
const (
	MaxActiveSilences  = 1000
	maxSilenceComment  = 1000
	maxSilenceDuration = 90 * 24 * time.Hour
	// silenceMemory is how long an ended silence stays listed in memory; the store
	// keeps it for its retention.
	silenceMemory = 30 * 24 * time.Hour
)

// Silences are the run-time silences of a process, shared by every Router it builds
// (a reload builds a new Router over the same Silences), so that a silence made in the
// console or from Slack mutes the next alert at once, and keeps muting after a reload
// or a restart. Create and Expire write to the SilenceStore before they change what
// the Routers see. Replicas of a cluster that share one store see each other's
// silences when they Load again: the pipeline does so every few seconds. It is safe
// for concurrent use.
type Silences struct {
	store SilenceStore
	now   func() time.Time

	mu  sync.RWMutex
	all map[string]SilenceRecord
}

// ErrSilenceNotFound is returned by Expire for an id no silence has.
var ErrSilenceNotFound = errors.New("alerting: no such silence")

// NewSilences returns the silences kept in st, none loaded yet: Load reads them.
// now nil: time.Now.
func NewSilences(st SilenceStore, now func() time.Time) (*Silences, error) {
	if st == nil {
		return nil, errors.New("alerting: NewSilences needs a SilenceStore")
	}
	if now == nil {
		now = time.Now
	}
	return &Silences{store: st, now: now, all: map[string]SilenceRecord{}}, nil
}

// OpenSilences returns the silences kept in st, loaded. now nil: time.Now.
func OpenSilences(ctx context.Context, st SilenceStore, now func() time.Time) (*Silences, error) {
	s, err := NewSilences(st, now)
	if err != nil {
		return nil, err
	}
	return s, s.Load(ctx)
}

// Load reads the records of the store and merges them with those in memory, the
// latest version of each winning; it drops none, so a silence whose Create is still
// writing it stays in force. A pipeline whose store is down at start-up calls it again
// until it succeeds, while the silences made meanwhile are in force; a replica that
// shares its store with others calls it periodically to pick up the silences and
// expiries they made.
func (s *Silences) Load(ctx context.Context) error {
	recs, err := s.store.LoadSilences(ctx)
	if err != nil {
		return fmt.Errorf("alerting: loading silences: %w", err)
	}
	cutoff := s.now().Add(-silenceMemory)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		if r.Expires.After(cutoff) {
			s.keep(r)
		}
	}
	return nil
}

// keep puts r in memory unless a later version of it is there; s.mu is held.
func (s *Silences) keep(r SilenceRecord) {
	if old, ok := s.all[r.ID]; !ok || r.Updated.After(old.Updated) {
		s.all[r.ID] = r
	}
}

// Create validates rec, fills its id (when empty), Created and Updated, stores it and
// puts it in force. An id that names an existing silence returns that silence
// unchanged: a request repeated (a double click, a replayed Slack action with an id
// derived from it) creates one silence.
func (s *Silences) Create(ctx context.Context, rec SilenceRecord) (SilenceRecord, error) {
	now := s.now()
	if rec.ID != "" {
		s.mu.RLock()
		old, ok := s.all[rec.ID]
		s.mu.RUnlock()
		if ok {
			return old, nil
		}
	}
	if err := s.check(&rec, now); err != nil {
		return SilenceRecord{}, err
	}
	if rec.ID == "" {
		var b [12]byte
		_, _ = rand.Read(b[:]) // crypto/rand never fails
		rec.ID = hex.EncodeToString(b[:])
	}
	rec.Created, rec.Updated, rec.ExpiredBy = now.UTC(), now.UTC(), ""
	rec.Expires = rec.Expires.UTC()
	if err := s.store.SaveSilence(ctx, rec); err != nil {
		return SilenceRecord{}, fmt.Errorf("alerting: saving silence: %w", err)
	}
	s.mu.Lock()
	s.keep(rec)
	s.mu.Unlock()
	return rec, nil
}

// check says what is wrong with a new silence, in words for the person who made it.
func (s *Silences) check(rec *SilenceRecord, now time.Time) error {
	var errs []error
	m := &rec.Match
	if len(m.Detector)+len(m.Severity)+len(m.Key)+len(m.Labels) == 0 {
		errs = append(errs, errors.New("a silence must match something: an empty one would mute every alert"))
	}
	if err := errors.Join(m.validate("match")...); err != nil {
		errs = append(errs, err)
	}
	switch {
	case !rec.Expires.After(now):
		errs = append(errs, errors.New("expires must be in the future"))
	case rec.Expires.Sub(now) > maxSilenceDuration:
		errs = append(errs, fmt.Errorf("a silence lasts at most %s", maxSilenceDuration))
	}
	if strings.TrimSpace(rec.Comment) == "" {
		errs = append(errs, errors.New("say why in the comment"))
	}
	if utf8.RuneCountInString(rec.Comment) > maxSilenceComment || !utf8.ValidString(rec.Comment) {
		errs = append(errs, fmt.Errorf("the comment must be valid text of at most %d characters", maxSilenceComment))
	}
	if rec.CreatedBy == "" {
		errs = append(errs, errors.New("a silence needs its author"))
	}
	if active := s.inForce(now); active >= MaxActiveSilences {
		errs = append(errs, fmt.Errorf("%d silences are in force already; expire some first", active))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("alerting: silence refused: %w", err)
	}
	return nil
}

// Expire ends silence id now, by who; a silence already over is returned unchanged.
func (s *Silences) Expire(ctx context.Context, id, by string) (SilenceRecord, error) {
	now := s.now().UTC()
	s.mu.RLock()
	rec, ok := s.all[id]
	s.mu.RUnlock()
	if !ok {
		return SilenceRecord{}, ErrSilenceNotFound
	}
	if !rec.Active(now) {
		return rec, nil
	}
	// The new version must win over the one it ends even when it was made on a
	// replica whose clock is behind the creator's: the store keeps the latest Updated.
	updated := now
	if !updated.After(rec.Updated) {
		updated = rec.Updated.Add(time.Millisecond)
	}
	rec.Expires, rec.ExpiredBy, rec.Updated = now, by, updated
	if err := s.store.SaveSilence(ctx, rec); err != nil {
		return SilenceRecord{}, fmt.Errorf("alerting: saving silence: %w", err)
	}
	s.mu.Lock()
	s.keep(rec)
	s.mu.Unlock()
	return rec, nil
}

// Get returns silence id.
func (s *Silences) Get(id string) (SilenceRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.all[id]
	return r, ok
}

// List returns the silences in force (soonest to expire first), then those ended
// within the last 30 days (latest first).
func (s *Silences) List() []SilenceRecord {
	now := s.now()
	s.mu.Lock()
	out := make([]SilenceRecord, 0, len(s.all))
	for id, r := range s.all {
		if !r.Expires.After(now.Add(-silenceMemory)) {
			delete(s.all, id)
			continue
		}
		out = append(out, r)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b SilenceRecord) int {
		aa, ba := a.Active(now), b.Active(now)
		switch {
		case aa && !ba:
			return -1
		case ba && !aa:
			return 1
		case aa:
			return cmp.Or(a.Expires.Compare(b.Expires), strings.Compare(a.ID, b.ID))
		}
		return cmp.Or(b.Expires.Compare(a.Expires), strings.Compare(a.ID, b.ID))
	})
	return out
}

// InForce returns how many silences are in force now.
func (s *Silences) InForce() int { return s.inForce(s.now()) }

func (s *Silences) inForce(now time.Time) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, r := range s.all {
		if r.Active(now) {
			n++
		}
	}
	return n
}

// Muting returns the silence in force at now that mutes a, if any.
func (s *Silences) Muting(a *detectors.Alert, now time.Time) (SilenceRecord, bool) {
	if s == nil {
		return SilenceRecord{}, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, r := range s.all {
		if r.Active(now) && r.Match.Matches(a) {
			return r, true
		}
	}
	return SilenceRecord{}, false
}

// An Ack is an analyst's acknowledgement of an incident: someone is on it.
type Ack struct {
	ID  string    `json:"id"`  // the alert id
	By  string    `json:"by"`  // a console user, or "slack:<user id>"
	At  time.Time `json:"at"`  // wall clock
	Via string    `json:"via"` // console or slack
}

// AckStore keeps acknowledgements across restarts; the store implements it.
type AckStore interface {
	// LoadAcks returns the acknowledgements made at or after since.
	LoadAcks(ctx context.Context, since time.Time) ([]Ack, error)
	// SaveAck stores an acknowledgement; the first one of an alert id wins.
	SaveAck(ctx context.Context, a Ack) error
}

// AckLookup tells who acknowledged an incident; receivers that show it (Slack) get
// one with each Group.
type AckLookup interface {
	Ack(id string) (Ack, bool)
}

// Bounds of the acknowledgements kept in memory: an incident is acknowledged while it
// is open, and incidents do not stay open for a month.
const (
	ackMemory = 30 * 24 * time.Hour
	maxAcks   = 100_000
	// ackOverlap is how far before the previous load a later one reads again: an
	// acknowledgement carries the clock of the replica that made it, and reaches the
	// store up to a write timeout after that, so one stamped before the previous load
	// may not have been there yet. It covers both, and clocks minutes apart.
	ackOverlap = 5 * time.Minute
)

// Acks are the acknowledgements of a process, loaded from and written to an AckStore.
// The first acknowledgement of an incident stands: acknowledging again (a second
// click, a replayed Slack action) changes nothing. It is safe for concurrent use.
type Acks struct {
	store AckStore
	now   func() time.Time

	mu     sync.RWMutex
	all    map[string]Ack
	loaded time.Time // when the last Load that succeeded began; zero before
}

var _ AckLookup = (*Acks)(nil)

// NewAcks returns the acknowledgements kept in st, none loaded yet: Load reads them.
// now nil: time.Now.
func NewAcks(st AckStore, now func() time.Time) (*Acks, error) {
	if st == nil {
		return nil, errors.New("alerting: NewAcks needs an AckStore")
	}
	if now == nil {
		now = time.Now
	}
	return &Acks{store: st, now: now, all: map[string]Ack{}}, nil
}

// OpenAcks returns the acknowledgements kept in st, those of the last 30 days loaded.
// now nil: time.Now.
func OpenAcks(ctx context.Context, st AckStore, now func() time.Time) (*Acks, error) {
	a, err := NewAcks(st, now)
	if err != nil {
		return nil, err
	}
	return a, a.Load(ctx)
}

// Load reads the acknowledgements of the last 30 days from the store and merges them
// with those in memory, the first of each alert standing. Once a Load succeeded, the
// next ones read only what was made since shortly before it (ackOverlap): that is how
// a replica sharing its store with others picks up their acknowledgements, every few
// seconds, without reading a month of them each time.
func (a *Acks) Load(ctx context.Context) error {
	now := a.now()
	since := now.Add(-ackMemory)
	a.mu.RLock()
	if !a.loaded.IsZero() {
		since = later(since, a.loaded.Add(-ackOverlap))
	}
	a.mu.RUnlock()
	as, err := a.store.LoadAcks(ctx, since)
	if err != nil {
		return fmt.Errorf("alerting: loading acknowledgements: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, x := range as {
		if old, ok := a.all[x.ID]; !ok || x.At.Before(old.At) {
			a.all[x.ID] = x
		}
	}
	if len(a.all) > maxAcks {
		a.prune()
	}
	a.loaded = later(a.loaded, now)
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Acknowledge records that by acknowledged incident id, via the console or Slack, and
// returns the acknowledgement that stands, and whether it is this one.
func (a *Acks) Acknowledge(ctx context.Context, id, by, via string) (Ack, bool, error) {
	if id == "" || by == "" {
		return Ack{}, false, errors.New("alerting: an acknowledgement needs the alert id and who")
	}
	a.mu.RLock()
	old, ok := a.all[id]
	a.mu.RUnlock()
	if ok {
		return old, false, nil
	}
	ack := Ack{ID: id, By: by, At: a.now().UTC(), Via: via}
	if err := a.store.SaveAck(ctx, ack); err != nil {
		return Ack{}, false, fmt.Errorf("alerting: saving acknowledgement: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.all[id]; ok { // a concurrent click won
		return old, false, nil
	}
	if len(a.all) >= maxAcks {
		a.prune()
	}
	a.all[id] = ack
	return ack, true, nil
}

// prune drops the acknowledgements older than ackMemory, and if that is not enough,
// the oldest half; a.mu is held.
func (a *Acks) prune() {
	cutoff := a.now().Add(-ackMemory)
	for id, x := range a.all {
		if x.At.Before(cutoff) {
			delete(a.all, id)
		}
	}
	if len(a.all) < maxAcks {
		return
	}
	ats := make([]time.Time, 0, len(a.all))
	for _, x := range a.all {
		ats = append(ats, x.At)
	}
	slices.SortFunc(ats, time.Time.Compare)
	median := ats[len(ats)/2]
	for id, x := range a.all {
		if x.At.Before(median) {
			delete(a.all, id)
		}
	}
}

// Ack returns the acknowledgement of incident id.
func (a *Acks) Ack(id string) (Ack, bool) {
	if a == nil {
		return Ack{}, false
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	x, ok := a.all[id]
	return x, ok
}

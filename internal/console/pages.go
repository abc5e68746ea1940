package console

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/chart"
	"github.com/gatewatch/gatewatch/store"
)

// page is what every template gets.
type page struct {
	Title string
	Nav   string // the active section
	Who   string
	CSRF  string
	Flash string // what the last change did, or why it failed
	Error string
	Now   time.Time
	// Replica and Sync are Options.Replica and Options.Sync.
	Replica bool
	Sync    time.Duration
	Data    any
}

var funcs = template.FuncMap{
	"utc": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"iso": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return humanDuration(now.Sub(t))
	},
	"join": strings.Join,
}

// pageNames are the templates, each rendered inside layout.html.
var pageNames = []string{"login", "incidents", "incident", "silences", "receivers", "health", "audit"}

func parsePages() (map[string]*template.Template, error) {
	out := map[string]*template.Template{}
	for _, n := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFiles, "templates/layout.html", "templates/"+n+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", n, err)
		}
		out[n] = t
	}
	return out, nil
}

// render writes page name; the page is rendered to memory first, so a template error
// is a clean 500 rather than half a page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, name string, status int, pg page) {
	pg.Now = s.o.Now().UTC()
	pg.Replica, pg.Sync = s.o.Replica, s.o.Sync
	if q := r.URL.Query(); pg.Flash == "" && q.Get("done") != "" && s.auth.flashOK(q.Get("done"), q.Get("sig")) {
		pg.Flash = q.Get("done")
	}
	var b bytes.Buffer
	if err := s.pages[name].Execute(&b, pg); err != nil {
		s.log.Error("console page failed", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

// back redirects after a change, with what was done, signed: the page shows only a
// message the console put in its own redirect.
func (s *Server) back(w http.ResponseWriter, r *http.Request, to, done string) {
	http.Redirect(w, r, to+sep(to)+"done="+url.QueryEscape(done)+"&sig="+s.auth.flashSig(done), http.StatusSeeOther)
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, p principal, status int, err error) {
	s.log.Warn("console request failed", "who", p.who, "path", r.URL.Path, "err", err)
	http.Error(w, err.Error(), status)
}

// Login.

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, "login", http.StatusOK, page{Title: "Log in", Data: loginData{Next: safeNext(r.URL.Query().Get("next")), Users: len(s.auth.cr.users) > 0}})
}

type loginData struct {
	Next  string
	Users bool
}

func (s *Server) loginPost(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if !sameOrigin(r) {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	next := safeNext(r.PostFormValue("next"))
	ld := loginData{Next: next, Users: len(s.auth.cr.users) > 0}
	client := s.auth.client(r)
	if retry := s.auth.limited(client); retry > 0 {
		tooMany(w, retry)
		return
	}
	id, sess := s.auth.login(r.PostFormValue("user"), r.PostFormValue("secret"))
	if sess == nil {
		s.auth.failed(client)
		s.log.Warn("console login failed", "user", cleanUser(r.PostFormValue("user")), "remote", r.RemoteAddr, "client", client.String())
		s.render(w, r, "login", http.StatusUnauthorized, page{Title: "Log in", Error: "Those credentials are not valid.", Data: ld})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, Expires: sess.expires})
	s.log.Info("console login", "who", sess.who, "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, p principal) {
	s.auth.logout(r)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	s.log.Info("console logout", "who", p.who)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// safeNext keeps a redirect target on the console: a path, never another host.
func safeNext(n string) string {
	if !strings.HasPrefix(n, "/") || strings.HasPrefix(n, "//") || strings.HasPrefix(n, "/\\") || strings.ContainsAny(n, "\r\n") {
		return "/incidents"
	}
	return n
}

func acceptsHTML(r *http.Request) bool {
	a := r.Header.Get("Accept")
	return a == "" || strings.Contains(a, "text/html") || strings.Contains(a, "*/*")
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

// Incidents.

// incidentRow is one incident as the list shows it.
type incidentRow struct {
	store.AlertRecord
	Open     bool
	Ack      *alerting.Ack
	Silenced *alerting.SilenceRecord
}

type incidentsData struct {
	Rows       []incidentRow
	Detectors  []string
	Severities []detectors.Severity
	Filter     filter
	Windows    []string
	Truncated  int
}

// filter is the incident list's query: detector, severity, key, time window, state.
type filter struct {
	Detector string
	Severity string
	Key      string
	Since    string // a window ending now: 1h, 6h, 24h, 7d
	From, To string // or a range, RFC 3339 or 2006-01-02T15:04 (UTC)
	State    string // open (default) or all
}

var windows = map[string]time.Duration{"1h": time.Hour, "6h": 6 * time.Hour, "24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "30d": 30 * 24 * time.Hour}

// maxListed bounds the incident list.
const maxListed = 500

func parseFilter(q url.Values) (filter, error) {
	f := filter{Detector: q.Get("detector"), Severity: q.Get("severity"), Key: strings.TrimSpace(q.Get("key")),
		Since: q.Get("since"), From: q.Get("from"), To: q.Get("to"), State: q.Get("state")}
	if f.Since == "" {
		f.Since = "24h"
	}
	if f.State == "" {
		f.State = "open"
	}
	var errs []error
	if f.Detector != "" && !slices.Contains(detectors.Names, f.Detector) {
		errs = append(errs, fmt.Errorf("unknown detector %q", f.Detector))
	}
	if f.Severity != "" && !detectors.Severity(f.Severity).Valid() {
		errs = append(errs, fmt.Errorf("unknown severity %q", f.Severity))
	}
	if _, ok := windows[f.Since]; !ok {
		errs = append(errs, fmt.Errorf("unknown window %q", f.Since))
	}
	if f.State != "open" && f.State != "all" {
		errs = append(errs, fmt.Errorf("state must be open or all"))
	}
	if len(f.Key) > 256 {
		errs = append(errs, errors.New("key too long"))
	}
	return f, errors.Join(errs...)
}

// window returns the time range the filter asks for.
func (f *filter) window(now time.Time) (time.Time, time.Time, error) {
	from, to := now.Add(-windows[f.Since]), now.Add(time.Hour)
	var err error
	if f.From != "" {
		if from, err = parseTime(f.From); err != nil {
			return from, to, fmt.Errorf("from: %w", err)
		}
	}
	if f.To != "" {
		if to, err = parseTime(f.To); err != nil {
			return from, to, fmt.Errorf("to: %w", err)
		}
	}
	if !to.After(from) {
		return from, to, errors.New("to must be after from")
	}
	return from, to, nil
}

func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time (2006-01-02T15:04, UTC)", s)
}

func (s *Server) incidents(w http.ResponseWriter, r *http.Request, p principal) {
	pg := page{Title: "Incidents", Nav: "incidents", Who: p.who, CSRF: p.csrf}
	f, err := parseFilter(r.URL.Query())
	data := incidentsData{Detectors: detectors.Names, Severities: []detectors.Severity{"critical", "high", "medium", "low"},
		Filter: f, Windows: []string{"1h", "6h", "24h", "7d", "30d"}}
	pg.Data = &data
	if err != nil {
		pg.Error = err.Error()
		s.render(w, r, "incidents", http.StatusBadRequest, pg)
		return
	}
	now := s.o.Now()
	from, to, err := f.window(now)
	if err != nil {
		pg.Error = err.Error()
		s.render(w, r, "incidents", http.StatusBadRequest, pg)
		return
	}
	recs, err := s.o.Store.Alerts(r.Context(), from, to, f.Detector)
	if err != nil {
		s.log.Warn("console: reading the alert history failed", "err", err)
		pg.Error = "The alert history cannot be read now: " + err.Error()
		s.render(w, r, "incidents", http.StatusServiceUnavailable, pg)
		return
	}
	resolve := s.o.Alerting().ResolveTimeout
	for _, rec := range recs {
		a := &rec.Alert
		if f.Severity != "" && string(a.Severity) != f.Severity {
			continue
		}
		if f.Key != "" && !strings.Contains(a.Key, f.Key) {
			continue
		}
		row := incidentRow{AlertRecord: rec, Open: now.Sub(a.LastSeen) < resolve}
		if f.State == "open" && !row.Open {
			continue
		}
		if ack, ok := s.o.Acks.Ack(a.ID); ok {
			row.Ack = &ack
		}
		if sl, ok := s.o.Silences.Muting(a, now); ok {
			row.Silenced = &sl
		}
		data.Rows = append(data.Rows, row)
	}
	slices.SortFunc(data.Rows, func(a, b incidentRow) int {
		return cmp.Or(b.Alert.LastSeen.Compare(a.Alert.LastSeen), strings.Compare(a.Alert.ID, b.Alert.ID))
	})
	if len(data.Rows) > maxListed {
		data.Truncated = len(data.Rows) - maxListed
		data.Rows = data.Rows[:maxListed]
	}
	s.render(w, r, "incidents", http.StatusOK, pg)
}

type incidentData struct {
	incidentRow
	Evidence  []field
	Silences  []alerting.SilenceRecord // in force, matching
	Durations []string
	Route     bool // the chart is of a route
}

type field struct{ Name, Value string }

func (s *Server) incident(w http.ResponseWriter, r *http.Request, p principal) {
	id := r.PathValue("id")
	rec, ok, err := s.o.Store.AlertByID(r.Context(), id)
	if err != nil {
		s.fail(w, r, p, http.StatusServiceUnavailable, fmt.Errorf("the alert history cannot be read now: %w", err))
		return
	}
	if !ok {
		http.Error(w, "no such incident", http.StatusNotFound)
		return
	}
	now := s.o.Now()
	d := incidentData{incidentRow: incidentRow{AlertRecord: rec, Open: now.Sub(rec.Alert.LastSeen) < s.o.Alerting().ResolveTimeout},
		Evidence: evidenceFields(&rec.Alert.Evidence), Durations: slices.Collect(func(yield func(string) bool) {
			for _, d := range silenceDurations {
				if !yield(d.name) {
					return
				}
			}
		})}
	_, d.Route = rateQuery(&rec.Alert)
	if ack, ok := s.o.Acks.Ack(id); ok {
		d.Ack = &ack
	}
	for _, sl := range s.o.Silences.List() {
		if sl.Active(now) && sl.Match.Matches(&rec.Alert) {
			d.Silences = append(d.Silences, sl)
		}
	}
	s.render(w, r, "incident", http.StatusOK, page{Title: rec.Alert.Detector + " " + rec.Alert.Key, Nav: "incidents", Who: p.who, CSRF: p.csrf, Data: &d})
}

// evidenceFields lists what the alert's evidence holds, by its JSON names, in order.
func evidenceFields(e *detectors.Evidence) []field {
	b, err := json.Marshal(e)
	if err != nil {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var out []field
	// Walk the object's keys in the order the struct writes them.
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return out
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return out
		}
		out = append(out, field{Name: fmt.Sprint(k), Value: jsonValue(v)})
	}
	return out
}

// jsonValue shows a JSON value for a person: strings without quotes, lists joined.
func jsonValue(v json.RawMessage) string {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	var list []json.RawMessage
	if json.Unmarshal(v, &list) == nil {
		parts := make([]string, len(list))
		for i, x := range list {
			parts[i] = jsonValue(x)
		}
		return strings.Join(parts, ", ")
	}
	return string(v)
}

// rateQuery is the traffic an alert's chart shows: its route for a route's alert (the
// key is the method and route), else its key.
func rateQuery(a *detectors.Alert) (store.RateQuery, bool) {
	e := &a.Evidence
	if e.Route != "" && a.Key == strings.TrimSpace(e.Method+" "+e.Route) {
		return store.RateQuery{Method: e.Method, Route: e.Route}, true
	}
	return store.RateQuery{Key: a.Key}, false
}

// chartMargin is how much of the traffic before and after the incident the chart shows.
const chartMargin = 30 * time.Minute

func (s *Server) chart(w http.ResponseWriter, r *http.Request, p principal) {
	rec, ok, err := s.o.Store.AlertByID(r.Context(), r.PathValue("id"))
	if err != nil || !ok {
		http.Error(w, "no such incident", http.StatusNotFound)
		return
	}
	a := &rec.Alert
	from, to := a.FirstSeen.Add(-chartMargin).Truncate(time.Minute), a.LastSeen.Add(chartMargin)
	if to.Sub(from) > store.MaxRateWindow {
		from = to.Add(-store.MaxRateWindow).Truncate(time.Minute).Add(time.Minute)
	}
	q, route := rateQuery(a)
	vals, err := s.o.Store.RequestsPerMinute(r.Context(), q, from, to)
	if err != nil && !errors.Is(err, store.ErrRateTruncated) {
		s.fail(w, r, p, http.StatusServiceUnavailable, fmt.Errorf("the archive cannot be read now: %w", err))
		return
	}
	what := "key " + a.Key
	if route {
		what = "route " + a.Key
	}
	if errors.Is(err, store.ErrRateTruncated) {
		what += " (partial: too many events to count)"
	}
	counts := make([]float64, len(vals))
	for i, v := range vals {
		counts[i] = float64(v)
	}
	tl := chart.Timeline{Title: "Requests per minute of " + shorten(what, 70), Start: from, Counts: counts,
		WindowStart: a.FirstSeen, WindowEnd: a.LastSeen}
	var b bytes.Buffer
	if err := tl.WriteSVG(&b); err != nil {
		s.fail(w, r, p, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	// An SVG opened on its own is a document: it gets no script and no framing either.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	_, _ = w.Write(b.Bytes())
}

func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func (s *Server) ack(w http.ResponseWriter, r *http.Request, p principal) {
	id := r.PathValue("id")
	ack, err := s.act.acknowledge(r.Context(), id, p.who, "console")
	if err != nil {
		if _, ok := errors.AsType[*errAudit](err); !ok {
			status := http.StatusInternalServerError
			if errors.Is(err, ErrNoIncident) {
				status = http.StatusNotFound
			}
			s.fail(w, r, p, status, err)
			return
		}
		s.back(w, r, "/incidents/"+url.PathEscape(id), err.Error())
		return
	}
	s.back(w, r, "/incidents/"+url.PathEscape(id), "Acknowledged by "+ack.By)
}

// silenceDurations are what the one-click silence offers.
var silenceDurations = []struct {
	name string
	d    time.Duration
}{{"1h", time.Hour}, {"4h", 4 * time.Hour}, {"24h", 24 * time.Hour}, {"7d", 7 * 24 * time.Hour}}

func (s *Server) silence(w http.ResponseWriter, r *http.Request, p principal) {
	id := r.PathValue("id")
	rec, ok, err := s.o.Store.AlertByID(r.Context(), id)
	if err != nil || !ok {
		http.Error(w, "no such incident", http.StatusNotFound)
		return
	}
	var d time.Duration
	for _, x := range silenceDurations {
		if x.name == r.PostFormValue("for") {
			d = x.d
		}
	}
	if d == 0 {
		http.Error(w, "choose how long: 1h, 4h, 24h or 7d", http.StatusBadRequest)
		return
	}
	m := alerting.Matcher{Key: []string{rec.Alert.Key}}
	if r.PostFormValue("scope") == "detector" {
		m.Detector = []string{rec.Alert.Detector}
	}
	sl, err := s.act.createSilence(r.Context(), alerting.SilenceRecord{Match: m, Expires: s.o.Now().Add(d),
		Comment: strings.TrimSpace(r.PostFormValue("comment")), CreatedBy: p.who}, "console")
	if err != nil {
		if _, ok := errors.AsType[*errAudit](err); !ok {
			s.fail(w, r, p, http.StatusBadRequest, err)
			return
		}
	}
	s.back(w, r, "/silences", fmt.Sprintf("Silence %s made: %s until %s", sl.ID, sl.Describe(), sl.Expires.UTC().Format("2006-01-02 15:04 UTC")))
}

// Silences.

func (s *Server) silencesPage(w http.ResponseWriter, r *http.Request, p principal) {
	s.render(w, r, "silences", http.StatusOK, page{Title: "Silences", Nav: "silences", Who: p.who, CSRF: p.csrf,
		Data: silencesData{Runtime: s.o.Silences.List(), Config: s.o.Alerting().Silences}})
}

type silencesData struct {
	Runtime []alerting.SilenceRecord
	Config  []alerting.Silence
}

func (s *Server) expire(w http.ResponseWriter, r *http.Request, p principal) {
	id := r.PathValue("id")
	if _, err := s.act.expireSilence(r.Context(), id, p.who); err != nil {
		if _, ok := errors.AsType[*errAudit](err); !ok {
			status := http.StatusInternalServerError
			if errors.Is(err, alerting.ErrSilenceNotFound) {
				status = http.StatusNotFound
			}
			s.fail(w, r, p, status, err)
			return
		}
	}
	s.back(w, r, "/silences", "Silence "+id+" expired")
}

// Receivers.

type receiverRow struct {
	Name    string
	Kind    string
	Stats   alerting.QueueStats
	Sent    float64
	Retried float64
	Failed  float64
	Parked  []alerting.Delivery
}

// maxParkedShown bounds the parked deliveries listed per receiver.
const maxParkedShown = 50

func (s *Server) receivers(w http.ResponseWriter, r *http.Request, p principal) {
	router := s.o.Router()
	stats, err := router.Stats(r.Context())
	pg := page{Title: "Receivers", Nav: "receivers", Who: p.who, CSRF: p.csrf}
	if err != nil {
		pg.Error = "The outbox cannot be read now: " + err.Error()
	}
	kinds := map[string]string{}
	for _, rc := range s.o.Alerting().Receivers {
		kinds[rc.Name] = rc.Kind()
	}
	m := gather(s.o.Metrics)
	var rows []receiverRow
	for _, n := range router.Receivers() {
		row := receiverRow{Name: n, Kind: kinds[n], Stats: stats[n],
			Sent:    m.sum("gatewatch_alerting_deliveries_sent_total", "receiver", n),
			Retried: m.sum("gatewatch_alerting_deliveries_retried_total", "receiver", n),
			Failed:  m.sum("gatewatch_alerting_deliveries_failed_total", "receiver", n)}
		if row.Stats.Parked > 0 {
			row.Parked, _ = router.Parked(r.Context(), n, maxParkedShown)
		}
		rows = append(rows, row)
	}
	pg.Data = rows
	s.render(w, r, "receivers", http.StatusOK, pg)
}

func (s *Server) requeueAll(w http.ResponseWriter, r *http.Request, p principal) {
	name := r.PathValue("name")
	if !slices.Contains(s.o.Router().Receivers(), name) {
		http.Error(w, "no such receiver", http.StatusNotFound)
		return
	}
	n, err := s.act.requeue(r.Context(), name, nil, p.who)
	if err != nil {
		if _, ok := errors.AsType[*errAudit](err); !ok {
			s.fail(w, r, p, http.StatusInternalServerError, err)
			return
		}
	}
	s.back(w, r, "/receivers", fmt.Sprintf("%d parked deliveries to %s sent again", n, name))
}

func (s *Server) requeueOne(w http.ResponseWriter, r *http.Request, p principal) {
	name := r.PathValue("name")
	if !slices.Contains(s.o.Router().Receivers(), name) {
		http.Error(w, "no such receiver", http.StatusNotFound)
		return
	}
	version, err1 := strconv.ParseInt(r.PostFormValue("version"), 10, 64)
	round, err2 := strconv.Atoi(r.PostFormValue("round"))
	id := r.PostFormValue("id")
	if err1 != nil || err2 != nil || id == "" || len(id) > 128 {
		http.Error(w, "which delivery: id, version and round", http.StatusBadRequest)
		return
	}
	k := alerting.DeliveryKey{Receiver: name, ID: id, Version: version, Round: round}
	n, err := s.act.requeue(r.Context(), name, &k, p.who)
	if err != nil {
		if _, ok := errors.AsType[*errAudit](err); !ok {
			s.fail(w, r, p, http.StatusInternalServerError, err)
			return
		}
	}
	if n == 0 {
		s.back(w, r, "/receivers", "That delivery is not parked any more")
		return
	}
	s.back(w, r, "/receivers", "Delivery of "+id+" to "+name+" sent again")
}

// Audit.

// auditShown is how much of the audit log the page shows.
const auditShown = 500

func (s *Server) audit(w http.ResponseWriter, r *http.Request, p principal) {
	pg := page{Title: "Audit log", Nav: "audit", Who: p.who, CSRF: p.csrf}
	es, err := s.o.Store.Audit(r.Context(), auditShown)
	if err != nil {
		pg.Error = "The audit log cannot be read now: " + err.Error()
	}
	pg.Data = es
	s.render(w, r, "audit", http.StatusOK, pg)
}

// humanDuration says how long ago, roughly: 45s, 12m, 3h, 2d.
func humanDuration(d time.Duration) string {
	neg := d < 0
	d = d.Abs()
	var s string
	switch {
	case d < time.Minute:
		s = strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		s = strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		s = strconv.Itoa(int(d/time.Hour)) + "h"
	default:
		s = strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	if neg {
		return "in " + s
	}
	return s + " ago"
}

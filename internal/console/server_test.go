package console

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/store"
)

const testToken = "console-token-0123456789abcdef"

// env is a console over the embedded store, with a router whose one receiver refuses
// everything (so deliveries park), and detector metrics in a registry.
type env struct {
	t      *testing.T
	s      *Server
	st     *store.Local
	router *alerting.Router
	rcv    *alertingtest.Recorder
	alert  detectors.Alert
	now    time.Time
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newEnv(t *testing.T, edit func(*Config)) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, now: time.Now().UTC()}
	st, err := store.NewLocal(store.Config{DataDir: t.TempDir()}, store.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(ctx) })
	e.st = st
	sil, err := alerting.OpenSilences(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	acks, err := alerting.OpenAcks(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	acfg := alerting.DefaultConfig()
	acfg.Receivers = []alerting.ReceiverConfig{{Name: "siem", File: &alerting.FileConfig{Path: "x"}}}
	e.rcv = alertingtest.NewRecorder("siem")
	e.rcv.Fail(func(int, []detectors.Alert) (bool, error) { return false, errors.New("HTTP 400: bad request") })
	reg := prometheus.NewRegistry()
	e.router, err = alerting.NewRouter(acfg, alerting.RouterOptions{Outbox: alerting.NewMemoryOutbox(),
		Receivers: map[string]alerting.Receiver{"siem": e.rcv}, Registerer: reg, History: st, Silences: sil, Acks: acks})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.router.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	keys := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gatewatch_detectors_tracked_keys", Help: "h"}, []string{"detector"})
	keys.WithLabelValues(detectors.ForbiddenBurst).Set(1234)
	reg.MustRegister(keys)

	cfg := Config{Listen: "127.0.0.1:0", TokenFile: writeFile(t, "token", testToken+"\n")}
	if edit != nil {
		edit(&cfg)
	}
	e.s, err = New(cfg, Options{Store: st, Router: func() *alerting.Router { return e.router }, Alerting: func() alerting.Config { return acfg },
		Silences: sil, Acks: acks, Metrics: reg, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	// One incident, put through the router: in the history, its delivery parked.
	e.alert = alertingtest.NewAlert(detectors.ForbiddenBurst, "2432790920b576260b1fd29f638d711f", e.now.Add(-10*time.Minute), e.now.Add(-time.Minute))
	if err := st.ArchiveEvents(ctx, []ingest.Event{{Time: e.now.Add(-5 * time.Minute), ClientKey: e.alert.Key, Status: 403, Route: "/v1/a", Method: "GET"}}); err != nil {
		t.Fatal(err)
	}
	if err := e.router.Put(ctx, []detectors.Alert{e.alert}); err != nil {
		t.Fatal(err)
	}
	fctx, fcancel := context.WithTimeout(ctx, time.Minute)
	defer fcancel()
	if err := e.router.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	e.waitHistory()
	return e
}

// waitHistory waits until the history has the alert and its parked delivery: the
// router writes it off the delivery path.
func (e *env) waitHistory() {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		rec, ok, _ := e.st.AlertByID(context.Background(), e.alert.ID)
		if ok && len(rec.Deliveries) == 1 && rec.Deliveries[0].State == alerting.Failed {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatal("the alert history did not get the incident")
}

type req struct {
	method, path string
	form         url.Values
	bearer       string
	cookie       *http.Cookie
	remote       string
	header       map[string]string
}

func (e *env) do(r req) *httptest.ResponseRecorder {
	e.t.Helper()
	var body io.Reader
	if r.form != nil {
		body = strings.NewReader(r.form.Encode())
	}
	hr := httptest.NewRequest(r.method, r.path, body)
	if r.form != nil {
		hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if r.bearer != "" {
		hr.Header.Set("Authorization", "Bearer "+r.bearer)
	}
	if r.cookie != nil {
		hr.AddCookie(r.cookie)
	}
	if r.remote != "" {
		hr.RemoteAddr = r.remote
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	e.s.Handler().ServeHTTP(w, hr)
	return w
}

// csrf returns the CSRF token a page rendered for the bearer token carries.
func (e *env) csrf(t *testing.T) string {
	t.Helper()
	w := e.do(req{method: "GET", path: "/incidents/" + e.alert.ID, bearer: testToken})
	m := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(w.Body.String())
	if m == nil {
		t.Fatalf("no CSRF token on the incident page:\n%s", w.Body.String())
	}
	return m[1]
}

// aliceUsers writes a users file (htpasswd -B) with alice, password "alice-password".
func aliceUsers(t *testing.T) string {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("alice-password"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "users", "# htpasswd -B\nalice:"+string(hash)+"\n")
}

// basic is the header of a request with basic-auth credentials.
func basic(user, pass string) map[string]string {
	r := httptest.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, pass)
	return map[string]string{"Authorization": r.Header.Get("Authorization")}
}

func TestAuthentication(t *testing.T) {
	users := aliceUsers(t)
	e := newEnv(t, func(c *Config) {
		c.UsersFile = users
		c.TrustedProxy = &TrustedProxy{Header: "X-Forwarded-User", From: []string{"10.0.0.0/8"}}
	})
	for _, c := range []struct {
		name string
		r    req
		want int
	}{
		{"browser without credentials goes to the login page", req{method: "GET", path: "/incidents"}, http.StatusSeeOther},
		{"API client without credentials", req{method: "GET", path: "/incidents", header: map[string]string{"Accept": "application/json"}}, http.StatusUnauthorized},
		{"wrong token", req{method: "GET", path: "/incidents", bearer: "not-the-token-0000000000"}, http.StatusUnauthorized},
		{"token", req{method: "GET", path: "/incidents", bearer: testToken}, http.StatusOK},
		{"basic-auth user", req{method: "GET", path: "/incidents", header: basic("alice", "alice-password")}, http.StatusOK},
		{"basic-auth wrong password", req{method: "GET", path: "/incidents", header: basic("alice", "guess")}, http.StatusUnauthorized},
		{"basic-auth unknown user", req{method: "GET", path: "/incidents", header: basic("mallory", "alice-password")}, http.StatusUnauthorized},
		{"proxy header from the proxy", req{method: "GET", path: "/incidents", remote: "10.1.2.3:5555", header: map[string]string{"X-Forwarded-User": "bob@example.com"}}, http.StatusOK},
		{"proxy header from elsewhere", req{method: "GET", path: "/incidents", remote: "192.0.2.9:5555", header: map[string]string{"X-Forwarded-User": "bob@example.com", "Accept": "application/json"}}, http.StatusUnauthorized},
		{"chart without credentials", req{method: "GET", path: "/incidents/" + e.alert.ID + "/chart.svg", header: map[string]string{"Accept": "image/*"}}, http.StatusUnauthorized},
		{"static files are public", req{method: "GET", path: "/static/app.js"}, http.StatusOK},
	} {
		if w := e.do(c.r); w.Code != c.want {
			t.Errorf("%s: %d, want %d", c.name, w.Code, c.want)
		}
	}
	w := e.do(req{method: "GET", path: "/incidents", remote: "10.1.2.3:5555", header: map[string]string{"X-Forwarded-User": "bob@example.com"}})
	if !strings.Contains(w.Body.String(), "bob@example.com") {
		t.Error("the page does not name the proxy's user")
	}
	// The refusals are counted by route and code, for the dashboard and the rules.
	for _, c := range []struct {
		handler, code string
		want          float64
	}{
		{"GET /incidents", "401", 5},
		{"GET /incidents", "303", 1},
		{"GET /incidents", "200", 4},
		{"GET /incidents/{id}/chart.svg", "401", 1},
	} {
		if got := testutil.ToFloat64(e.s.m.requests.WithLabelValues(c.handler, c.code)); got != c.want {
			t.Errorf("gatewatch_console_requests_total{handler=%q, code=%q} = %v, want %v", c.handler, c.code, got, c.want)
		}
	}
}

// TestAuthenticationAttemptsAreLimited: once a client's failed authentications are spent (by
// the login form, a bearer token or basic-auth credentials alike), the right
// credentials are refused too, until they refill; a guesser learns nothing from a burst.
func TestAuthenticationAttemptsAreLimited(t *testing.T) {
	users := aliceUsers(t)
	for _, c := range []struct {
		name         string
		wrong, right req
		ok           int
	}{
		{"login form", req{method: "POST", path: "/login", form: url.Values{"secret": {"wrong-token-000000000"}}},
			req{method: "POST", path: "/login", form: url.Values{"secret": {testToken}}}, http.StatusSeeOther},
		{"bearer token", req{method: "GET", path: "/incidents", bearer: "wrong-token-000000000"},
			req{method: "GET", path: "/incidents", bearer: testToken}, http.StatusOK},
		{"basic auth", req{method: "GET", path: "/incidents", header: basic("alice", "guess")},
			req{method: "GET", path: "/incidents", header: basic("alice", "alice-password")}, http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.UsersFile = users })
			now := e.now
			e.s.auth.now = func() time.Time { return now }
			for i := range loginFailBurst {
				if code := e.do(c.wrong).Code; code != http.StatusUnauthorized {
					t.Fatalf("failure %d: %d, want 401", i+1, code)
				}
			}
			if w := e.do(c.right); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
				t.Errorf("the right credentials after %d failures at once: %d (Retry-After %q), want 429 with Retry-After",
					loginFailBurst, w.Code, w.Header().Get("Retry-After"))
			}
			now = now.Add(2 * time.Second / loginFailRate)
			if code := e.do(c.right).Code; code != c.ok {
				t.Errorf("the right credentials once failures refilled: %d, want %d", code, c.ok)
			}
		})
	}
}

func TestLoginSession(t *testing.T) {
	e := newEnv(t, nil)
	w := e.do(req{method: "POST", path: "/login", form: url.Values{"secret": {"wrong-token-000000000"}, "next": {"/health"}}})
	if w.Code != http.StatusUnauthorized || strings.Contains(w.Body.String(), "wrong-token") {
		t.Errorf("bad login: %d, and the page must not echo what was typed", w.Code)
	}
	w = e.do(req{method: "POST", path: "/login", form: url.Values{"secret": {testToken}, "next": {"//evil.example/x"}}})
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/incidents" {
		t.Errorf("login: %d to %q, want 303 to /incidents (never another host)", w.Code, w.Header().Get("Location"))
	}
	var c *http.Cookie
	for _, x := range w.Result().Cookies() {
		if x.Name == sessionCookie {
			c = x
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || strings.Contains(c.Value, testToken) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, not the token", c)
	}
	if w := e.do(req{method: "GET", path: "/health", cookie: c}); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "1234") {
		t.Errorf("health with the session: %d, or the tracked keys metric is missing", w.Code)
	}
	csrf := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(e.do(req{method: "GET", path: "/incidents", cookie: c}).Body.String())[1]
	if w := e.do(req{method: "POST", path: "/logout", cookie: c, form: url.Values{"csrf": {csrf}}}); w.Code != http.StatusSeeOther {
		t.Errorf("logout: %d", w.Code)
	}
	if w := e.do(req{method: "GET", path: "/health", cookie: c}); w.Code != http.StatusSeeOther {
		t.Errorf("after logout the session still works: %d", w.Code)
	}
}

// TestStateChangesNeedCSRF: every POST without the CSRF token, with another one, or
// from another site's page is refused and changes nothing; with it, it is done and
// audited.
func TestStateChangesNeedCSRF(t *testing.T) {
	e := newEnv(t, nil)
	csrf := e.csrf(t)
	ack := "/incidents/" + e.alert.ID + "/ack"
	for _, c := range []struct {
		name string
		r    req
	}{
		{"no CSRF token", req{method: "POST", path: ack, bearer: testToken, form: url.Values{}}},
		{"another CSRF token", req{method: "POST", path: ack, bearer: testToken, form: url.Values{"csrf": {strings.Repeat("0", len(csrf))}}}},
		{"from another site", req{method: "POST", path: ack, bearer: testToken, form: url.Values{"csrf": {csrf}}, header: map[string]string{"Origin": "https://evil.example"}}},
	} {
		if w := e.do(c.r); w.Code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", c.name, w.Code)
		}
	}
	if _, ok := e.s.o.Acks.Ack(e.alert.ID); ok {
		t.Fatal("a refused request acknowledged the incident")
	}
	if w := e.do(req{method: "POST", path: ack, form: url.Values{"csrf": {csrf}}, header: map[string]string{"Accept": "application/json"}}); w.Code != http.StatusUnauthorized {
		t.Errorf("CSRF token without credentials: %d, want 401", w.Code)
	}
	if w := e.do(req{method: "POST", path: ack, bearer: testToken, form: url.Values{"csrf": {csrf}}}); w.Code != http.StatusSeeOther {
		t.Fatalf("acknowledge: %d %s", w.Code, w.Body.String())
	}
	if a, ok := e.s.o.Acks.Ack(e.alert.ID); !ok || a.By != "token" || a.Via != "console" {
		t.Errorf("Ack = %+v, %v", a, ok)
	}
	log, err := e.st.Audit(context.Background(), 10)
	if err != nil || len(log) != 1 || log[0].Action != "incident.ack" || log[0].Who != "token" || log[0].Object != e.alert.ID {
		t.Errorf("audit log = %+v, %v; want the acknowledgement", log, err)
	}
}

// TestListenAddress: the console is loopback unless an address says otherwise, and
// check-config's warning names any other.
func TestListenAddress(t *testing.T) {
	for _, c := range []struct {
		listen, addr string
		warns        bool
	}{
		{":9465", "127.0.0.1:9465", false},
		{"127.0.0.1:9465", "127.0.0.1:9465", false},
		{"[::1]:9465", "[::1]:9465", false},
		{"localhost:9465", "localhost:9465", false},
		{"0.0.0.0:9465", "0.0.0.0:9465", true},
		{"[::]:9465", "[::]:9465", true},
		{"10.0.0.5:9465", "10.0.0.5:9465", true},
		{"", "", false},
	} {
		cfg := Config{Listen: c.listen}
		if got := cfg.Addr(); got != c.addr {
			t.Errorf("listen %q: binds %q, want %q", c.listen, got, c.addr)
		}
		if err := cfg.Warnings(); (err != nil) != c.warns {
			t.Errorf("listen %q: warning %v, want one: %v", c.listen, err, c.warns)
		}
	}
	o := newEnv(t, nil).s.o
	o.Registerer = prometheus.NewRegistry()
	s, err := New(Config{Listen: ":0", TokenFile: writeFile(t, "token", testToken)}, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen((&Config{Listen: ":0"}).Addr()); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	if host, _, _ := net.SplitHostPort(s.Addr()); host != "127.0.0.1" {
		t.Errorf("listen \":0\" bound %s, want loopback", s.Addr())
	}
}

// TestSameOrigin: a state change is taken from the console's own pages, as browsers
// say so, and from clients that are not browsers; never from another site's page.
func TestSameOrigin(t *testing.T) {
	for _, c := range []struct {
		name   string
		origin string
		site   string
		want   bool
	}{
		{"the console's own page", "http://console.example:9465", "same-origin", true},
		{"the console's own page, an older browser", "http://console.example:9465", "", true},
		{"Origin hidden, same origin", "null", "same-origin", true},
		{"a client that is not a browser", "", "", true},
		{"another site", "https://evil.example", "cross-site", false},
		{"another port of the host", "http://console.example:8080", "same-site", false},
		{"Origin hidden, another site", "null", "cross-site", false},
		{"Origin hidden, nothing else said", "null", "", false},
		{"no Origin, another site", "", "cross-site", false},
		{"no Origin, a sibling subdomain", "", "same-site", false},
	} {
		r := httptest.NewRequest("POST", "http://console.example:9465/login", nil)
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		if c.site != "" {
			r.Header.Set("Sec-Fetch-Site", c.site)
		}
		if got := sameOrigin(r); got != c.want {
			t.Errorf("%s (Origin %q, Sec-Fetch-Site %q): %v, want %v", c.name, c.origin, c.site, got, c.want)
		}
	}
}

// TestSilenceFromIncident: one click silences the incident's key, the router mutes it
// at once, the silence is listed, and expiring it unmutes; both are audited.
func TestSilenceFromIncident(t *testing.T) {
	e := newEnv(t, nil)
	csrf := e.csrf(t)
	w := e.do(req{method: "POST", path: "/incidents/" + e.alert.ID + "/silence", bearer: testToken,
		form: url.Values{"csrf": {csrf}, "for": {"24h"}, "scope": {"key"}, "comment": {"known scanner, SEC-42"}}})
	if w.Code != http.StatusSeeOther {
		t.Fatalf("silence: %d %s", w.Code, w.Body.String())
	}
	if !e.router.Silenced(e.alert) {
		t.Fatal("the router does not mute the silenced key")
	}
	list := e.s.o.Silences.List()
	if len(list) != 1 || list[0].CreatedBy != "token" || list[0].Comment != "known scanner, SEC-42" {
		t.Fatalf("silences = %+v", list)
	}
	page := e.do(req{method: "GET", path: "/silences", bearer: testToken}).Body.String()
	if !strings.Contains(page, list[0].ID) || !strings.Contains(page, "known scanner, SEC-42") {
		t.Error("the silences page does not list the silence")
	}
	if w := e.do(req{method: "POST", path: "/incidents/" + e.alert.ID + "/silence", bearer: testToken,
		form: url.Values{"csrf": {csrf}, "for": {"24h"}, "comment": {""}}}); w.Code != http.StatusBadRequest {
		t.Errorf("a silence without a comment: %d, want 400", w.Code)
	}
	if w := e.do(req{method: "POST", path: "/silences/" + list[0].ID + "/expire", bearer: testToken, form: url.Values{"csrf": {csrf}}}); w.Code != http.StatusSeeOther {
		t.Fatalf("expire: %d", w.Code)
	}
	if e.router.Silenced(e.alert) {
		t.Error("still muted after the silence was expired")
	}
	log, _ := e.st.Audit(context.Background(), 10)
	if len(log) != 2 || log[0].Action != "silence.expire" || log[1].Action != "silence.create" || !strings.Contains(log[1].Detail, "key="+e.alert.Key) {
		t.Errorf("audit log = %+v", log)
	}
	for action, want := range map[string]float64{actionSilence: 1, actionExpire: 1, actionAck: 0} {
		if got := testutil.ToFloat64(e.s.m.changes.WithLabelValues(action)); got != want {
			t.Errorf("gatewatch_console_changes_total{action=%q} = %v, want %v", action, got, want)
		}
	}
}

// TestResendParked: a parked delivery is sent again from the receivers page, once the
// destination takes it.
func TestResendParked(t *testing.T) {
	e := newEnv(t, nil)
	page := e.do(req{method: "GET", path: "/receivers", bearer: testToken}).Body.String()
	if !strings.Contains(page, "HTTP 400: bad request") || !strings.Contains(page, e.alert.ID) {
		t.Fatalf("the receivers page does not show the parked delivery and its error:\n%s", page)
	}
	e.rcv.Fail(nil)
	ds, _ := e.router.Parked(context.Background(), "siem", 10)
	form := url.Values{"csrf": {e.csrf(t)}, "id": {ds[0].ID}, "version": {strconv.FormatInt(ds[0].Version, 10)}, "round": {"0"}}
	if w := e.do(req{method: "POST", path: "/receivers/siem/requeue-one", bearer: testToken, form: form}); w.Code != http.StatusSeeOther {
		t.Fatalf("re-send: %d %s", w.Code, w.Body.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.router.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := e.router.Parked(context.Background(), "siem", 10); len(left) != 0 {
		t.Errorf("%d still parked", len(left))
	}
	if n := len(e.rcv.Identities()); n != 2 {
		t.Errorf("receiver got %d attempts, want the failed one and the re-send", n)
	}
	log, _ := e.st.Audit(context.Background(), 10)
	if len(log) != 1 || log[0].Action != "delivery.requeue" {
		t.Errorf("audit log = %+v", log)
	}
}

// TestPagesAreSafe: every page renders, carries the security headers, has no inline
// script or style, and never shows the console token.
func TestPagesAreSafe(t *testing.T) {
	e := newEnv(t, nil)
	for _, path := range []string{"/incidents", "/incidents?state=all&since=7d&detector=forbidden_burst", "/incidents/" + e.alert.ID,
		"/silences", "/receivers", "/health", "/audit", "/login"} {
		w := e.do(req{method: "GET", path: path, bearer: testToken})
		if w.Code != http.StatusOK {
			t.Errorf("%s: %d\n%s", path, w.Code, w.Body.String())
			continue
		}
		csp := w.Header().Get("Content-Security-Policy")
		for _, want := range []string{"script-src 'self'", "frame-ancestors 'none'", "default-src 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %s", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || w.Header().Get("X-Frame-Options") != "DENY" || w.Header().Get("X-Content-Type-Options") != "nosniff" ||
			w.Header().Get("Referrer-Policy") != "same-origin" {
			t.Errorf("%s: security headers %v", path, w.Header())
		}
		body := w.Body.String()
		if strings.Contains(body, testToken) {
			t.Errorf("%s shows the console token", path)
		}
		if regexp.MustCompile(`<script>|<script [^>]*>[^<]|style=|on(click|submit|load)=`).MatchString(body) {
			t.Errorf("%s has inline script or style", path)
		}
	}
	w := e.do(req{method: "GET", path: "/incidents?detector=nope", bearer: testToken})
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "unknown detector") {
		t.Errorf("a bad filter: %d", w.Code)
	}
	w = e.do(req{method: "GET", path: "/incidents/" + e.alert.ID + "/chart.svg", bearer: testToken})
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "image/svg+xml" || !strings.Contains(w.Body.String(), "<svg") {
		t.Errorf("chart: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	page := e.do(req{method: "GET", path: "/incidents", bearer: testToken}).Body.String()
	if !strings.Contains(page, e.alert.Key) || !strings.Contains(page, "siem: failed") {
		t.Errorf("the incident list lacks the incident or its parked delivery:\n%s", page)
	}
}

// TestFlashOnlyFromTheConsole: a page shows the message of the console's own redirect
// after a change, never one a crafted link carries.
func TestFlashOnlyFromTheConsole(t *testing.T) {
	e := newEnv(t, nil)
	const msg = "Your session expired: log in again at https://evil.example"
	for _, c := range []struct {
		name  string
		query string
		shown bool
	}{
		{"signed by the console", "?done=" + url.QueryEscape(msg) + "&sig=" + e.s.auth.flashSig(msg), true},
		{"unsigned", "?done=" + url.QueryEscape(msg), false},
		{"signed for another message", "?done=" + url.QueryEscape(msg) + "&sig=" + e.s.auth.flashSig("Silence 1 expired"), false},
	} {
		w := e.do(req{method: "GET", path: "/silences" + c.query, bearer: testToken})
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d", c.name, w.Code)
		}
		if got := strings.Contains(w.Body.String(), "evil.example"); got != c.shown {
			t.Errorf("%s: message shown %v, want %v", c.name, got, c.shown)
		}
	}
}

// TestReplicaPages: on a replica of a cluster the pages say what is this replica's
// (its metrics, its outbox) and how soon the other replicas' silences are in force.
func TestReplicaPages(t *testing.T) {
	e := newEnv(t, nil)
	for _, c := range []struct {
		name      string
		replica   bool
		sync      time.Duration
		want, not map[string][]string // page → fragments
	}{
		{"alone", false, 0, nil, map[string][]string{"/health": {"replica"}, "/silences": {"replica", "within"}, "/receivers": {"replica"}}},
		{"replica sharing the store", true, 5 * time.Second,
			map[string][]string{"/health": {"Detector health of this replica", "this replica's metrics"},
				"/silences": {"in force, or end it, within 5s"}, "/receivers": {"Receivers of this replica"},
				"/incidents": {"silences and acknowledgements made on another replica are in force here within 5s"}},
			nil},
	} {
		e.s.o.Replica, e.s.o.Sync = c.replica, c.sync
		check := func(pages map[string][]string, want bool) {
			for path, frags := range pages {
				w := e.do(req{method: "GET", path: path, bearer: testToken})
				body := w.Body.String()
				for _, f := range frags {
					if strings.Contains(body, f) != want {
						t.Errorf("%s: %s contains %q: %v, want %v", c.name, path, f, !want, want)
					}
				}
			}
		}
		check(c.want, true)
		check(c.not, false)
	}
}

// failingAudit is the env's store with an audit log that refuses every entry.
type failingAudit struct{ Store }

func (failingAudit) RecordAudit(context.Context, store.AuditEntry) error {
	return errors.New("audit_log: disk full")
}

// TestAuditFailure: a change whose audit entry cannot be written is made all the same,
// says so, and is counted, since an audit log that silently misses changes is what
// gatewatch_console_audit_errors_total and its alert rule are for.
func TestAuditFailure(t *testing.T) {
	e := newEnv(t, nil)
	e.s.act.store = failingAudit{e.st}
	ack, err := e.s.act.acknowledge(context.Background(), e.alert.ID, "alice", "console")
	var ae *errAudit
	if !errors.As(err, &ae) || ack.By == "" {
		t.Fatalf("Acknowledge with the audit log down: %+v, %v; want the ack made and an audit error", ack, err)
	}
	if got := testutil.ToFloat64(e.s.m.auditErrors); got != 1 {
		t.Errorf("gatewatch_console_audit_errors_total = %v, want 1", got)
	}
	if got := testutil.ToFloat64(e.s.m.changes.WithLabelValues(actionAck)); got != 1 {
		t.Errorf("gatewatch_console_changes_total{action=%q} = %v, want 1", actionAck, got)
	}
}

package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/crypto/bcrypt"
)

// A principal is who a request comes from, and the CSRF token its forms carry.
type principal struct {
	who    string // "token", a basic-auth user, the proxy's user
	method string // bearer, basic, session, proxy
	csrf   string
}

// session is a browser's login: the cookie holds its random id, never the token.
type session struct {
	who     string
	csrf    string
	expires time.Time
}

// Bounds of sessions: an analyst's shift, and more browsers than a SOC has.
const (
	sessionTTL    = 12 * time.Hour
	maxSessions   = 10_000
	sessionCookie = "gw_session"
	maxUserName   = 128
)

// auth authenticates requests and guards state changes.
type auth struct {
	cr      credentials
	header  string // the trusted proxy's user header; "" when none
	csrfKey []byte // per process: forms of a previous process fail and are shown again
	now     func() time.Time
	fails   *failLimits

	mu       sync.Mutex
	sessions map[string]*session
}

func newAuth(cr credentials, proxyHeader string, now func() time.Time) *auth {
	key := make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand never fails
	return &auth{cr: cr, header: proxyHeader, csrfKey: key, now: now, sessions: map[string]*session{},
		fails: newFailLimits(loginFailRate, loginFailBurst, maxFailClients)}
}

// identify returns who sent r, if anyone the console knows: the trusted proxy's user
// (only from its addresses), a bearer token, basic-auth credentials, or a session.
//
// ok is false for anyone else; retry, when not 0, says the request was refused unread
// because the failed authentications of its client have spent their allowance, and
// how long until it may try again (see limited).
func (a *auth) identify(r *http.Request) (p principal, ok bool, retry time.Duration) {
	if a.header != "" && a.fromProxy(r) {
		if u := cleanUser(r.Header.Get(a.header)); u != "" {
			return a.stateless(u, "proxy"), true, 0
		}
	}
	if h := r.Header.Get("Authorization"); h != "" {
		client := a.client(r)
		if retry := a.limited(client); retry > 0 {
			return principal{}, false, retry
		}
		if tok, ok := strings.CutPrefix(h, "Bearer "); ok && a.tokenOK(tok) {
			return a.stateless("token", "bearer"), true, 0
		}
		if user, pass, ok := r.BasicAuth(); ok && a.userOK(user, pass) {
			return a.stateless(user, "basic"), true, 0
		}
		a.failed(client)
		return principal{}, false, 0
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		a.mu.Lock()
		defer a.mu.Unlock()
		if s, ok := a.sessions[c.Value]; ok && a.now().Before(s.expires) {
			return principal{who: s.who, method: "session", csrf: s.csrf}, true, 0
		}
	}
	return principal{}, false, 0
}

// stateless is a principal without a session: its CSRF token is derived from who it
// is, so a form it got from the console carries one that an attacker's page cannot
// compute. Browsers send basic-auth credentials on their own; this is what stops a
// forged form from riding on them.
func (a *auth) stateless(who, method string) principal {
	m := hmac.New(sha256.New, a.csrfKey)
	m.Write([]byte(method + "\x00" + who))
	return principal{who: who, method: method, csrf: hex.EncodeToString(m.Sum(nil)[:16])}
}

// limited returns how long client must wait because its failed authentications
// (logins and Authorization headers alike) have spent their allowance; 0 when it may
// try. Until it refills every attempt of client is refused, right or wrong: checked
// before the credentials, so a guesser learns nothing from a burst.
func (a *auth) limited(client netip.Prefix) time.Duration { return a.fails.wait(client, a.now()) }

// failed spends one failed authentication of client.
func (a *auth) failed(client netip.Prefix) { a.fails.fail(client, a.now()) }

// flashSig signs a flash message for a redirect. Without it a crafted link
// (/silences?done=Your+session+expired,+log+in+at+...) would show its text as the
// console's own word.
func (a *auth) flashSig(msg string) string {
	m := hmac.New(sha256.New, a.csrfKey)
	m.Write([]byte("flash\x00" + msg))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// flashOK reports whether sig is the console's signature of msg.
func (a *auth) flashOK(msg, sig string) bool {
	return hmac.Equal([]byte(sig), []byte(a.flashSig(msg)))
}

func (a *auth) tokenOK(tok string) bool {
	want := a.cr.token.Reveal()
	return want != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(want)) == 1
}

// dummyHash is compared against when the user is unknown, so an unknown name takes as
// long as a wrong password.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("gatewatch-no-such-user"), bcrypt.MinCost)

func (a *auth) userOK(user, pass string) bool {
	h, ok := a.cr.users[user]
	if !ok {
		_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(pass))
		return false
	}
	return bcrypt.CompareHashAndPassword(h, []byte(pass)) == nil
}

// fromProxy reports whether r comes straight from a trusted proxy's address.
func (a *auth) fromProxy(r *http.Request) bool {
	ip, ok := remoteIP(r)
	return ok && a.trusted(ip)
}

// trusted reports whether ip is a trusted proxy's.
func (a *auth) trusted(ip netip.Addr) bool {
	for _, p := range a.cr.proxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// remoteIP is the address r came from, the connection's peer.
func remoteIP(r *http.Request) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// cleanUser keeps a user name fit for the audit log and a page: printable, short.
func cleanUser(s string) string {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > maxUserName {
		return ""
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return ""
		}
	}
	return s
}

// login checks what the login form carries (the token, or a user and password) and
// opens a session; "" when the credentials are wrong.
func (a *auth) login(user, secret string) (id string, s *session) {
	who := ""
	switch {
	case user == "" && a.tokenOK(secret):
		who = "token"
	case user != "" && a.userOK(user, secret):
		who = user
	default:
		return "", nil
	}
	s = &session{who: who, csrf: randomHex(16), expires: a.now().Add(sessionTTL)}
	id = randomHex(32)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.sessions) >= maxSessions {
		now := a.now()
		for k, v := range a.sessions {
			if !now.Before(v.expires) {
				delete(a.sessions, k)
			}
		}
		if len(a.sessions) >= maxSessions {
			return "", nil
		}
	}
	a.sessions[id] = s
	return id, s
}

func (a *auth) logout(r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		a.mu.Lock()
		delete(a.sessions, c.Value)
		a.mu.Unlock()
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand never fails
	return hex.EncodeToString(b)
}

// csrfOK reports whether a state-changing request carries p's CSRF token, and does not
// come from another site (Origin, when the browser sends it).
func csrfOK(r *http.Request, p principal) bool {
	if !sameOrigin(r) {
		return false
	}
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(p.csrf)) == 1
}

// sameOrigin reports whether r comes from the console's own pages: its Origin, when
// the browser names one, is the console's host. A browser that hides the origin
// ("null": a privacy setting, a sandboxed frame) is believed only when its
// Sec-Fetch-Site says same-origin; a client that sends neither (curl, a script with
// the token) is not a browser riding on a session.
func sameOrigin(r *http.Request) bool {
	site := r.Header.Get("Sec-Fetch-Site")
	switch o := r.Header.Get("Origin"); o {
	case "":
		return site != "cross-site" && site != "same-site"
	case "null":
		return site == "same-origin"
	default:
		u, err := url.Parse(o)
		return err == nil && u.Host == r.Host
	}
}

// securityHeaders are on every answer: no inline script, no framing, nothing sniffed
// or cached, no referrer leaving the console.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
			"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: under no-referrer Chromium sends "Origin: null"
		// with the console's own form posts, which then look like another site's.
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
		if r.TLS != nil {
			hd.Set("Strict-Transport-Security", "max-age=31536000")
		}
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

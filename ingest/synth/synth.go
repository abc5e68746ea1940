// Package synth generates realistic API traffic with known attacks injected, written in
// the vendor log formats gatewatch reads. It drives `gatewatch generate` and `demo`, and
// gives tests a source of traffic whose right answer is known.
//
// The background is a population of API clients: each has an API key, one or two
// devices each holding its own bearer token, a home country (roaming clients have two),
// and a mix of routes it calls, some of them busy and some quiet. Traffic follows the
// hour of day (quiet at night, busy in office hours), a small share of requests is
// refused with 403, and one busy endpoint doubles its traffic halfway through. Into it
// go the decoys, normal traffic that looks like an attack to a naive detector: an
// export job that runs every half hour, a partner that syncs hundreds of invoices every
// half hour, a batch client's hourly run, an admin console doing admin work, a client
// retrying its expired token, a NAT address shared by many clients (a few of whose
// tokens have expired), a deploy that makes one route answer 404 to everyone for ten
// minutes, and an app polling an endpoint that no longer exists. Attacks are the
// patterns the detectors exist for, one of each requested kind, late in the run. Every
// one of them is an attack on one detector only, so each raises one incident.
// Everything is derived from the seed: the same Config gives the same bytes.
package synth

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Attack kinds, named after the detector that should catch each.
const (
	AttackNewCountry        = "new_country"
	AttackTokenReuse        = "token_reuse"
	AttackForbidden         = "forbidden_burst"
	AttackQuietSpike        = "quiet_endpoint_spike"
	AttackObjectEnumeration = "object_enumeration"
	AttackAuthSpray         = "auth_failure_spray"
	AttackPrivilege         = "privilege_anomaly"
	AttackVolumeSpike       = "client_volume_spike"
	AttackRouteScan         = "route_scan"

	defaultClients     = 300
	defaultRatePerSec  = 20.0
	defaultDuration    = 3 * time.Hour
	forbiddenShare     = 0.01 // background requests refused with 403
	quietRoutePerMinut = 0.2  // calls per minute on each quiet route
)

// Attacks lists every attack kind, in the order they are injected.
var Attacks = []string{AttackNewCountry, AttackTokenReuse, AttackForbidden, AttackQuietSpike,
	AttackObjectEnumeration, AttackAuthSpray, AttackPrivilege, AttackVolumeSpike, AttackRouteScan}

// DefaultStart is where generated time begins unless Config.Start is set: a fixed
// instant, so output never depends on the clock.
var DefaultStart = time.Date(2026, 11, 2, 6, 0, 0, 0, time.UTC)

// Config says what to generate. Zero fields take the documented defaults.
type Config struct {
	Start    time.Time     // zero: DefaultStart
	Duration time.Duration // zero: 3h
	Rate     float64       // background requests per second, on average over a day; zero: 20
	Clients  int           // zero: 300
	Seed     uint64
	Attacks  []string // attack kinds to inject; nil: none
	// AttacksFrom is how far into the run the first attack starts; the others follow,
	// spread over the rest of it. Zero: 60% of Duration, once the detectors of the
	// demo's configuration have learnt their baselines.
	AttacksFrom time.Duration
}

// Request is one generated request with its raw credentials, before a format writes it.
type Request struct {
	Time      time.Time
	ClientIP  string
	Country   string
	Method    string
	Host      string
	Path      string // with ids filled in
	Query     string
	Route     string // the template the path came from
	Status    int
	Action    string // WAF action: ALLOW or BLOCK
	RuleID    string
	UserAgent string
	APIKey    string // raw API key: the parser must fingerprint it
	Token     string // raw bearer token
	DeviceID  string
	RequestID string
	Consumer  string // the gateway's consumer id, for formats that log one (Kong)
}

// Injected describes one attack as generated, so a test or an operator can check that
// the detectors found it: the incident of detector Kind, keyed as AlertKey says,
// starting between Start and End.
type Injected struct {
	Kind     string    `json:"kind"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Client   string    `json:"client"`              // the consumer id of the client involved
	ClientIP string    `json:"client_ip,omitempty"` // the address the attack came from
	Route    string    `json:"route,omitempty"`     // "METHOD /template" of the route attacked
	Country  string    `json:"country,omitempty"`
	Count    int       `json:"requests"`
	// APIKey and Token are the attack's raw credentials, as generated (synthetic, and
	// never printed): AlertKey fingerprints them as the parser does.
	APIKey string `json:"-"`
	Token  string `json:"-"`
}

// AlertKey returns the key of the incident the attack must raise, given clientKey and
// tokenFP, which turn a raw API key and token into the client_key and token_fp the
// parser of the records gives (for formats that log a consumer id, clientKey returns
// it: Client), and route, which turns Route into the method and route the parser gives
// (Kong logs a route's name, not its template).
func (in *Injected) AlertKey(clientKey, tokenFP, route func(string) string) string {
	switch in.Kind {
	case AttackTokenReuse:
		return tokenFP(in.Token)
	case AttackQuietSpike:
		return route(in.Route)
	case AttackObjectEnumeration:
		return clientKey(in.APIKey) + " " + route(in.Route)
	case AttackAuthSpray, AttackRouteScan:
		return in.ClientIP
	}
	return clientKey(in.APIKey)
}

type device struct {
	ua, id, token, ip string
}

type client struct {
	consumer  string
	apiKey    string
	countries []string
	devices   []device
	weight    float64
}

type route struct {
	method, template, host string
	weight                 float64
	quiet                  bool
	busy                   bool
}

var (
	homeCountries = []string{"US", "DE", "FR", "GB", "NL", "SE", "JP", "CA", "AU", "ES", "IT", "BR", "IN", "PL"}
	userAgents    = []string{
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
		"okhttp/4.12.0",
		"python-requests/2.32.3",
		"Go-http-client/2.0",
		"acme-mobile/5.4.1 (Android 14; Pixel 8)",
		"acme-mobile/5.4.1 (iOS 18.1; iPhone15,2)",
	}
	busyRoutes = []route{
		{method: "GET", template: "/v1/search", weight: 20, busy: true},
		{method: "GET", template: "/v1/users/{id}", weight: 14},
		{method: "GET", template: "/v1/products/{id}", weight: 12},
		{method: "GET", template: "/v1/products", weight: 10},
		{method: "POST", template: "/v1/orders", weight: 6},
		{method: "GET", template: "/v1/orders/{id}", weight: 6},
		{method: "GET", template: "/v1/accounts/{id}/balance", weight: 5},
		{method: "PUT", template: "/v1/users/{id}", weight: 3},
		{method: "GET", template: "/v1/notifications", weight: 5},
		{method: "POST", template: "/v1/sessions", weight: 8}, // every app logs in
		{method: "DELETE", template: "/v1/sessions/{id}", weight: 1},
		{method: "GET", template: "/v1/catalog/{id}/reviews", weight: 4},
		{method: "POST", template: "/v1/payments", weight: 2},
		{method: "GET", template: "/v1/payments/{id}", weight: 2},
		{method: "GET", template: "/v1/invoices/{id}", weight: 4},
		{method: "GET", template: "/healthz", weight: 3},
	}
	quietRoutes = []route{
		{method: "GET", template: "/v1/admin/audit-log", quiet: true},
		{method: "POST", template: "/v1/admin/users/{id}/roles", quiet: true},
		{method: "GET", template: "/v1/reports/monthly", quiet: true},
		{method: "POST", template: "/v1/webhooks/test", quiet: true},
	}
	// spikeRoute is the quiet endpoint the quiet_endpoint_spike attack hammers: an export
	// that normal clients never call.
	spikeRoute = route{method: "POST", template: "/v1/reports/export", quiet: true}
	// Routes the decoys use.
	invoiceRoute  = route{method: "GET", template: "/v1/invoices/{id}"}
	jobRoute      = route{method: "GET", template: "/v1/reports/daily-export", quiet: true}
	consoleRoutes = []route{
		{method: "GET", template: "/v1/admin/audit-log"},
		{method: "PUT", template: "/v1/admin/users/{id}/roles"},
	}
	listRoutes   = []route{busyRoutes[0], busyRoutes[3]} // no ids: lists and searches
	removedRoute = route{method: "GET", template: "/v1/notifications"}
	missingRoute = route{method: "GET", template: "/v1/legacy/status"}
	loginRoute   = route{method: "POST", template: "/v1/sessions"}
	// scanPaths are what scanners look for; route_scan sees each as a route.
	scanPaths = []string{"/.env", "/.git/config", "/wp-login.php", "/wp-admin/install.php", "/phpmyadmin/index.php",
		"/admin/config.php", "/actuator/env", "/server-status", "/.aws/credentials", "/config.json", "/backup.sql",
		"/debug/pprof", "/api/swagger.json", "/.DS_Store", "/cgi-bin/test.cgi", "/console", "/solr/admin/info",
		"/vendor/phpunit/eval-stdin.php", "/.well-known/security.txt", "/xmlrpc.php"}
)

// Generate returns the requests of cfg in time order and the attacks injected.
func Generate(cfg Config) ([]Request, []Injected, error) {
	if cfg.Start.IsZero() {
		cfg.Start = DefaultStart
	}
	if cfg.Duration <= 0 {
		cfg.Duration = defaultDuration
	}
	if cfg.Rate <= 0 {
		cfg.Rate = defaultRatePerSec
	}
	if cfg.Clients <= 0 {
		cfg.Clients = defaultClients
	}
	if cfg.Clients < 50 {
		return nil, nil, errors.New("synth: need at least 50 clients")
	}
	if cfg.AttacksFrom <= 0 {
		cfg.AttacksFrom = cfg.Duration * 6 / 10
	}
	if cfg.AttacksFrom >= cfg.Duration {
		return nil, nil, fmt.Errorf("synth: attacks from %s into a run of %s", cfg.AttacksFrom, cfg.Duration)
	}
	for _, a := range cfg.Attacks {
		if !slices.Contains(Attacks, a) {
			return nil, nil, fmt.Errorf("synth: unknown attack %q (want some of %s)", a, strings.Join(Attacks, ", "))
		}
	}
	g := &gen{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	g.population()
	reqs := g.background()
	reqs = append(reqs, g.decoys()...)
	var injected []Injected
	span := float64(cfg.Duration-cfg.AttacksFrom) * 0.9
	for i, kind := range cfg.Attacks {
		// Spread over the rest of the run, each on clients and addresses of its own.
		at := cfg.Start.Add(cfg.AttacksFrom + time.Duration(span*float64(i)/float64(len(cfg.Attacks))))
		r, inj := g.attack(kind, at.Truncate(time.Second), i)
		reqs = append(reqs, r...)
		injected = append(injected, inj)
	}
	slices.SortStableFunc(reqs, func(a, b Request) int { return a.Time.Compare(b.Time) })
	for i := range reqs {
		reqs[i].RequestID = fmt.Sprintf("req-%016x", g.rng.Uint64()) // in time order, so deterministic
	}
	return reqs, injected, nil
}

type gen struct {
	cfg     Config
	rng     *rand.Rand
	clients []client
	routes  []route
	total   float64
	decoy   map[string]*client // the decoys' own clients, by role
	natIP   string
}

func (g *gen) hex(n int) string {
	const digits = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = digits[g.rng.IntN(16)]
	}
	return string(b)
}

func (g *gen) ip() string {
	return fmt.Sprintf("%d.%d.%d.%d", 11+g.rng.IntN(200), g.rng.IntN(256), g.rng.IntN(256), 1+g.rng.IntN(254))
}

func (g *gen) newClient(consumer string) client {
	c := client{
		consumer: consumer,
		apiKey:   "ak_live_" + g.hex(32),
		weight:   math.Exp(g.rng.NormFloat64() * 0.6), // some clients are busier than others
	}
	c.countries = []string{homeCountries[g.rng.IntN(len(homeCountries))]}
	if g.rng.Float64() < 0.1 { // roaming: two home countries, both used from the start
		for {
			other := homeCountries[g.rng.IntN(len(homeCountries))]
			if other != c.countries[0] {
				c.countries = append(c.countries, other)
				break
			}
		}
	}
	ndev := 1
	if g.rng.Float64() < 0.2 { // two devices, each with its own token
		ndev = 2
	}
	for range ndev {
		c.devices = append(c.devices, g.newDevice())
	}
	return c
}

func (g *gen) newDevice() device {
	return device{ua: userAgents[g.rng.IntN(len(userAgents))], id: "dev-" + g.hex(12), token: "eyJ" + g.hex(48), ip: g.ip()}
}

// nat returns how many of the background clients are behind one NAT address (a
// corporate network, a mobile carrier's gateway): the last tenth of them.
func (g *gen) nat() int { return len(g.clients) / 10 }

func (g *gen) population() {
	g.routes = append(slices.Clone(busyRoutes), quietRoutes...)
	for i := range g.routes {
		g.routes[i].host = "api.example.com"
		g.total += g.routes[i].weight
	}
	for i := range g.cfg.Clients {
		g.clients = append(g.clients, g.newClient(fmt.Sprintf("client-%04d", i)))
	}
	// The last clients share the NAT's address.
	g.natIP = g.ip()
	for i := len(g.clients) - g.nat(); i < len(g.clients); i++ {
		for j := range g.clients[i].devices {
			g.clients[i].devices[j].ip = g.natIP
		}
	}
	g.decoy = map[string]*client{}
	for _, role := range []string{"report-exporter", "partner-sync", "batch-runner", "admin-console", "mobile-app", "legacy-app"} {
		c := g.newClient(role)
		g.decoy[role] = &c
	}
}

// dayShape is how busy the hour of day at t is, relative to the day's average: quiet
// at night, busy in office hours (UTC).
func dayShape(t time.Time) float64 {
	h := float64(t.Hour()) + float64(t.Minute())/60
	switch {
	case h < 6:
		return 0.3
	case h < 9:
		return 0.3 + (h-6)/3*1.3
	case h < 17:
		return 1.6
	case h < 21:
		return 1.6 - (h-17)/4
	default:
		return 0.6 - (h-21)/3*0.3
	}
}

const maxShape = 1.6

// background draws Poisson arrivals over the run for every client, the hour of day
// shaping the rate.
func (g *gen) background() []Request {
	var weights []float64
	sum := 0.0
	for _, c := range g.clients {
		sum += c.weight
		weights = append(weights, sum)
	}
	end := g.cfg.Start.Add(g.cfg.Duration)
	half := g.cfg.Start.Add(g.cfg.Duration / 2)
	// A deploy makes one route answer 404 to everyone for ten minutes.
	deploy := g.cfg.Start.Add(g.cfg.Duration * 4 / 10)
	var reqs []Request
	for t := g.cfg.Start; ; {
		t = t.Add(time.Duration(g.rng.ExpFloat64() / (g.cfg.Rate * maxShape) * float64(time.Second)))
		if !t.Before(end) {
			break
		}
		if g.rng.Float64()*maxShape > dayShape(t) {
			continue // thinned: a quieter hour
		}
		ci, _ := slices.BinarySearch(weights, g.rng.Float64()*sum)
		c := &g.clients[min(ci, len(g.clients)-1)]
		r := g.pickRoute()
		if r.busy && t.After(half) && g.rng.Float64() < 0.5 {
			reqs = append(reqs, g.request(t, c, r, 200)) // the busy endpoint doubles
		}
		status := 200
		if r.method == "POST" && g.rng.Float64() < 0.5 {
			status = 201
		}
		if g.rng.Float64() < forbiddenShare {
			status = 403
		}
		if r.template == removedRoute.template && !t.Before(deploy) && t.Before(deploy.Add(10*time.Minute)) {
			status = 404
		}
		reqs = append(reqs, g.request(t, c, r, status))
	}
	// Quiet routes get a trickle of their own, from a few clients; the admin routes from
	// one of them, an operator, whose history of admin work is never far back.
	for _, r := range quietRoutes {
		r.host = "api.example.com"
		rate := quietRoutePerMinut / 60
		for t := g.cfg.Start; ; {
			t = t.Add(time.Duration(g.rng.ExpFloat64() / rate * float64(time.Second)))
			if !t.Before(end) {
				break
			}
			c := &g.clients[g.rng.IntN(10)]
			if strings.Contains(r.template, "/admin/") {
				// Admin routes are an operator's: one client does that work all day.
				c = &g.clients[0]
			}
			reqs = append(reqs, g.request(t, c, r, 200))
		}
	}
	return reqs
}

// decoys returns the normal traffic that looks like an attack to a naive detector,
// one kind of it for each detector of the five added last and for
// quiet_endpoint_spike: see the package documentation.
func (g *gen) decoys() []Request {
	var reqs []Request
	start, end := g.cfg.Start, g.cfg.Start.Add(g.cfg.Duration)
	every := func(period, offset time.Duration, f func(n int, t time.Time)) {
		n := 0
		for t := start.Add(offset); t.Before(end); t = t.Add(period) {
			f(n, t)
			n++
		}
	}
	add := func(r Request) {
		if r.Time.Before(end) {
			reqs = append(reqs, r)
		}
	}
	// quiet_endpoint_spike: an export job, 25 requests in half a minute every half
	// hour: half a request a minute on average, so each run is improbable under the
	// route's rate, but no run is larger than the one before.
	ex := g.decoy["report-exporter"]
	every(30*time.Minute, 5*time.Minute, func(_ int, t time.Time) {
		for k := range 25 {
			add(g.requestFrom(t.Add(time.Duration(k)*1200*time.Millisecond), ex, ex.devices[0], jobRoute, 200))
		}
	})
	// object_enumeration and client_volume_spike: a partner syncing 400 invoices
	// every half hour; and a batch client's hourly run of 300 list requests. Both
	// also make a request every few minutes in between.
	partner, batch := g.decoy["partner-sync"], g.decoy["batch-runner"]
	every(30*time.Minute, 2*time.Minute, func(n int, t time.Time) {
		for k := range 400 {
			r := g.requestFrom(t.Add(time.Duration(k)*600*time.Millisecond), partner, partner.devices[0], invoiceRoute, 200)
			r.Path = fmt.Sprintf("/v1/invoices/%d", 20000+(k*7+n*131)%5000)
			add(r)
		}
	})
	every(time.Hour, 10*time.Minute, func(_ int, t time.Time) {
		for k := range 300 {
			add(g.requestFrom(t.Add(time.Duration(k)*time.Second), batch, batch.devices[0], listRoutes[k%2], 200))
		}
	})
	every(4*time.Minute, 0, func(_ int, t time.Time) {
		add(g.requestFrom(t, partner, partner.devices[0], busyRoutes[3], 200))
		add(g.requestFrom(t.Add(time.Minute), batch, batch.devices[0], busyRoutes[0], 200))
	})
	// privilege_anomaly: an admin console's work, every twenty minutes.
	console := g.decoy["admin-console"]
	every(20*time.Minute, time.Minute, func(_ int, t time.Time) {
		for k := range 5 {
			add(g.requestFrom(t.Add(time.Duration(k)*20*time.Second), console, console.devices[0], consoleRoutes[k%2], 200))
		}
	})
	// auth_failure_spray: a mobile app retrying its expired token thirty times, then
	// getting a new one; and, behind the NAT, a few clients a half hour whose tokens
	// expired.
	app := g.decoy["mobile-app"]
	every(45*time.Minute, 20*time.Minute, func(_ int, t time.Time) {
		for k := range 30 {
			add(g.requestFrom(t.Add(time.Duration(k)*4*time.Second), app, app.devices[0], loginRoute, 401))
		}
		app.devices[0].token = "eyJ" + g.hex(48)
		for k := range 10 {
			add(g.requestFrom(t.Add(2*time.Minute+time.Duration(k)*10*time.Second), app, app.devices[0], busyRoutes[8], 200))
		}
	})
	every(30*time.Minute, 15*time.Minute, func(_ int, t time.Time) {
		for k := range 6 {
			c := &g.clients[len(g.clients)-g.nat()+g.rng.IntN(g.nat())]
			d := c.devices[0]
			d.token = "eyJ" + g.hex(48) // expired
			add(g.requestFrom(t.Add(time.Duration(k)*time.Minute), c, d, busyRoutes[1], 401))
		}
	})
	// route_scan: an app polling an endpoint that was removed, every half minute (the
	// deploy that answers 404 to everyone is in the background).
	legacy := g.decoy["legacy-app"]
	every(30*time.Second, 0, func(_ int, t time.Time) {
		add(g.requestFrom(t, legacy, legacy.devices[0], missingRoute, 404))
	})
	return reqs
}

func (g *gen) pickRoute() route {
	x := g.rng.Float64() * g.total
	for _, r := range g.routes {
		if x < r.weight {
			return r
		}
		x -= r.weight
	}
	return g.routes[0]
}

func (g *gen) fillPath(template string) string {
	var b strings.Builder
	for i, part := range strings.Split(template, "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		if part == "{id}" {
			if g.rng.IntN(3) == 0 {
				fmt.Fprintf(&b, "%s-%s-4%s-a%s-%s", g.hex(8), g.hex(4), g.hex(3), g.hex(3), g.hex(12))
			} else {
				fmt.Fprintf(&b, "%d", 1+g.rng.IntN(999999))
			}
			continue
		}
		b.WriteString(part)
	}
	return b.String()
}

func (g *gen) request(t time.Time, c *client, r route, status int) Request {
	return g.requestFrom(t, c, c.devices[g.rng.IntN(len(c.devices))], r, status)
}

// requestFrom is a request of client c from device d.
func (g *gen) requestFrom(t time.Time, c *client, d device, r route, status int) Request {
	req := Request{
		Time:      t.Truncate(time.Millisecond),
		ClientIP:  d.ip,
		Country:   c.countries[g.rng.IntN(len(c.countries))],
		Method:    r.method,
		Host:      cmp.Or(r.host, "api.example.com"),
		Path:      g.fillPath(r.template),
		Route:     r.template,
		Status:    status,
		Action:    "ALLOW",
		RuleID:    "Default_Action",
		UserAgent: d.ua,
		APIKey:    c.apiKey,
		Token:     d.token,
		DeviceID:  d.id,
		Consumer:  c.consumer,
	}
	if r.template == "/v1/search" {
		req.Query = "q=" + g.hex(6)
	}
	if status == 403 {
		req.Action, req.RuleID = "BLOCK", "AWS-AWSManagedRulesCommonRuleSet"
	}
	return req
}

// stranger is a request from someone who is no client: an address of its own, no
// device id, and an API key and token that are no client's.
func (g *gen) stranger(t time.Time, ip, key, token, ua string, r route, status int) Request {
	c := client{apiKey: key, countries: []string{"NL"}}
	return g.requestFrom(t, &c, device{ua: ua, ip: ip, token: token}, r, status)
}

// attackTargets returns the clients attacks are aimed at: the busiest single-country
// ones, so that each is an established key (the detectors only judge keys they know
// well), skipping clients 0-9, which feed the quiet routes, and those behind the NAT.
func (g *gen) attackTargets() []*client {
	var cs []*client
	for i := 10; i < len(g.clients)-g.nat(); i++ {
		if len(g.clients[i].countries) == 1 {
			cs = append(cs, &g.clients[i])
		}
	}
	slices.SortStableFunc(cs, func(a, b *client) int { return cmp.Compare(b.weight, a.weight) })
	return cs
}

// attack generates one attack of kind starting at at. Each attack picks its own client
// (index i keeps them apart) among the established, single-country ones.
func (g *gen) attack(kind string, at time.Time, i int) ([]Request, Injected) {
	targets := g.attackTargets()
	c := targets[i]
	if kind == AttackVolumeSpike {
		// A client of middling traffic: the busiest ones' peaks are too high for a
		// few hundred requests to be a jump.
		c = targets[min(len(targets)/2+i, len(targets)-1)]
	}
	inj := Injected{Kind: kind, Start: at, Client: c.consumer, APIKey: c.apiKey, Token: c.devices[0].token, ClientIP: c.devices[0].ip}
	var reqs []Request
	switch kind {
	case AttackNewCountry:
		// The client's API key turns up from a country it never used, on the attacker's
		// own device and session: a leaked key.
		country := "KP"
		if c.countries[0] == country {
			country = "RU"
		}
		attacker := device{ua: "python-requests/2.31.0", id: "dev-" + g.hex(12), token: "eyJ" + g.hex(48), ip: g.ip()}
		for k := range 12 {
			r := g.requestFrom(at.Add(time.Duration(k)*17*time.Second), c, attacker, busyRoutes[1], 200)
			r.Country = country
			reqs = append(reqs, r)
		}
		inj.Country, inj.ClientIP = country, attacker.ip
	case AttackTokenReuse:
		// One token replayed from four devices within minutes: a stolen session.
		stolen := c.devices[0]
		for k := range 16 {
			dev := device{ua: userAgents[(k%4+3)%len(userAgents)], id: fmt.Sprintf("dev-stolen-%d", k%4), token: stolen.token, ip: g.ip()}
			r := g.requestFrom(at.Add(time.Duration(k)*20*time.Second), c, dev, busyRoutes[5], 200)
			r.Country = c.countries[0]
			reqs = append(reqs, r)
		}
	case AttackForbidden:
		// Permission probing: one client tries a dozen accounts' balances again and
		// again and is refused each time.
		for k := range 45 {
			r := g.requestFrom(at.Add(time.Duration(k)*1300*time.Millisecond), c, c.devices[0], busyRoutes[6], 403)
			r.Path = fmt.Sprintf("/v1/accounts/%d/balance", 100000+k%12)
			reqs = append(reqs, r)
		}
		inj.Route = busyRoutes[6].method + " " + busyRoutes[6].template
	case AttackQuietSpike:
		// A quiet export suddenly called in a loop: data exfiltration.
		for k := range 60 {
			reqs = append(reqs, g.requestFrom(at.Add(time.Duration(k)*4*time.Second), c, c.devices[0], spikeRoute, 200))
		}
		inj.Route = spikeRoute.method + " " + spikeRoute.template
	case AttackObjectEnumeration:
		// Broken object level authorisation: a client walks invoice ids, and some of
		// the invoices it gets are other customers'.
		for k := range 100 {
			status := 404
			if k%3 == 0 {
				status = 200
			}
			r := g.requestFrom(at.Add(time.Duration(k)*800*time.Millisecond), c, c.devices[0], invoiceRoute, status)
			r.Path = fmt.Sprintf("/v1/invoices/%d", 700000+k)
			reqs = append(reqs, r)
		}
		inj.Route = invoiceRoute.method + " " + invoiceRoute.template
	case AttackAuthSpray:
		// Credential stuffing from one address: forty keys and tokens that do not work.
		ip := g.ip()
		keys, tokens := make([]string, 40), make([]string, 40)
		for k := range keys {
			keys[k], tokens[k] = "ak_live_"+g.hex(32), "eyJ"+g.hex(48)
		}
		for k := range 60 {
			j := k % len(keys)
			reqs = append(reqs, g.stranger(at.Add(time.Duration(k)*2*time.Second), ip, keys[j], tokens[j], "python-requests/2.31.0", loginRoute, 401))
		}
		inj.Client, inj.ClientIP, inj.APIKey, inj.Token = "", ip, "", ""
	case AttackPrivilege:
		// A standard account changing roles after a mass-assignment bug made it admin.
		for k := range 6 {
			reqs = append(reqs, g.requestFrom(at.Add(time.Duration(k)*15*time.Second), c, c.devices[0], quietRoutes[1], 201))
		}
		inj.Route = quietRoutes[1].method + " " + quietRoutes[1].template
	case AttackVolumeSpike:
		// A client scraping the catalogue: many times its usual requests in minutes.
		for k := range 600 {
			reqs = append(reqs, g.requestFrom(at.Add(time.Duration(k)*200*time.Millisecond), c, c.devices[0], listRoutes[k%2], 200))
		}
	case AttackRouteScan:
		// A scanner looking for what it can find; the WAF blocks some of it.
		ip := g.ip()
		for k := range 80 {
			p := scanPaths[k%len(scanPaths)]
			if k >= len(scanPaths) {
				p = fmt.Sprintf("/%s%s", []string{"old", "bak", "test", "dev"}[k/len(scanPaths)%4], p)
			}
			status := 404
			if k%10 == 0 {
				status = 403
			}
			// Junk credentials, new for each request, as fuzzing scanners send.
			r := g.stranger(at.Add(time.Duration(k)*1500*time.Millisecond), ip, "ak_"+g.hex(16), "eyJ"+g.hex(24), "Mozilla/5.0 zgrab/0.x",
				route{method: "GET", template: p}, status)
			reqs = append(reqs, r)
		}
		inj.Client, inj.ClientIP, inj.APIKey, inj.Token = "", ip, "", ""
	}
	inj.Count = len(reqs)
	inj.End = reqs[len(reqs)-1].Time
	return reqs, inj
}

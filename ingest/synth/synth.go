// Package synth generates realistic API traffic with known attacks injected, written in
// the vendor log formats gatewatch reads. It drives `gatewatch generate` and `demo`, and
// gives tests a source of traffic whose right answer is known.
//
// The background is a population of API clients: each has an API key, one or two
// devices each holding its own bearer token, a home country (roaming clients have two),
// and a mix of routes it calls, some of them busy and some quiet. A small share of
// requests is refused with 403, and one busy endpoint doubles its traffic halfway
// through. Attacks are the patterns the detectors exist for, one of each requested kind.
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
	AttackNewCountry   = "new_country"
	AttackTokenReuse   = "token_reuse"
	AttackForbidden    = "forbidden_burst"
	AttackQuietSpike   = "quiet_endpoint_spike"
	defaultClients     = 300
	defaultRatePerSec  = 20.0
	defaultDuration    = 3 * time.Hour
	forbiddenShare     = 0.01 // background requests refused with 403
	quietRoutePerMinut = 0.2  // calls per minute on each quiet route
)

// Attacks lists every attack kind, in the order they are injected.
var Attacks = []string{AttackNewCountry, AttackTokenReuse, AttackForbidden, AttackQuietSpike}

// DefaultStart is where generated time begins unless Config.Start is set: a fixed
// instant, so output never depends on the clock.
var DefaultStart = time.Date(2026, 11, 2, 6, 0, 0, 0, time.UTC)

// Config says what to generate. Zero fields take the documented defaults.
type Config struct {
	Start    time.Time     // zero: DefaultStart
	Duration time.Duration // zero: 3h
	Rate     float64       // background requests per second; zero: 20
	Clients  int           // zero: 300
	Seed     uint64
	Attacks  []string // attack kinds to inject; nil: none
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
// the detectors found it.
type Injected struct {
	Kind    string    `json:"kind"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Client  string    `json:"client"` // the consumer id of the client involved
	Route   string    `json:"route,omitempty"`
	Country string    `json:"country,omitempty"`
	Count   int       `json:"requests"`
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
		{method: "POST", template: "/v1/sessions", weight: 2},
		{method: "DELETE", template: "/v1/sessions/{id}", weight: 1},
		{method: "GET", template: "/v1/catalog/{id}/reviews", weight: 4},
		{method: "POST", template: "/v1/payments", weight: 2},
		{method: "GET", template: "/v1/payments/{id}", weight: 2},
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
	spikeRoute = route{method: "POST", template: "/v1/admin/export", quiet: true}
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
	if cfg.Clients < 10 {
		return nil, nil, errors.New("synth: need at least 10 clients")
	}
	for _, a := range cfg.Attacks {
		if !slices.Contains(Attacks, a) {
			return nil, nil, fmt.Errorf("synth: unknown attack %q (want some of %s)", a, strings.Join(Attacks, ", "))
		}
	}
	g := &gen{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	g.population()
	reqs := g.background()
	var injected []Injected
	for i, kind := range cfg.Attacks {
		// Attacks start after 60% of the run, once every detector has learnt its
		// baselines, and are spaced so that no two overlap.
		at := cfg.Start.Add(time.Duration(float64(cfg.Duration) * (0.6 + 0.35*float64(i)/float64(len(cfg.Attacks)))))
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

func (g *gen) population() {
	g.routes = append(slices.Clone(busyRoutes), quietRoutes...)
	for i := range g.routes {
		g.routes[i].host = "api.example.com"
		g.total += g.routes[i].weight
	}
	for i := range g.cfg.Clients {
		c := client{
			consumer: fmt.Sprintf("client-%04d", i),
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
			c.devices = append(c.devices, device{
				ua:    userAgents[g.rng.IntN(len(userAgents))],
				id:    "dev-" + g.hex(12),
				token: "eyJ" + g.hex(48),
				ip:    g.ip(),
			})
		}
		g.clients = append(g.clients, c)
	}
}

// background draws Poisson arrivals over the run for every client.
func (g *gen) background() []Request {
	var weights []float64
	sum := 0.0
	for _, c := range g.clients {
		sum += c.weight
		weights = append(weights, sum)
	}
	end := g.cfg.Start.Add(g.cfg.Duration)
	half := g.cfg.Start.Add(g.cfg.Duration / 2)
	var reqs []Request
	for t := g.cfg.Start; ; {
		t = t.Add(time.Duration(g.rng.ExpFloat64() / g.cfg.Rate * float64(time.Second)))
		if !t.Before(end) {
			break
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
		reqs = append(reqs, g.request(t, c, r, status))
	}
	// Quiet routes get a trickle of their own, from a few clients.
	for _, r := range quietRoutes {
		r.host = "api.example.com"
		rate := quietRoutePerMinut / 60
		for t := g.cfg.Start; ; {
			t = t.Add(time.Duration(g.rng.ExpFloat64() / rate * float64(time.Second)))
			if !t.Before(end) {
				break
			}
			c := &g.clients[g.rng.IntN(10)]
			reqs = append(reqs, g.request(t, c, r, 200))
		}
	}
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

// attackTargets returns the clients attacks are aimed at: the busiest single-country
// ones, so that each is an established key (the detectors only judge keys they know
// well), skipping clients 0-9, which feed the quiet routes.
func (g *gen) attackTargets() []*client {
	var cs []*client
	for i := 10; i < len(g.clients); i++ {
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
	c := g.attackTargets()[i]
	inj := Injected{Kind: kind, Start: at, Client: c.consumer}
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
		inj.Country = country
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
		// Object enumeration: one client walks account ids and is refused again and again.
		for k := range 45 {
			r := g.requestFrom(at.Add(time.Duration(k)*1300*time.Millisecond), c, c.devices[0], busyRoutes[6], 403)
			r.Path = fmt.Sprintf("/v1/accounts/%d/balance", 100000+k)
			reqs = append(reqs, r)
		}
		inj.Route = busyRoutes[6].template
	case AttackQuietSpike:
		// A quiet admin export suddenly called in a loop: data exfiltration.
		for k := range 60 {
			r := g.requestFrom(at.Add(time.Duration(k)*4*time.Second), c, c.devices[0], spikeRoute, 200)
			reqs = append(reqs, r)
		}
		inj.Route = spikeRoute.method + " " + spikeRoute.template
	}
	inj.Count = len(reqs)
	inj.End = reqs[len(reqs)-1].Time
	return reqs, inj
}

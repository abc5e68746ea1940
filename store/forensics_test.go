package store

import (
	"bufio"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// forensicsFile holds the analyst's queries; TestForensicQueries keeps them working.
const forensicsFile = "../deploy/clickhouse/forensics.sql"

// parseForensics returns the queries of the file by name: each starts at a
// "-- name: NAME" line and ends at a line ending with ";".
func parseForensics(t *testing.T, file string) map[string]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	var name string
	var q strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if n, ok := strings.CutPrefix(line, "-- name: "); ok {
			if name != "" {
				t.Fatalf("%s: query %s does not end with ; before %s", file, name, n)
			}
			name = strings.TrimSpace(n)
			if _, dup := out[name]; dup {
				t.Fatalf("%s: two queries named %s", file, name)
			}
			continue
		}
		if name == "" {
			continue
		}
		q.WriteString(line)
		q.WriteByte('\n')
		if trimmed := strings.TrimSpace(line); strings.HasSuffix(trimmed, ";") && !strings.HasPrefix(trimmed, "--") {
			out[name] = strings.TrimSuffix(strings.TrimSpace(q.String()), ";")
			name = ""
			q.Reset()
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if name != "" {
		t.Fatalf("%s: query %s does not end with ;", file, name)
	}
	return out
}

var queryParam = regexp.MustCompile(`\{(\w+):(\w+)\}`)

// bindLiterals replaces each {name:Type} in q with params[name] as a literal, the way
// the file tells an analyst on 18.16 to do it.
func bindLiterals(q string, params map[string]string) (string, error) {
	var errs []string
	out := queryParam.ReplaceAllStringFunc(q, func(m string) string {
		sub := queryParam.FindStringSubmatch(m)
		v, ok := params[sub[1]]
		if !ok {
			errs = append(errs, "no value for "+sub[1])
			return m
		}
		switch sub[2] {
		case "String":
			return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
		case "UInt32":
			if _, err := strconv.ParseUint(v, 10, 32); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q is not a UInt32", sub[1], v))
			}
			return v
		}
		errs = append(errs, "unknown parameter type "+sub[2])
		return m
	})
	if len(errs) > 0 {
		return "", fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return out, nil
}

// runForensic runs q with params: as query parameters where the server has them, else
// bound as literals. It returns the rows as column name → value.
func runForensic(t *testing.T, conn driver.Conn, native bool, q string, params map[string]string) []map[string]any {
	t.Helper()
	ctx := testContext(t)
	if native {
		ctx = clickhouse.Context(ctx, clickhouse.WithParameters(clickhouse.Parameters(params)))
	} else {
		var err error
		if q, err = bindLiterals(q, params); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := conn.Query(ctx, q)
	if err != nil {
		t.Fatalf("%v\n%s", err, q)
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	var out []map[string]any
	for rows.Next() {
		dst := make([]any, len(types))
		for i, ct := range types {
			dst[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dst...); err != nil {
			t.Fatal(err)
		}
		row := map[string]any{}
		for i, ct := range types {
			row[ct.Name()] = reflect.ValueOf(dst[i]).Elem().Interface()
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// column returns one column of rows, each value printed with %v (times as UTC
// "2006-01-02 15:04:05").
func column(rows []map[string]any, name string) []string {
	var out []string
	for _, r := range rows {
		v := r[name]
		if tm, ok := v.(time.Time); ok {
			v = tm.UTC().Format(time.DateTime)
		}
		out = append(out, fmt.Sprint(v))
	}
	return out
}

func TestForensicQueries(t *testing.T) {
	queries := parseForensics(t, forensicsFile)
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	c := startClickHouse(t, testConfig(t, addr, db), prometheus.NewRegistry())
	ctx := testContext(t)
	conn := testConn(t, addr, db)
	native := conn.QueryRow(clickhouse.Context(ctx, clickhouse.WithParameters(clickhouse.Parameters{"p": "7"})), "SELECT {p:UInt8}").Scan(new(uint8)) == nil
	t.Logf("query parameters: server-side %v", native)

	// Traffic: key k-alpha (token tf-alpha) from DE on day 1, DE and BR on day 2, with
	// one 403; a keyless client IP with 403s; a token used without its key; a noisy
	// other key; a quiet route that gets hammered at the alert.
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	day2 := t0.Add(24 * time.Hour)
	alert := t0.Add(time.Hour + 5*time.Second)
	var evs []ingest.Event
	add := func(at time.Time, id string, f func(*ingest.Event)) {
		ev := ingest.Event{Time: at, Source: "awswaf", Method: "GET", Host: "api.example.com", Route: "/v1/items", Path: "/v1/items",
			Status: 200, Country: "US", ClientIP: "203.0.113.9", Device: "d1", UserAgent: "ua", RequestID: id}
		f(&ev)
		evs = append(evs, ev)
	}
	alpha := func(country string, status int) func(*ingest.Event) {
		return func(ev *ingest.Event) {
			ev.ClientKey, ev.TokenFP, ev.Country, ev.Status = "k-alpha", "tf-alpha", country, status
		}
	}
	for i := range 5 {
		status := 200
		if i == 3 {
			status = 403
		}
		add(t0.Add(time.Duration(i)*10*time.Second+time.Duration(i)*time.Millisecond), fmt.Sprintf("a1-%d", i), alpha("DE", status))
	}
	for i := range 3 {
		add(day2.Add(time.Duration(i)*time.Minute), fmt.Sprintf("a2-de-%d", i), alpha("DE", 200))
	}
	for i := range 2 {
		add(day2.Add(time.Duration(i)*time.Minute+30*time.Second), fmt.Sprintf("a2-br-%d", i), alpha("BR", 200))
	}
	add(t0.Add(30*time.Minute), "token-only", func(ev *ingest.Event) { ev.TokenFP = "tf-alpha" })
	for i := range 6 {
		status := 403
		if i >= 4 {
			status = 200
		}
		add(t0.Add(time.Duration(i)*time.Second), fmt.Sprintf("ip-%d", i), func(ev *ingest.Event) {
			ev.ClientIP, ev.Status = "198.51.100.7", status
		})
	}
	for i := range 50 {
		add(t0.Add(time.Duration(i)*time.Second), fmt.Sprintf("beta-%d", i), func(ev *ingest.Event) {
			ev.ClientKey, ev.TokenFP, ev.Status = "k-beta", "tf-beta", []int{200, 403}[i%2]
		})
	}
	export := func(ev *ingest.Event) { ev.Route, ev.Path = "/v1/export/{id}", "/v1/export/7" }
	add(alert.Add(-10*time.Minute), "export-quiet", export)
	for i := range 40 {
		at := alert.Add(time.Duration(i) * time.Second) // all in the alert's minute
		add(at, fmt.Sprintf("export-%d", i), func(ev *ingest.Event) {
			export(ev)
			if i%4 == 0 {
				ev.Status = 403
			}
		})
	}
	slices.SortStableFunc(evs, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	if err := c.ArchiveEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// k-alpha's baseline: FR once, forgotten since.
	kb := func(countries ...string) detectors.Baselines {
		k := detectors.KeyBaseline{Key: "k-alpha", FirstSeen: t0, Events: 10}
		for _, cc := range countries {
			k.Countries = append(k.Countries, detectors.CountryBaseline{Country: cc, FirstSeen: t0, LastSeen: day2, Events: 5})
		}
		return detectors.Baselines{Keys: []detectors.KeyBaseline{k}}
	}
	for _, u := range []detectors.Baselines{kb("DE", "FR"), kb("BR", "DE")} {
		if err := c.UpdateBaselines(ctx, u); err != nil {
			t.Fatal(err)
		}
	}

	// The alert history: a burst alert in two versions, delivered to slack and parked
	// for the SIEM; a new_country alert on day 2 still pending.
	burst := detectors.Alert{ID: "al-burst", Detector: detectors.ForbiddenBurst, Severity: detectors.SeverityHigh, Key: "k-beta",
		FirstSeen: t0, LastSeen: t0.Add(time.Minute), Summary: "v1"}
	burst2 := burst
	burst2.LastSeen, burst2.Summary = t0.Add(2*time.Minute), "v2"
	country := detectors.Alert{ID: "al-country", Detector: detectors.NewCountry, Severity: detectors.SeverityMedium, Key: "k-alpha",
		FirstSeen: day2, LastSeen: day2, Summary: "BR"}
	if err := c.RecordAlerts(ctx, []detectors.Alert{burst2, burst, country}); err != nil {
		t.Fatal(err)
	}
	dl := func(rcv string, a detectors.Alert, st alerting.DeliveryState) alerting.Delivery {
		return alerting.Delivery{DeliveryKey: alerting.KeyOf(rcv, &a), Alert: a, State: st, Attempts: 1, Done: a.LastSeen}
	}
	for _, ds := range [][]alerting.Delivery{
		{dl("slack", burst, alerting.Delivered), dl("slack", burst2, alerting.Delivered), dl("siem", burst2, alerting.Failed)},
		{dl("slack", country, alerting.Pending)},
	} {
		if err := c.RecordDeliveries(ctx, ds); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Alerts(ctx, t0, day2.Add(time.Hour), ""); err != nil { // writes the history
		t.Fatal(err)
	}

	window := map[string]string{"from": "2026-03-01 12:00:00", "to": "2026-03-03 00:00:00"}
	with := func(extra map[string]string) map[string]string {
		p := maps.Clone(window)
		maps.Copy(p, extra)
		return p
	}
	ids := func(prefix string) []string {
		var out []string
		for _, ev := range evs {
			if strings.HasPrefix(ev.RequestID, prefix) {
				out = append(out, ev.RequestID)
			}
		}
		return out
	}
	around := map[string]string{"method": "GET", "route": "/v1/export/{id}", "at": alert.Format(time.DateTime), "before_minutes": "15", "after_minutes": "5"}
	checks := map[string]func(t *testing.T, q string){
		"requests_of_key": func(t *testing.T, q string) {
			got := runForensic(t, conn, native, q, with(map[string]string{"key": "k-alpha"}))
			if want := sortedByTime(evs, ids("a1-"), ids("a2-")); !slices.Equal(column(got, "request_id"), want) {
				t.Errorf("by key: request ids %v, want %v", column(got, "request_id"), want)
			}
			got = runForensic(t, conn, native, q, map[string]string{"key": "tf-alpha", "from": "2026-03-01 12:00:00", "to": "2026-03-01 13:00:00"})
			if want := sortedByTime(evs, ids("a1-"), ids("token-only")); !slices.Equal(column(got, "request_id"), want) {
				t.Errorf("by token fingerprint within the first hour: request ids %v, want %v", column(got, "request_id"), want)
			}
			if got := column(got, "ms"); got[1] != "1" {
				t.Errorf("milliseconds %v, want the second request at .001", got)
			}
		},
		"countries_of_key": func(t *testing.T, q string) {
			got := runForensic(t, conn, native, q, with(map[string]string{"key": "k-alpha"}))
			rows := zipColumns(column(got, "day"), column(got, "country"), column(got, "requests"), column(got, "first_seen"))
			want := []string{
				"2026-03-01 00:00:00 DE 5 2026-03-01 12:00:00",
				"2026-03-02 00:00:00 BR 2 2026-03-02 12:00:30",
				"2026-03-02 00:00:00 DE 3 2026-03-02 12:00:00",
			}
			if !slices.Equal(rows, want) {
				t.Errorf("countries by day\n got %q\nwant %q", rows, want)
			}
		},
		"baseline_countries_of_key": func(t *testing.T, q string) {
			got := runForensic(t, conn, native, q, map[string]string{"key": "k-alpha"})
			if rows := zipColumns(column(got, "country"), column(got, "events")); !slices.Equal(rows, []string{"BR 5", "DE 5"}) {
				t.Errorf("baseline countries %q, want BR and DE (FR forgotten)", rows)
			}
		},
		"forbidden_of_client": func(t *testing.T, q string) {
			got := runForensic(t, conn, native, q, with(map[string]string{"client": "198.51.100.7"}))
			if want := []string{"ip-0", "ip-1", "ip-2", "ip-3"}; !slices.Equal(column(got, "request_id"), want) {
				t.Errorf("403s of an IP: %v, want %v", column(got, "request_id"), want)
			}
			got = runForensic(t, conn, native, q, with(map[string]string{"client": "k-alpha"}))
			if want := []string{"a1-3"}; !slices.Equal(column(got, "request_id"), want) {
				t.Errorf("403s of a key: %v, want %v", column(got, "request_id"), want)
			}
		},
		"route_around_alert": func(t *testing.T, q string) {
			got := runForensic(t, conn, native, q, around)
			var want []string
			for i := -15; i < 5; i++ {
				m := alert.Truncate(time.Minute).Add(time.Duration(i) * time.Minute)
				n, f := 0, 0
				switch {
				case i == -10:
					n = 1
				case i == 0: // the alert's minute: 13:00:05 to 13:00:44
					n, f = 40, 10
				}
				phase := "after"
				if i < 0 {
					phase = "before"
				}
				want = append(want, fmt.Sprintf("%s %s %d %d", m.Format(time.DateTime), phase, n, f))
			}
			if rows := zipColumns(column(got, "minute"), column(got, "phase"), column(got, "requests"), column(got, "forbidden")); !slices.Equal(rows, want) {
				t.Errorf("minutes around the alert\n got %q\nwant %q", rows, want)
			}
		},
		"alerts_in_window": func(t *testing.T, q string) {
			got := runForensic(t, conn, native, q, with(map[string]string{"detector": ""}))
			rows := zipColumns(column(got, "id"), column(got, "summary"), column(got, "receiver"), column(got, "state"))
			want := []string{"al-burst v2 siem failed", "al-burst v2 slack delivered", "al-country BR slack pending"}
			if !slices.Equal(rows, want) {
				t.Errorf("alerts in the window\n got %q\nwant %q", rows, want)
			}
			got = runForensic(t, conn, native, q, map[string]string{"from": "2026-03-02 00:00:00", "to": "2026-03-03 00:00:00", "detector": detectors.NewCountry})
			if ids := column(got, "id"); !slices.Equal(ids, []string{"al-country"}) {
				t.Errorf("new_country alerts of day 2: %v, want al-country", ids)
			}
		},
		"route_before_after": func(t *testing.T, q string) {
			got := runForensic(t, conn, native, q, around)
			rows := zipColumns(column(got, "phase"), column(got, "total_requests"), column(got, "per_minute"), column(got, "total_forbidden"), column(got, "active_minutes"))
			if want := []string{"before 1 0.06666666666666667 0 1", "after 40 8 10 1"}; !slices.Equal(rows, want) {
				t.Errorf("before and after\n got %q\nwant %q", rows, want)
			}
		},
	}
	if got, want := slices.Sorted(maps.Keys(queries)), slices.Sorted(maps.Keys(checks)); !slices.Equal(got, want) {
		t.Fatalf("%s holds queries %v; the test checks %v", forensicsFile, got, want)
	}
	for name, check := range checks {
		t.Run(name, func(t *testing.T) { check(t, queries[name]) })
	}
}

// sortedByTime returns the request ids in the order of evs (time order).
func sortedByTime(evs []ingest.Event, groups ...[]string) []string {
	want := map[string]bool{}
	for _, g := range groups {
		for _, id := range g {
			want[id] = true
		}
	}
	var out []string
	for _, ev := range evs {
		if want[ev.RequestID] {
			out = append(out, ev.RequestID)
		}
	}
	return out
}

// zipColumns joins the i-th values of each column with spaces.
func zipColumns(cols ...[]string) []string {
	var out []string
	for i := range cols[0] {
		var parts []string
		for _, c := range cols {
			parts = append(parts, c[i])
		}
		out = append(out, strings.Join(parts, " "))
	}
	return out
}

func TestBindLiterals(t *testing.T) {
	got, err := bindLiterals("SELECT {s:String}, {n:UInt32}, {s:String}", map[string]string{"s": `it's a \ test`, "n": "42"})
	if want := `SELECT 'it\'s a \\ test', 42, 'it\'s a \\ test'`; err != nil || got != want {
		t.Errorf("bindLiterals = %q, %v; want %q", got, err, want)
	}
	for _, c := range []struct {
		q      string
		params map[string]string
	}{
		{"SELECT {missing:String}", nil},
		{"SELECT {n:UInt32}", map[string]string{"n": "1; DROP TABLE events"}},
		{"SELECT {f:Float64}", map[string]string{"f": "1"}},
	} {
		if _, err := bindLiterals(c.q, c.params); err == nil {
			t.Errorf("bindLiterals(%q, %v) succeeded", c.q, c.params)
		}
	}
}

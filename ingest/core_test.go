package ingest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseTimeBytes(t *testing.T) {
	utc := func(s string) time.Time {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			panic(err)
		}
		return t.UTC()
	}
	for _, tc := range []struct {
		in   string
		want time.Time // zero: an error
	}{
		{"2022-09-08T12:51:05.656Z", utc("2022-09-08T12:51:05.656Z")},
		{"2022-09-08T12:51:05Z", utc("2022-09-08T12:51:05Z")},
		{"2022-09-08 12:51:05.123456789+02:00", utc("2022-09-08T10:51:05.123456789Z")},
		{"2022-09-08T12:51:05+0530", utc("2022-09-08T07:21:05Z")},
		{"2022-09-08T12:51:05", utc("2022-09-08T12:51:05Z")}, // no zone: UTC
		{"25/Oct/2016:14:49:33 +0200", utc("2016-10-25T12:49:33Z")},
		{"09/Jun/2023:12:54:08 -0000", utc("2023-06-09T12:54:08Z")},
		{"1653485126", utc("2022-05-25T13:25:26Z")},              // seconds
		{"1576280412771", utc("2019-12-13T23:40:12.771Z")},       // milliseconds
		{"1625754264676000", utc("2021-07-08T14:24:24.676Z")},    // microseconds
		{"1625754264676000000", utc("2021-07-08T14:24:24.676Z")}, // nanoseconds
		{"1625754264.676", utc("2021-07-08T14:24:24.676Z")},      // nginx $msec
		{"2022-02-30T10:00:00Z", time.Time{}},                    // no such day
		{"2022-13-01T10:00:00Z", time.Time{}},                    // no such month
		{"25/Foo/2016:14:49:33 +0200", time.Time{}},              // no such month
		{"25/Oct/2016:14:49:33 +2500", time.Time{}},              // no such offset
		{"yesterday", time.Time{}},
		{"2022-09-08T12:51:05.Z", time.Time{}},
		{"0", time.Time{}},
		{"99999999999999999999999", time.Time{}},
	} {
		got, err := parseTimeBytes([]byte(tc.in))
		switch {
		case tc.want.IsZero() && err == nil:
			t.Errorf("parseTimeBytes(%q) = %v, want an error", tc.in, got)
		case !tc.want.IsZero() && err != nil:
			t.Errorf("parseTimeBytes(%q): %v", tc.in, err)
		case !tc.want.IsZero() && !got.Equal(tc.want):
			t.Errorf("parseTimeBytes(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if _, err := parseTimeBytes([]byte("-")); err != errNoTime {
		t.Errorf(`parseTimeBytes("-") = %v, want errNoTime`, err)
	}
}

func TestSetTimeRejectsAbsurdTimes(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := now
	b := newBase(ParserOptions{Secret: RandomTokenSecret(), MaxClockSkew: time.Hour, Now: func() time.Time { return clock }})
	var ev Event
	for _, tc := range []struct {
		t      time.Time
		reason string
	}{
		{now, ""},
		{now.Add(59 * time.Minute), ""},
		{now.Add(2 * time.Hour), ReasonBadTimestamp},
		{time.Date(1989, 12, 31, 0, 0, 0, 0, time.UTC), ReasonBadTimestamp},
	} {
		if got := ReasonOf(b.setTime(&ev, tc.t, nil)); got != tc.reason {
			t.Errorf("setTime(%v) reason %q, want %q", tc.t, got, tc.reason)
		}
	}
	clock = now.Add(3 * time.Hour) // the clock moved on: the bound follows it
	if err := b.setTime(&ev, now.Add(2*time.Hour), nil); err != nil {
		t.Errorf("after the clock moved: %v", err)
	}
}

func TestAppendRoute(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/", "/"},
		{"/v1/users/42", "/v1/users/{id}"},
		{"/v1/users/42/orders/7", "/v1/users/{id}/orders/{id}"},
		{"/v1/items/3fa85f64-5717-4562-b3fc-2c963f66afa6", "/v1/items/{id}"},
		{"/blobs/deadbeefdeadbeef0123", "/blobs/{id}"},
		{"/blobs/deadbeef", "/blobs/deadbeef"}, // short hex is a word
		{"/v2/cafe/add", "/v2/cafe/add"},
		{"/search?q=42", "/search"},
		{"/a//b/", "/a//b/"},
		{"/files/report-2024.pdf", "/files/report-2024.pdf"},
		{"", ""},
		// Opaque ids as APIs mint them.
		{"/v1/customers/cus_NffrFeUfNV2Hib/cards", "/v1/customers/{id}/cards"},
		{"/api/v2/items/itm_7kHKluwL0W", "/api/v2/items/{id}"},
		{"/api/v2/items/itm_lswvecwcmd", "/api/v2/items/itm_lswvecwcmd"}, // one case, no digit: a word
		{"/orders/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/orders/{id}"},
		{"/orders/01arz3ndektsv4rrffq69g5fav", "/orders/{id}"},
		{"/s/V1StGXR8_Z5jdHi6B-myT", "/s/{id}"},
		{"/files/aZ3kL9pQ2xYw7RtE", "/files/{id}"},
		// Words stay.
		{"/api/getUserAccountInfoById", "/api/getUserAccountInfoById"},
		{"/api/user_preferences", "/api/user_preferences"},
		{"/auth/oauth2callback", "/auth/oauth2callback"},
		{"/certs/x509certificates", "/certs/x509certificates"},
		{"/v1/internationalization", "/v1/internationalization"},
		{"/api/Get2FAStatusV2", "/api/Get2FAStatusV2"},
		{"/api/v1/getTop10ItemsForUserV2", "/api/v1/getTop10ItemsForUserV2"},
		{"/a/b_cdefghij", "/a/b_cdefghij"},
		{"/a/ULIDSAREUPPERCASEWORDSXX", "/a/ULIDSAREUPPERCASEWORDSXX"},
	} {
		if got := string(AppendRoute(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("AppendRoute(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestFingerprintsAreKeyedHMAC(t *testing.T) {
	s, err := NewTokenSecret([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	f := s.newFingerprinter()
	mac := hmac.New(sha256.New, []byte(testSecret))
	mac.Write([]byte("tok-123"))
	want := hex.EncodeToString(mac.Sum(nil)[:16])
	if got := string(f.Sum([]byte("tok-123"))); got != want {
		t.Errorf("Sum = %s, want HMAC-SHA-256 prefix %s", got, want)
	}
	for _, tc := range []struct{ in, want string }{
		{"Bearer tok-123", "tok-123"},
		{"bearer   tok-123 ", "tok-123"},
		{"tok-123", "tok-123"},
		{"REDACTED", ""},
		{"-", ""},
		{"", ""},
		{"Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"},
		{"Weird tok", "Weird tok"}, // not a scheme: the whole value is the credential
	} {
		if got := string(bearer([]byte(tc.in))); got != tc.want {
			t.Errorf("bearer(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	tok := []byte("tok-123")
	if allocs := testing.AllocsPerRun(100, func() { f.Sum(tok) }); allocs > 0 {
		t.Errorf("Sum allocates %.0f times", allocs)
	}
}

// TestFingerprintMemo: a memoizing fingerprinter gives what a plain one does, for
// credentials seen again, credentials that share a slot, and ones too long to remember.
func TestFingerprintMemo(t *testing.T) {
	s, err := NewTokenSecret([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	plain, memo := s.newFingerprinter(), s.newFingerprinter()
	memo.memoize = true
	var creds [][]byte
	for i := range 3 * fpMemoSlots { // more than there are slots: some share one
		creds = append(creds, fmt.Appendf(nil, "tok-%d", i))
	}
	creds = append(creds, bytes.Repeat([]byte("x"), memoMaxInput+1), []byte("t"))
	for round := range 3 {
		for i, c := range creds {
			if i%(round+1) != 0 {
				continue // each round in another order of slot reuse
			}
			want := string(plain.Sum(c))
			if got := string(memo.Sum(c)); got != want {
				t.Fatalf("round %d, %.20q: memoized %s, want %s", round, c, got, want)
			}
		}
	}
	tok := []byte("tok-123")
	if allocs := testing.AllocsPerRun(100, func() { memo.Sum(tok) }); allocs > 0 {
		t.Errorf("memoized Sum allocates %.0f times", allocs)
	}
}

// TestDeviceMemo: a parser's remembered device fingerprints are what appendDeviceHash
// gives, for user agents seen again, ones that share a slot, ones split differently
// between user agent and TLS fingerprint, and ones too long to remember.
func TestDeviceMemo(t *testing.T) {
	b := newBase(testParserOptions(t))
	type input struct {
		ua  string
		tls []byte
	}
	var ins []input
	for i := range 3 * deviceMemoSlots { // more than there are slots: some share one
		ins = append(ins, input{ua: fmt.Sprintf("okhttp/4.%d", i)})
	}
	ins = append(ins,
		input{"ab", []byte("c")}, input{"a", []byte("bc")}, input{"abc", nil}, input{"", []byte("abc")},
		input{strings.Repeat("u", memoMaxInput+1), nil})
	for round := range 3 {
		for i, in := range ins {
			if i%(round+1) != 0 {
				continue // each round in another order of slot reuse
			}
			want := string(appendDeviceHash(nil, in.ua, in.tls))
			if got := string(b.device(in.ua, in.tls)); got != want {
				t.Fatalf("round %d, (%.20q, %q): remembered %s, want %s", round, in.ua, in.tls, got, want)
			}
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { b.device("okhttp/4.12.0", []byte("t13d")) }); allocs > 0 {
		t.Errorf("remembered device allocates %.0f times", allocs)
	}
}

func TestTokenSecretNeverPrints(t *testing.T) {
	const planted = "planted-secret-must-not-print"
	s, err := NewTokenSecret([]byte(planted))
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("secret", "s", s)
	js, _ := json.Marshal(struct{ S TokenSecret }{s})
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", s, s, s, s), string(js), logs.String()} {
		if strings.Contains(out, planted) {
			t.Errorf("secret printed: %s", out)
		}
	}
	if _, err := NewTokenSecret([]byte("short")); err == nil {
		t.Error("short secret accepted")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	os.WriteFile(file, []byte(planted+"\n"), 0o600)
	if s2, err := LoadTokenSecret(file, ""); err != nil || string(s2.key) != planted {
		t.Errorf("LoadTokenSecret(file) = %v (trailing newline kept?)", err)
	}
	t.Setenv("GW_TEST_SECRET", planted)
	if s3, err := LoadTokenSecret("", "GW_TEST_SECRET"); err != nil || string(s3.key) != planted {
		t.Errorf("LoadTokenSecret(env) = %v", err)
	}
	if _, err := LoadTokenSecret("", "GW_TEST_SECRET_UNSET"); err == nil {
		t.Error("unset variable accepted")
	}
}

func TestAppendJSONStringIsValidJSON(t *testing.T) {
	for _, in := range []string{"plain", `quote " and \ backslash`, "ctl \x00\x1f\n\t\r", "bad \xff utf8", "ünïcödé ✓", "</script>"} {
		out := AppendJSONString(nil, in)
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Errorf("AppendJSONString(%q) = %s: %v", in, out, err)
			continue
		}
		if want := strings.ToValidUTF8(in, "\uFFFD"); back != want {
			t.Errorf("round trip of %q gave %q", in, back)
		}
	}
}

func TestEventJSONContract(t *testing.T) {
	ev := Event{Time: time.Date(2025, 1, 2, 3, 4, 5, 6e6, time.UTC), Source: "awswaf", Status: 403, Country: "DE"}
	var m map[string]any
	if err := json.Unmarshal(ev.AppendJSON(nil), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"time", "source", "client_key", "token_fp", "device", "client_ip", "country", "method", "host", "route", "path", "status", "action", "rule_id", "user_agent"} {
		if _, ok := m[k]; !ok {
			t.Errorf("event JSON lacks %q", k)
		}
	}
	if m["time"] != "2025-01-02T03:04:05.006Z" || m["status"] != float64(403) {
		t.Errorf("time %v status %v", m["time"], m["status"])
	}
}

func TestInternerIsBounded(t *testing.T) {
	var a arena
	var in interner
	for i := range 3 * maxInterned {
		in.Intern(&a, []byte(fmt.Sprintf("v%d", i)))
	}
	if len(in.m) > maxInterned {
		t.Errorf("interner grew to %d entries", len(in.m))
	}
	x := in.Intern(&a, []byte("v1"))
	if allocs := testing.AllocsPerRun(100, func() { x = in.Intern(&a, []byte("v1")) }); allocs > 0 || x != "v1" {
		t.Errorf("interned lookup allocates %.0f", allocs)
	}
}

// TestDataDirTokenSecret: the secret is made once, kept mode 0600, and is the same for
// every later call, and for callers racing to make it.
func TestDataDirTokenSecret(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var secrets [8]TokenSecret
	var created [8]bool
	var wg sync.WaitGroup
	for i := range secrets {
		wg.Go(func() {
			var err error
			if secrets[i], created[i], err = DataDirTokenSecret(dir); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	made := 0
	for i := range secrets {
		if created[i] {
			made++
		}
		if string(secrets[i].key) != string(secrets[0].key) || secrets[i].IsZero() || secrets[i].Random() {
			t.Fatalf("call %d got another secret", i)
		}
	}
	if made != 1 {
		t.Errorf("%d calls say they created the secret, want 1", made)
	}
	path := filepath.Join(dir, DataDirSecretFile)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, %v", fi, err)
	}
	// The file is what token_secret_file takes: the same fingerprints either way.
	fromFile, err := LoadTokenSecret(path, "")
	if err != nil || string(fromFile.key) != string(secrets[0].key) {
		t.Errorf("token_secret_file pointing at it: %v", err)
	}
	again, created2, err := DataDirTokenSecret(dir)
	if err != nil || created2 || string(again.key) != string(secrets[0].key) {
		t.Errorf("second run: %v, created %v", err, created2)
	}
	os.Chmod(path, 0o644)
	if _, _, err := DataDirTokenSecret(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("a secret others could read was left mode %v", fi.Mode().Perm())
	}
	os.WriteFile(path, []byte("short\n"), 0o600)
	if _, _, err := DataDirTokenSecret(dir); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a short secret: %v", err)
	}
}

// TestFingerprintsMatchTheParsers: what `gatewatch fingerprint` prints for a raw key or
// token is what an event carries for it.
func TestFingerprintsMatchTheParsers(t *testing.T) {
	s, err := NewTokenSecret([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	p := mustParser(t, FormatAWSWAF)
	var ev Event
	line := `{"timestamp":1741944413589,"action":"ALLOW","httpRequest":{"clientIp":"198.51.100.7","httpMethod":"GET","uri":"/",` +
		`"headers":[{"name":"X-Api-Key","value":" gwkey-0123456789abcdef "},{"name":"Authorization","value":"Bearer gwtok-0123456789abcdef"}]}}`
	if err := p.Parse(&ev, []byte(line)); err != nil {
		t.Fatal(err)
	}
	if got := s.KeyFingerprint([]byte("gwkey-0123456789abcdef\n")); got != ev.ClientKey {
		t.Errorf("KeyFingerprint = %s, event client_key %s", got, ev.ClientKey)
	}
	for _, raw := range []string{"gwtok-0123456789abcdef", "Bearer gwtok-0123456789abcdef", "bearer  gwtok-0123456789abcdef\n"} {
		if got := s.TokenFingerprint([]byte(raw)); got != ev.TokenFP {
			t.Errorf("TokenFingerprint(%q) = %s, event token_fp %s", raw, got, ev.TokenFP)
		}
	}
	if got := s.TokenFingerprint([]byte("  ")); got != "" {
		t.Errorf("TokenFingerprint of nothing = %q", got)
	}
}

package config_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/testcert"
)

// TestSharedConfig is the one table of what every part's configuration shares: where
// secrets load from and what their errors say, when TLS is on and what its settings
// hold, and how errors carry their key. Each case returns what it built (a secret's
// value, a TLS summary) and its error; the error must be an *Error at wantKey whose
// text holds wantMsg.
func TestSharedConfig(t *testing.T) {
	dir := t.TempDir()
	const planted = "planted-secret-0123456789"
	secretFile := testcert.WriteFile(t, dir, "secret", []byte(planted+"\r\n"))
	emptyFile := testcert.WriteFile(t, dir, "empty", []byte("\n"))
	t.Setenv("GW_CONFIG_TEST_SECRET", planted)
	t.Setenv("GW_CONFIG_TEST_EMPTY", "")

	ca := testcert.NewCA(t)
	caFile := testcert.WriteFile(t, dir, "ca.pem", ca.CertPEM())
	certPEM, keyPEM := testcert.PEM(t, ca.Issue(t, "gatewatch", x509.ExtKeyUsageClientAuth))
	certFile := testcert.WriteFile(t, dir, "cert.pem", certPEM)
	keyFile := testcert.WriteFile(t, dir, "key.pem", keyPEM)
	notPEM := testcert.WriteFile(t, dir, "junk.pem", []byte("not a certificate"))

	load := func(r config.SecretRef, minLen int) func() (string, error) {
		return func() (string, error) {
			s, err := r.Load(minLen)
			return s.Reveal(), err
		}
	}
	client := func(c config.TLS, transport bool) func() (string, error) {
		return func() (string, error) { return summary(c.Client(transport)) }
	}
	ref := func(file, env string) config.SecretRef {
		return config.SecretRef{Key: "sasl.password", File: file, Env: env}
	}
	for _, c := range []struct {
		name    string
		run     func() (string, error)
		want    string // what was built
		wantKey string // "": no error
		wantMsg string
	}{
		// Secrets.
		{"secret from a file, line end trimmed", load(ref(secretFile, ""), 16), planted, "", ""},
		{"secret from the environment", load(ref("", "GW_CONFIG_TEST_SECRET"), 0), planted, "", ""},
		{"secret file missing", load(ref(dir+"/nope", ""), 0), "", "sasl.password_file", "no such file"},
		{"secret file empty", load(ref(emptyFile, ""), 0), "", "sasl.password_file", "is empty"},
		{"secret variable unset", load(ref("", "GW_CONFIG_TEST_UNSET"), 0), "", "sasl.password_env", "GW_CONFIG_TEST_UNSET is not set"},
		{"secret variable empty", load(ref("", "GW_CONFIG_TEST_EMPTY"), 0), "", "sasl.password_env", "GW_CONFIG_TEST_EMPTY is empty"},
		{"secret too short", load(ref(secretFile, ""), 64), "", "sasl.password_file", "holds 25 bytes, want at least 64"},
		{"secret from both", load(ref(secretFile, "GW_CONFIG_TEST_SECRET"), 0), "", "sasl.password_file", "password_file or password_env, not both"},
		{"secret from neither", load(ref("", ""), 0), "", "sasl.password_file", "needs password_file or password_env"},
		{"optional secret unset", func() (string, error) { return "", ref("", "").Validate(false) }, "", "", ""},

		// TLS: when it is on.
		{"no block: plaintext", client(config.TLS{}, false), "off", "", ""},
		{"enabled: system roots", client(config.TLS{Enabled: true}, false), "on roots=system", "", ""},
		{"a CA turns TLS on", client(config.TLS{CAFile: caFile}, false), "on roots=ca_file", "", ""},
		{"a server name turns TLS on", client(config.TLS{ServerName: "kafka.internal"}, false), "on roots=system server_name=kafka.internal", "", ""},
		{"the transport asks for TLS", client(config.TLS{}, true), "on roots=system", "", ""},
		{"mutual TLS", client(config.TLS{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}, false), "on roots=ca_file client_cert", "", ""},
		// TLS: what is wrong with it.
		{"CA file missing", client(config.TLS{CAFile: dir + "/nope.pem"}, false), "", "ca_file", "no such file"},
		{"CA file not PEM", client(config.TLS{CAFile: notPEM}, false), "", "ca_file", "holds no PEM certificate"},
		{"cert without key", client(config.TLS{CertFile: certFile}, false), "", "cert_file", "cert_file and key_file go together"},
		{"key that is no key", client(config.TLS{CertFile: certFile, KeyFile: notPEM}, false), "", "cert_file", "loading the client certificate"},
		// SASL, checked without reading the password.
		{"sasl unknown mechanism", func() (string, error) {
			return "", (&config.SASL{Mechanism: "gssapi", Username: "u", PasswordEnv: "X"}).Validate()
		}, "", "mechanism", `must be plain, scram-sha-256 or scram-sha-512, got "gssapi"`},
		{"sasl password without mechanism", func() (string, error) {
			return "", (&config.SASL{PasswordFile: "/run/secrets/kafka"}).Validate()
		}, "", "mechanism", "must be set"},

		// Errors: keys below their section, placed in the file.
		{"prefix joins keys", func() (string, error) {
			return "", config.Prefix("ingest", config.Prefix("kafka.sasl", config.Errorf("mechanism", "bad")))
		}, "", "ingest.kafka.sasl.mechanism", "bad"},
		{"prefix joins indexes", func() (string, error) {
			return "", config.Prefix("alerting.receivers", config.Errorf("[2].name", "must be set"))
		}, "", "alerting.receivers[2].name", "must be set"},
		{"prefix keys a plain error", func() (string, error) {
			return "", config.Prefix("store", errors.New("opaque"))
		}, "", "store", "store: opaque"},
		{"placed error", func() (string, error) {
			return "", &config.Error{Path: "detectors.token_reuse.window", Msg: "must be positive", File: "gw.yaml", Line: 7, Column: 13}
		}, "", "detectors.token_reuse.window", "gw.yaml:7:13: detectors.token_reuse.window: must be positive"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.run()
			if c.wantKey == "" {
				if err != nil || got != c.want {
					t.Fatalf("= %q, %v; want %q", got, err, c.want)
				}
				return
			}
			es := config.Errors(err)
			if len(es) != 1 || es[0].Key() != c.wantKey || !strings.Contains(es[0].Error(), c.wantMsg) {
				t.Fatalf("error %v (keys %v), want one at %s saying %q", err, keys(es), c.wantKey, c.wantMsg)
			}
			if strings.Contains(err.Error(), planted) {
				t.Errorf("error %q quotes the secret", err)
			}
		})
	}
}

// summary says what a TLS config holds, in the table's words.
func summary(tc *tls.Config, err error) (string, error) {
	if err != nil || tc == nil {
		return "off", err
	}
	s := "on roots=system"
	if tc.RootCAs != nil {
		s = "on roots=ca_file"
	}
	if tc.ServerName != "" {
		s += " server_name=" + tc.ServerName
	}
	if len(tc.Certificates) > 0 {
		s += " client_cert"
	}
	if tc.MinVersion < tls.VersionTLS12 {
		s += " below TLS 1.2"
	}
	return s, nil
}

func keys(es []*config.Error) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Key())
	}
	return out
}

// TestCAFileIsTrusted: the settings Client builds trust a server signed by ca_file,
// and without it the same server is refused.
func TestCAFileIsTrusted(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	dir := t.TempDir()
	ca := testcert.WriteFile(t, dir, "ca.pem", pemOf(srv.Certificate()))
	get := func(c config.TLS) error {
		tc, err := c.Client(true)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: tc}}).Get(srv.URL)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(config.TLS{CAFile: ca}); err != nil {
		t.Errorf("GET trusting ca_file: %v", err)
	}
	if err := get(config.TLS{}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("GET with the system roots = %v, want a certificate error", err)
	}
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// TestSecretNeverPrints plants a secret and prints it every way a log line, an error,
// a JSON or YAML dump could.
func TestSecretNeverPrints(t *testing.T) {
	const planted = "planted-secret-must-not-print"
	s := config.Secret(planted)
	var logs strings.Builder
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("loaded", "secret", s)
	js, err := json.Marshal(struct{ S config.Secret }{s})
	if err != nil {
		t.Fatal(err)
	}
	ys, err := yaml.Marshal(struct{ S config.Secret }{s})
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x %d", s, s, s, s, s, s, s),
		fmt.Sprintf("%+v", struct{ S config.Secret }{s}), fmt.Errorf("wrapping %v", s).Error(),
		string(js), string(ys), logs.String(),
	} {
		if strings.Contains(out, planted) || !strings.Contains(out, "redacted") {
			t.Errorf("printed as %q", out)
		}
	}
	if s.Reveal() != planted {
		t.Error("Reveal does not return the value")
	}
}

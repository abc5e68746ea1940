package kafka

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/testcert"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestSourceOverMutualTLS: the source and the dead-letter writer connect with the CA,
// client certificate and key files of the config to a broker that requires a client
// certificate.
func TestSourceOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testcert.NewCA(t)
	serverCert := ca.Issue(t, "broker", x509.ExtKeyUsageServerAuth)
	clientCert := ca.Issue(t, "gatewatch", x509.ExtKeyUsageClientAuth)
	clientCertPEM, clientKeyPEM := testcert.PEM(t, clientCert)
	cfgTLS := config.TLS{
		Enabled:  true,
		CAFile:   testcert.WriteFile(t, dir, "ca.pem", ca.CertPEM()),
		CertFile: testcert.WriteFile(t, dir, "client.pem", clientCertPEM),
		KeyFile:  testcert.WriteFile(t, dir, "client.key", clientKeyPEM),
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	serverTLS := &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}

	sec, err := newSecurity(ingest.KafkaConfig{TLS: cfgTLS})
	if err != nil {
		t.Fatalf("newSecurity: %v", err)
	}
	helperCfg := ingest.KafkaConfig{ClientID: "kafkatest", Timeout: 10 * time.Second}
	c := kafkatest.Start(t, kafkatest.Options{
		Topics:    []string{"waf", "dlq"},
		Kfake:     []kfake.Opt{kfake.TLS(serverTLS)},
		Dialer:    sec.dialer(helperCfg),
		Transport: sec.transport(helperCfg),
	})
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	cfg.TLS = cfgTLS
	consumeWithDeadLetters(t, c, cfg)

	// Without the client certificate the broker refuses the connection.
	noCert := cfg
	noCert.TLS.CertFile, noCert.TLS.KeyFile = "", ""
	noCert.Timeout = 2 * time.Second
	dlw, err := NewDeadLetterWriter(noCert, "dlq")
	if err != nil {
		t.Fatalf("NewDeadLetterWriter: %v", err)
	}
	defer dlw.Close()
	if err := dlw.Put(testContext(t), []ingest.DeadLetter{{Source: "waf", Record: "x"}}); err == nil {
		t.Fatal("Put without a client certificate succeeded against a broker that requires one")
	}
}

// TestSourceOverSASL: each SASL mechanism authenticates the source and the dead-letter
// writer with a password from a file or the environment, and the password appears in no
// log line, at any level, and in no error.
func TestSourceOverSASL(t *testing.T) {
	users := []struct {
		mechanism, kfake, user, password string
		fromFile                         bool
	}{
		{"plain", "PLAIN", "plain-user", "plain-Pa55word-7d1f", true},
		{"scram-sha-256", "SCRAM-SHA-256", "scram256-user", "scram256-Pa55word-92ab", false},
		{"scram-sha-512", "SCRAM-SHA-512", "scram512-user", "scram512-Pa55word-c4e0", true},
	}
	opts := []kfake.Opt{kfake.EnableSASL()}
	for _, u := range users {
		opts = append(opts, kfake.Superuser(u.kfake, u.user, u.password))
	}
	admin := ingest.KafkaConfig{ClientID: "kafkatest", Timeout: 10 * time.Second,
		SASL: config.SASL{Mechanism: "plain", Username: users[0].user, PasswordFile: testcert.WriteFile(t, t.TempDir(), "pw", []byte(users[0].password+"\n"))}}
	sec, err := newSecurity(admin)
	if err != nil {
		t.Fatalf("newSecurity: %v", err)
	}
	c := kafkatest.Start(t, kafkatest.Options{
		Topics:    []string{"waf-plain", "waf-scram-sha-256", "waf-scram-sha-512", "dlq"},
		Kfake:     opts,
		Dialer:    sec.dialer(admin),
		Transport: sec.transport(admin),
	})

	for _, u := range users {
		t.Run(u.mechanism, func(t *testing.T) {
			cfg := testConfig(c, "g-"+u.mechanism, ingest.TopicConfig{Name: "waf-" + u.mechanism, Format: "awswaf"})
			cfg.SASL = config.SASL{Mechanism: u.mechanism, Username: u.user}
			if u.fromFile {
				cfg.SASL.PasswordFile = testcert.WriteFile(t, t.TempDir(), "password", []byte(u.password+"\n"))
			} else {
				cfg.SASL.PasswordEnv = "GATEWATCH_TEST_KAFKA_PASSWORD"
				t.Setenv(cfg.SASL.PasswordEnv, u.password)
			}
			logs := consumeWithDeadLetters(t, c, cfg)
			if strings.Contains(logs, u.password) {
				t.Fatalf("the password appears in the logs:\n%s", logs)
			}

			wrong := cfg
			wrong.SASL.PasswordFile, wrong.SASL.PasswordEnv = testcert.WriteFile(t, t.TempDir(), "password", []byte("not-"+u.password)), ""
			wrong.Timeout = 2 * time.Second
			dlw, err := NewDeadLetterWriter(wrong, "dlq")
			if err != nil {
				t.Fatalf("NewDeadLetterWriter: %v", err)
			}
			defer dlw.Close()
			err = dlw.Put(testContext(t), []ingest.DeadLetter{{Source: "waf", Record: "x"}})
			if err == nil {
				t.Fatal("Put with a wrong password succeeded")
			}
			if strings.Contains(err.Error(), u.password) {
				t.Fatalf("the error quotes the password: %v", err)
			}
		})
	}
}

// consumeWithDeadLetters produces good and bad records to cfg's topic, consumes them with a
// source and a dead-letter writer built from cfg, checks that everything arrived, and
// returns everything the source logged at debug level and above.
func consumeWithDeadLetters(t *testing.T, c *kafkatest.Cluster, cfg ingest.KafkaConfig) string {
	t.Helper()
	before := len(c.ReadAll(t, "dlq"))
	good := records("ok-"+cfg.Group, 20)
	c.Produce(t, cfg.Topics[0].Name, append(records("bad-"+cfg.Group, 4), good...)...)
	ctx := testContext(t)

	dlw, err := NewDeadLetterWriter(cfg, "dlq")
	if err != nil {
		t.Fatalf("NewDeadLetterWriter: %v", err)
	}
	defer dlw.Close()
	var logs syncBuffer
	o := testOptions(dlw)
	o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := newSource(t, cfg, o)
	got := consume(ctx, t, s, 20, true)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var want []string
	for _, r := range got {
		if strings.HasPrefix(r, "ok-"+cfg.Group) {
			want = append(want, r)
		}
	}
	sameSet(t, "events", want, values(good))
	if n := len(c.ReadAll(t, "dlq")) - before; n != 4 {
		t.Fatalf("%d dead letters written, want 4", n)
	}
	return logs.String()
}

// syncBuffer is a bytes.Buffer for a logger written from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

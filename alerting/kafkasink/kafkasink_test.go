package kafkasink

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/testcert"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from current output")

// readAlerts returns the shared sample of realistic alerts, incidents with their versions.
func readAlerts(t testing.TB) []detectors.Alert { return alertingtest.Sample(t) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newReceiver(t testing.TB, cfg alerting.KafkaConfig) *Receiver {
	t.Helper()
	r, err := New("siem-kafka", cfg, Options{Version: "1.4.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// values encodes each alert as the receiver would, in order.
func values(t testing.TB, r *Receiver, alerts []detectors.Alert) [][]byte {
	t.Helper()
	out := make([][]byte, len(alerts))
	for i := range alerts {
		v, err := r.encode(&alerts[i])
		if err != nil {
			t.Fatal(err)
		}
		out[i] = v
	}
	return out
}

// TestGolden compares the exact message values of every test alert, in both formats,
// with testdata/<format>.golden (one value a line).
func TestGolden(t *testing.T) {
	alerts := readAlerts(t)
	for _, format := range []string{FormatGatewatch, FormatOCSF} {
		t.Run(format, func(t *testing.T) {
			r := newReceiver(t, alerting.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Topic: "alerts", Format: format})
			got := append(bytes.Join(values(t, r, alerts), []byte("\n")), '\n')
			golden := filepath.Join("testdata", format+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run Golden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("values differ from %s (run with -update and review the diff):\n%s", golden, got)
			}
		})
	}
}

// TestOCSFFinding checks the Detection Finding fields SIEMs key on: class, category,
// activity Create for the first version and Update for later ones, type_uid, severity,
// times in milliseconds, finding_info and metadata.
func TestOCSFFinding(t *testing.T) {
	alerts := readAlerts(t)
	r := newReceiver(t, alerting.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Topic: "alerts", Format: FormatOCSF})
	seen := map[string]bool{}
	wantSeverity := map[detectors.Severity]int{"low": 2, "medium": 3, "high": 4, "critical": 5}
	for i, v := range values(t, r, alerts) {
		a := alerts[i]
		var f struct {
			ActivityID  int   `json:"activity_id"`
			CategoryUID int   `json:"category_uid"`
			ClassUID    int   `json:"class_uid"`
			TypeUID     int   `json:"type_uid"`
			SeverityID  int   `json:"severity_id"`
			Time        int64 `json:"time"`
			Metadata    struct {
				Version string `json:"version"`
				Product struct {
					Name       string `json:"name"`
					VendorName string `json:"vendor_name"`
				} `json:"product"`
			} `json:"metadata"`
			FindingInfo struct {
				UID           string   `json:"uid"`
				Title         string   `json:"title"`
				Types         []string `json:"types"`
				FirstSeenTime int64    `json:"first_seen_time"`
				LastSeenTime  int64    `json:"last_seen_time"`
				SrcURL        string   `json:"src_url"`
			} `json:"finding_info"`
			Observables []struct {
				TypeID int    `json:"type_id"`
				Value  string `json:"value"`
			} `json:"observables"`
		}
		if err := json.Unmarshal(v, &f); err != nil {
			t.Fatal(err)
		}
		wantActivity := 1
		if seen[a.ID] {
			wantActivity = 2
		}
		seen[a.ID] = true
		fi := f.FindingInfo
		for _, c := range []struct {
			name      string
			got, want any
		}{
			{"activity_id", f.ActivityID, wantActivity},
			{"type_uid", f.TypeUID, 200400 + wantActivity},
			{"class_uid", f.ClassUID, 2004},
			{"category_uid", f.CategoryUID, 2},
			{"severity_id", f.SeverityID, wantSeverity[a.Severity]},
			{"time", f.Time, a.LastSeen.UnixMilli()},
			{"metadata.version", f.Metadata.Version, "1.3.0"},
			{"metadata.product.name", f.Metadata.Product.Name, "gatewatch"},
			{"metadata.product.vendor_name", f.Metadata.Product.VendorName, "gatewatch"},
			{"finding_info.uid", fi.UID, a.ID},
			{"finding_info.title", fi.Title, a.Summary},
			{"finding_info.types", strings.Join(fi.Types, ","), a.Detector},
			{"finding_info.first_seen_time", fi.FirstSeenTime, a.FirstSeen.UnixMilli()},
			{"finding_info.last_seen_time", fi.LastSeenTime, a.LastSeen.UnixMilli()},
			{"finding_info.src_url", fi.SrcURL, a.RunbookURL},
			{"observables[0].value", f.Observables[0].Value, a.Key},
		} {
			if c.got != c.want {
				t.Errorf("alert %d (%s): %s = %v, want %v", i, a.Detector, c.name, c.got, c.want)
			}
		}
		for _, ip := range a.Evidence.ClientIPs {
			found := false
			for _, o := range f.Observables {
				found = found || (o.TypeID == 2 && o.Value == ip)
			}
			if !found {
				t.Errorf("alert %d: client IP %s is not an IP Address observable", i, ip)
			}
		}
	}

	// The outbox resends a first version that failed: it is still a Create. A
	// reminder of it is an Update with a uid of its own.
	r2 := newReceiver(t, alerting.KafkaConfig{Brokers: []string{"127.0.0.1:9092"}, Topic: "alerts", Format: FormatOCSF})
	rem := alerts[1]
	rem.Labels = map[string]string{"key_type": "token_fp", alerting.ReminderLabel: "1"}
	v := values(t, r2, []detectors.Alert{alerts[1], alerts[1], alerts[2], rem})
	for i, want := range []string{`"activity_id":1,`, `"activity_id":1,`, `"activity_id":2,`, `"activity_id":2,`} {
		if !bytes.HasPrefix(v[i], []byte("{"+want)) {
			t.Errorf("write %d of a retried first version, its update and a reminder: %.40s, want %s", i, v[i], want)
		}
	}
	if want := fmt.Sprintf(`"uid":"%s-%d-r1"`, rem.ID, rem.LastSeen.UnixMilli()); !bytes.Contains(v[3], []byte(want)) {
		t.Errorf("reminder finding has no metadata %s: %s", want, v[3])
	}
}

// TestWriteToBroker writes every test alert to a Kafka-protocol broker and reads the
// topic back: each message is keyed by its alert id, holds exactly the encoded value,
// and all versions of an incident sit in one partition, in the order they were raised.
func TestWriteToBroker(t *testing.T) {
	alerts := readAlerts(t)
	c := kafkatest.StartKafka(t, "alerts-gatewatch", "alerts-ocsf")
	for _, format := range []string{FormatGatewatch, FormatOCSF} {
		t.Run(format, func(t *testing.T) {
			topic := "alerts-" + format
			r := newReceiver(t, alerting.KafkaConfig{Brokers: c.Addrs, Topic: topic, Format: format})
			// Two calls, as the outbox would make them, then a fresh encoder for the
			// expected values (the receiver remembers which incidents it opened).
			for _, batch := range [][]detectors.Alert{alerts[:4], alerts[4:]} {
				if retry, err := r.Notify(testContext(t), batch); err != nil {
					t.Fatalf("Notify = (%v, %v)", retry, err)
				}
			}
			want := values(t, newReceiver(t, alerting.KafkaConfig{Brokers: c.Addrs, Topic: topic, Format: format}), alerts)

			msgs := c.ReadAll(t, topic)
			if len(msgs) != len(alerts) {
				t.Fatalf("topic holds %d messages, want %d", len(msgs), len(alerts))
			}
			partition := map[string]int{}
			next := map[string]int{} // per id, index into alerts of the next version expected
			for _, m := range msgs {
				id := string(m.Key)
				if p, ok := partition[id]; ok && p != m.Partition {
					t.Errorf("versions of %s are in partitions %d and %d", id, p, m.Partition)
				}
				partition[id] = m.Partition
				i := next[id]
				for i < len(alerts) && alerts[i].ID != id {
					i++
				}
				if i == len(alerts) {
					t.Errorf("message keyed %s in partition %d is not the next version of any alert", id, m.Partition)
					continue
				}
				next[id] = i + 1
				if !bytes.Equal(m.Value, want[i]) {
					t.Errorf("message for alert %d (%s) =\n%s\nwant\n%s", i, id, m.Value, want[i])
				}
			}
		})
	}
}

// TestErrors injects broker errors into Produce: a retriable one (not enough
// replicas, for every attempt) asks for a retry, an authorization failure does not.
func TestErrors(t *testing.T) {
	alerts := readAlerts(t)[:2]
	for _, tc := range []struct {
		name      string
		code      *kerr.Error
		wantRetry bool
	}{
		{"not enough replicas", kerr.NotEnoughReplicas, true},
		{"topic authorization failed", kerr.TopicAuthorizationFailed, false},
		{"message too large", kerr.MessageTooLarge, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := kafkatest.StartKafka(t, "alerts")
			var produced atomic.Int32
			c.Fake.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
				c.Fake.KeepControl()
				produced.Add(1)
				return rejectProduce(req.(*kmsg.ProduceRequest), tc.code), nil, true
			})
			r := newReceiver(t, alerting.KafkaConfig{Brokers: c.Addrs, Topic: "alerts"})
			retry, err := r.Notify(testContext(t), alerts)
			if err == nil || retry != tc.wantRetry {
				t.Fatalf("Notify with produce failing %v = (%v, %v), want (%v, error)", tc.code, retry, err, tc.wantRetry)
			}
			if produced.Load() == 0 {
				t.Fatal("no produce request reached the broker; the test did not test what it says")
			}
			if !strings.Contains(err.Error(), "failed, the first with") {
				t.Errorf("Notify err = %q, want the first per-message error spelled out", err)
			}
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		r := newReceiver(t, alerting.KafkaConfig{Brokers: []string{addr}, Topic: "alerts"})
		retry, err := r.Notify(testContext(t), alerts)
		if err == nil || !retry {
			t.Errorf("Notify to a closed port = (%v, %v), want (true, error)", retry, err)
		}
	})
}

// rejectProduce answers req with code for every partition.
func rejectProduce(req *kmsg.ProduceRequest, code *kerr.Error) *kmsg.ProduceResponse {
	resp := req.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range req.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = code.Code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// TestSASL authenticates with SCRAM-SHA-512 and a password from a file; a wrong
// password fails without quoting it.
func TestSASL(t *testing.T) {
	const user, password = "gatewatch-alerts", "scram512-Pa55word-8e1d"
	c := kafkatest.Start(t, kafkatest.Options{
		Topics: []string{"alerts"},
		Kfake:  []kfake.Opt{kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", user, password)},
	})
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := alerting.KafkaConfig{Brokers: c.Addrs, Topic: "alerts",
		SASL: config.SASL{Mechanism: "scram-sha-512", Username: user, PasswordFile: pwFile}}
	r := newReceiver(t, cfg)
	if retry, err := r.Notify(testContext(t), readAlerts(t)); err != nil {
		t.Fatalf("Notify with SASL = (%v, %v)", retry, err)
	}

	wrongFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(wrongFile, []byte("not-"+password), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.SASL.PasswordFile = wrongFile
	_, err := newReceiver(t, cfg).Notify(testContext(t), readAlerts(t)[:1])
	if err == nil {
		t.Fatal("Notify with a wrong SASL password succeeded")
	}
	if strings.Contains(err.Error(), password) {
		t.Errorf("Notify err = %q quotes the password", err)
	}
}

// TestTLS writes to a broker that only speaks TLS, trusting it through ca_file.
func TestTLS(t *testing.T) {
	testCA := testcert.NewCA(t)
	cert := testCA.Issue(t, "kafka test", x509.ExtKeyUsageServerAuth)
	pool := x509.NewCertPool()
	pool.AddCert(testCA.Cert)
	clientTLS := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	c := kafkatest.Start(t, kafkatest.Options{
		Topics:    []string{"alerts"},
		Kfake:     []kfake.Opt{kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})},
		Dialer:    &kafka.Dialer{Timeout: 10 * time.Second, TLS: clientTLS},
		Transport: &kafka.Transport{TLS: clientTLS},
	})
	ca := testcert.WriteFile(t, t.TempDir(), "ca.pem", testCA.CertPEM())
	alerts := readAlerts(t)
	r := newReceiver(t, alerting.KafkaConfig{Brokers: c.Addrs, Topic: "alerts", TLS: config.TLS{CAFile: ca}})
	if retry, err := r.Notify(testContext(t), alerts); err != nil {
		t.Fatalf("Notify over TLS = (%v, %v)", retry, err)
	}
	if n := len(c.ReadAll(t, "alerts")); n != len(alerts) {
		t.Errorf("topic holds %d messages after a write over TLS, want %d", n, len(alerts))
	}
}

func TestNewRejects(t *testing.T) {
	for _, cfg := range []alerting.KafkaConfig{
		{Topic: "t"},
		{Brokers: []string{"b:9092"}},
		{Brokers: []string{"b:9092"}, Topic: "t", Format: "cef"},
		{Brokers: []string{"b:9092"}, Topic: "t", SASL: config.SASL{Mechanism: "gssapi", Username: "u", PasswordEnv: "HOME"}},
		{Brokers: []string{"b:9092"}, Topic: "t", SASL: config.SASL{Mechanism: "plain", Username: "u", PasswordEnv: "GATEWATCH_TEST_UNSET_PASSWORD"}},
	} {
		if _, err := New("k", cfg, Options{}); err == nil {
			t.Errorf("New(%+v) succeeded, want an error", cfg)
		}
	}
}

// BenchmarkOCSF measures encoding one alert as an OCSF Detection Finding.
func BenchmarkOCSF(b *testing.B) {
	a := &readAlerts(b)[4] // forbidden_burst
	var out []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if out, err = encodeOCSF(a, true, "1.4.0"); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(out)))
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "findings/s")
}

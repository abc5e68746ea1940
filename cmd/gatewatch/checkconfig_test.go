package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest/geoiptest"
	gwconfig "github.com/gatewatch/gatewatch/internal/config"
)

// TestDesignExampleConfig: DESIGN.md's example config, as written there, is valid;
// check-config then names each file it refers to that this machine lacks, at its key.
// Detectors that this build does not have yet are the only keys it may not know: their
// lines are left out, and the rest is checked.
func TestDesignExampleConfig(t *testing.T) {
	const example = "testdata/config/design-example.yaml"
	b, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	_, err = loadConfig(example, b)
	lines := strings.SplitAfter(string(b), "\n")
	for _, e := range gwconfig.Errors(err) {
		d, ok := strings.CutPrefix(e.Path, "detectors.")
		if !ok || !strings.HasPrefix(e.Msg, "unknown key") || slices.Contains(detectors.Names, d) {
			t.Errorf("DESIGN.md's example config: %v", e)
			continue
		}
		lines[e.Line-1] = "\n" // a detector still to come
	}
	cfg, err := loadConfig(example, []byte(strings.Join(lines, "")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Admin.Listen != "127.0.0.1:9464" || cfg.Console.Listen != "127.0.0.1:9465" || cfg.Console.TokenFile != "/run/secrets/console-token" ||
		cfg.Cluster == nil || cfg.Cluster.InternalTopicPrefix != "gatewatch-internal" || cfg.Cluster.Partitions != 32 {
		t.Errorf("admin, console and cluster not decoded as written: %+v %+v %+v", cfg.Admin, cfg.Console, cfg.Cluster)
	}
	for _, key := range []string{
		"ingest.geoip.database", "ingest.token_secret_file", "alerting.receivers[0].slack.token_file",
		"alerting.receivers[1].splunk_hec.token_file", "console.token_file",
	} {
		if err := cfg.check(); err == nil || !strings.Contains(err.Error(), key+": ") {
			t.Errorf("check of the example does not name %s: %v", key, err)
		}
	}
}

// TestCheckConfigCanRun: check-config reads what the config names, as start-up will,
// so that a config that passes can run. Each case is a config whose one problem only
// reading reveals; check-config names the setting, its line, and never the secret.
func TestCheckConfigCanRun(t *testing.T) {
	dir := t.TempDir()
	const planted = "planted-secret-value-9f8e7d6c5b4a"
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secret := write("secret", planted+"\n")
	short := write("short", "8 bytes\n")
	notDB := write("country.mmdb", "not a database")
	db := geoiptest.File(t, map[string]string{"192.0.2.0/24": "NL"})
	t.Setenv("GW_TEST_CHECK_SET", planted)
	good := "ingest:\n  token_secret_file: " + secret + "\n  geoip: {database: " + db + "}\n" +
		"alerting:\n  receivers:\n    - {name: hook, webhook: {url_env: GW_TEST_CHECK_URL, secret_file: " + secret + "}}\n"
	t.Setenv("GW_TEST_CHECK_URL", "https://hooks.example.com/T0/B0/"+planted)
	for _, c := range []struct {
		name, config string
		want         string // "": check-config passes
	}{
		{"good", good, ""},
		{"token secret missing", "ingest:\n  token_secret_file: " + dir + "/nope\n",
			":2:3: ingest.token_secret_file: open " + dir + "/nope: no such file or directory"},
		{"token secret too short", "ingest:\n  token_secret_file: " + short + "\n",
			":2:3: ingest.token_secret_file: " + short + " holds 7 bytes, want at least 16"},
		{"token secret variable unset", "ingest:\n  token_secret_env: GW_TEST_CHECK_UNSET\n",
			":2:3: ingest.token_secret_env: environment variable GW_TEST_CHECK_UNSET is not set"},
		{"not a GeoIP database", "ingest:\n  geoip: {database: " + notDB + "}\n",
			":2:11: ingest.geoip.database: "},
		{"receiver secret is a directory", "alerting:\n  receivers:\n    - name: soc\n      slack: {channel: '#soc', token_file: " + dir + "}\n",
			":4:32: alerting.receivers[0].slack.token_file: read " + dir + ": is a directory"},
		{"webhook signing key too short", "alerting:\n  receivers:\n    - {name: hook, webhook: {url_env: GW_TEST_CHECK_SET, secret_file: " + short + "}}\n",
			":3:58: alerting.receivers[0].webhook.secret_file: " + short + " holds 7 bytes, want at least 16"},
		{"kafka CA missing", "ingest:\n  kafka:\n    brokers: [k:9092]\n    topics: [{name: waf, format: awswaf}]\n    tls: {ca_file: " + dir + "/ca.pem}\n",
			":5:11: ingest.kafka.tls.ca_file: open " + dir + "/ca.pem: no such file or directory"},
		{"kafka password unset", "ingest:\n  kafka:\n    brokers: [k:9092]\n    topics: [{name: waf, format: awswaf}]\n    sasl: {mechanism: plain, username: gw, password_env: GW_TEST_CHECK_UNSET}\n",
			":5:44: ingest.kafka.sasl.password_env: environment variable GW_TEST_CHECK_UNSET is not set"},
		{"clickhouse password missing", "store:\n  clickhouse: {addr: ['ch:9000'], password_file: " + dir + "/ch}\n",
			":2:35: store.clickhouse.password_file: open " + dir + "/ch: no such file"},
		{"console token missing", "console:\n  listen: 127.0.0.1:9465\n  token_file: " + dir + "/console\n",
			":3:3: console.token_file: open " + dir + "/console: no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := write(strings.ReplaceAll(c.name, " ", "-")+".yaml", c.config)
			out, errOut, code := runCmd(t, "", "check-config", cfg)
			if strings.Contains(out+errOut, planted) {
				t.Errorf("check-config printed the secret:\n%s%s", out, errOut)
			}
			if c.want == "" {
				if code != 0 || !strings.Contains(errOut, "ok") {
					t.Fatalf("exit %d: %s", code, errOut)
				}
				return
			}
			if code != 1 || !strings.Contains(errOut, cfg+c.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 1 and %q", code, errOut, cfg+c.want)
			}
		})
	}
}

// TestCheckConfigWarns: a valid config whose alerts would reach nobody, in part or in
// whole, passes with a warning at the setting concerned.
func TestCheckConfigWarns(t *testing.T) {
	const receivers = "alerting:\n  receivers:\n    - {name: soc, file: {path: /tmp/soc.jsonl}}\n    - {name: siem, file: {path: /tmp/siem.jsonl}}\n"
	t.Setenv("GW_TEST_CONSOLE_TOKEN", "console-token-0123456789abcdef")
	for _, c := range []struct {
		name, config string
		want         []string
	}{
		{"no receivers", "alerting: {}\n", []string{":1:1: alerting.receivers: none: every alert reaches nobody"}},
		{"no routes: every receiver gets everything", receivers, nil},
		{"console on loopback, without a host", "console: {listen: \":9465\", token_env: GW_TEST_CONSOLE_TOKEN}\n" + receivers, nil},
		{"console on loopback", "console: {listen: \"[::1]:9465\", token_env: GW_TEST_CONSOLE_TOKEN}\n" + receivers, nil},
		{"console beyond loopback", "console: {listen: \"0.0.0.0:9465\", token_env: GW_TEST_CONSOLE_TOKEN}\n" + receivers, []string{
			":1:11: console.listen: 0.0.0.0:9465 answers beyond this machine over plain HTTP",
		}},
		{"shadowed route", receivers + "  routes:\n    - {receivers: [soc]}\n    - {match: {severity: [critical]}, receivers: [siem]}\n", []string{
			":7:7: alerting.routes[1]: never matches: routes[0] takes every alert it would, and has no continue: true",
		}},
		{"disabled detector", "detectors:\n  new_country: {enabled: false}\n" + receivers +
			"  routes:\n    - {match: {detector: [new_country]}, receivers: [siem]}\n    - {receivers: [soc]}\n", []string{
			":8:16: alerting.routes[0].match.detector: never matches: new_country is disabled",
		}},
		{"override enables a disabled detector", "detectors:\n  new_country: {enabled: false, overrides: [{key: vip, enabled: true}]}\n" + receivers +
			"  routes:\n    - {match: {detector: [new_country]}, receivers: [siem]}\n    - {receivers: [soc]}\n", nil},
		{"receiver in no route, severities no route takes", receivers + "  routes:\n    - {match: {severity: [high, critical]}, receivers: [soc]}\n", []string{
			":4:7: alerting.receivers[1]: receiver \"siem\" is in no route: it gets nothing",
			"alerting.routes: token_reuse alerts of severity low, medium may match no route and reach nobody",
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "gatewatch.yaml")
			if err := os.WriteFile(cfg, []byte(c.config), 0o600); err != nil {
				t.Fatal(err)
			}
			_, errOut, code := runCmd(t, "", "check-config", cfg)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if n := strings.Count(errOut, "warning: "); n < len(c.want) || (len(c.want) == 0 && n > 0) {
				t.Errorf("%d warnings, want %d:\n%s", n, len(c.want), errOut)
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("no warning %q:\n%s", w, errOut)
				}
			}
		})
	}
}

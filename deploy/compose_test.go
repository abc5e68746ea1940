package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

const composeDir = "compose"

// loadCompose loads compose.yaml as docker compose does (the compose-spec loader, its
// schema, interpolation and consistency checks), every profile enabled.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(composeDir, "compose.yaml")},
		cli.WithName("gatewatch"), cli.WithWorkingDirectory(composeDir), cli.WithProfiles([]string{"*"}),
		cli.WithEnv([]string{}), cli.WithResolvedPaths(true))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose.yaml does not load: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("compose.yaml has no service %s", name)
	}
	return s
}

// TestCompose: the project loads, every file it mounts exists, it starts in the order
// the README says, gatewatch runs locked down with its config and secrets as files, and
// the Prometheus of the observability profile loads gatewatch's rules.
func TestCompose(t *testing.T) {
	p := loadCompose(t)
	for _, name := range []string{"kafka", "topics", "clickhouse", "migrate", "gatewatch", "history", "traffic", "alerts", "prometheus", "grafana"} {
		service(t, p, name)
	}
	if img := service(t, p, "kafka").Image; !strings.HasPrefix(img, "apache/kafka:") {
		t.Errorf("kafka image %s, want the official apache/kafka", img)
	}
	if env := service(t, p, "kafka").Environment["KAFKA_PROCESS_ROLES"]; env == nil || *env != "broker,controller" {
		t.Errorf("kafka KAFKA_PROCESS_ROLES = %v, want KRaft's broker,controller", env)
	}
	if img := service(t, p, "clickhouse").Image; !strings.HasPrefix(img, "clickhouse/clickhouse-server:") {
		t.Errorf("clickhouse image %s, want ClickHouse's official image", img)
	}
	for _, s := range []string{"prometheus", "grafana"} {
		if prof := service(t, p, s).Profiles; !slices.Equal(prof, []string{"observability"}) {
			t.Errorf("%s profiles %v, want [observability]", s, prof)
		}
	}

	// Order: topics and the schema exist before run starts.
	dependsOn := func(svc, on, condition string) {
		t.Helper()
		d, ok := service(t, p, svc).DependsOn[on]
		if !ok || d.Condition != condition {
			t.Errorf("%s depends on %s with %+v, want condition %s", svc, on, d, condition)
		}
	}
	dependsOn("topics", "kafka", types.ServiceConditionHealthy)
	dependsOn("migrate", "clickhouse", types.ServiceConditionHealthy)
	dependsOn("gatewatch", "migrate", types.ServiceConditionCompletedSuccessfully)
	dependsOn("gatewatch", "topics", types.ServiceConditionCompletedSuccessfully)
	dependsOn("history", "topics", types.ServiceConditionCompletedSuccessfully)
	dependsOn("gatewatch", "history", types.ServiceConditionCompletedSuccessfully)
	dependsOn("traffic", "history", types.ServiceConditionCompletedSuccessfully)

	// Every file the project mounts is in the repository.
	for name, c := range p.Configs {
		if _, err := os.Stat(c.File); err != nil {
			t.Errorf("config %s: %v", name, err)
		}
	}
	for name, s := range p.Secrets {
		if _, err := os.Stat(s.File); err != nil {
			t.Errorf("secret %s: %v", name, err)
		}
	}
	for _, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("service %s mounts %s: %v", s.Name, v.Source, err)
			}
		}
		if s.Build != nil {
			if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
				t.Errorf("service %s builds from %v", s.Name, err)
			}
		}
	}

	// gatewatch and migrate: the image built here, locked down, the config where the
	// command reads it, and every secret file the config names mounted.
	config := readFile(t, filepath.Join(composeDir, "gatewatch.yaml"))
	named := regexp.MustCompile(`(?m)^[^#\n]*(/run/secrets/([a-z0-9-]+))`).FindAllStringSubmatch(config, -1)
	for _, name := range []string{"gatewatch", "migrate"} {
		s := service(t, p, name)
		if s.Build == nil || s.Build.Target != "" {
			t.Errorf("%s: build %+v, want the Dockerfile's final stage", name, s.Build)
		}
		if !s.ReadOnly || !slices.Equal(s.CapDrop, []string{"ALL"}) || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: read_only %v, cap_drop %v, security_opt %v: want read-only, every capability dropped, no new privileges",
				name, s.ReadOnly, s.CapDrop, s.SecurityOpt)
		}
		i := slices.Index(s.Command, "--config")
		if i < 0 || i+1 == len(s.Command) {
			t.Fatalf("%s: command %q has no --config", name, s.Command)
		}
		if len(s.Configs) != 1 || s.Configs[0].Target != s.Command[i+1] || p.Configs[s.Configs[0].Source].File != mustAbs(t, filepath.Join(composeDir, "gatewatch.yaml")) {
			t.Errorf("%s: configs %+v, want gatewatch.yaml at %s", name, s.Configs, s.Command[i+1])
		}
		for _, m := range named {
			if !slices.ContainsFunc(s.Secrets, func(sc types.ServiceSecretConfig) bool {
				return sc.Source == m[2] && (sc.Target == "" || sc.Target == m[1])
			}) {
				t.Errorf("%s: gatewatch.yaml reads %s, but the service mounts no secret %s there", name, m[1], m[2])
			}
		}
	}
	if s := service(t, p, "gatewatch"); !slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && v.Target == "/var/lib/gatewatch"
	}) || !strings.Contains(config, "data_dir: /var/lib/gatewatch") {
		t.Errorf("gatewatch: volumes %+v, want a named volume at data_dir /var/lib/gatewatch", s.Volumes)
	}
	for name, mode := range map[string]string{"history": "history", "traffic": "live"} {
		if s := service(t, p, name); s.Build == nil || s.Build.Target != "traffic" || !slices.Equal(s.Command, []string{mode}) {
			t.Errorf("%s: build %+v, command %q: want the Dockerfile's traffic stage running traffic.sh %s", name, s.Build, s.Command, mode)
		}
	}

	// The detectors learn as in `gatewatch demo`, whose two hours of traffic the traffic
	// service's history is.
	demo := readFile(t, filepath.Join(repoRoot, "cmd", "gatewatch", "demo.yaml"))
	for l := range strings.SplitSeq(demo[strings.Index(demo, "\ndetectors:\n"):], "\n") {
		if strings.HasPrefix(l, "  ") && !strings.Contains(config, l+"\n") {
			t.Errorf("gatewatch.yaml lacks demo.yaml's %q: the history is too short for the defaults", strings.TrimSpace(l))
		}
	}

	// The config passes check-config, with the sample secrets where the container has them.
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, s := range p.Secrets {
		if err := os.WriteFile(filepath.Join(secrets, name), []byte(readFile(t, s.File)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	checkConfig(t, dir, "gatewatch.yaml", strings.ReplaceAll(config, "/run/secrets/", secrets+"/"))

	// Prometheus's config, with the rules file where compose mounts it.
	promtool := requireTool(t, "promtool")
	for _, f := range []string{filepath.Join(composeDir, "prometheus.yml"), filepath.Join("prometheus", "gatewatch.rules.yml")} {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), []byte(readFile(t, f)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run(t, dir, nil, promtool, "check", "config", "prometheus.yml")
}

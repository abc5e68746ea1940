package deploy_test

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// dockerfile parses the repository's Dockerfile into its stages.
func dockerfile() ([]instructions.Stage, error) {
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ast, err := parser.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("Dockerfile: %w", err)
	}
	stages, _, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		return nil, fmt.Errorf("Dockerfile: %w", err)
	}
	return stages, nil
}

// buildStage returns the ENV of the stage named build and its `go build` command line.
func buildStage(stages []instructions.Stage) (env []string, goBuild string, err error) {
	i := slices.IndexFunc(stages, func(s instructions.Stage) bool { return s.Name == "build" })
	if i < 0 {
		return nil, "", errors.New("Dockerfile: no stage named build")
	}
	for _, c := range stages[i].Commands {
		switch c := c.(type) {
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env = append(env, kv.Key+"="+kv.Value)
			}
		case *instructions.RunCommand:
			line := strings.Join(c.CmdLine, " ")
			if strings.Contains(line, "go build") {
				goBuild = line
			}
		}
	}
	if goBuild == "" {
		return nil, "", errors.New("Dockerfile: the build stage runs no go build")
	}
	return env, goBuild, nil
}

// buildLikeDockerfile runs the build stage's `go build` command, in its environment
// and with VERSION and COMMIT set, in the repository, writing the binary to out instead
// of the image's /out/gatewatch.
func buildLikeDockerfile(out string) error {
	stages, err := dockerfile()
	if err != nil {
		return err
	}
	env, line, err := buildStage(stages)
	if err != nil {
		return err
	}
	const imageOut = "-o /out/gatewatch"
	if !strings.Contains(line, imageOut) {
		return fmt.Errorf("Dockerfile: the go build command does not write %q: %s", imageOut, line)
	}
	line = strings.Replace(line, imageOut, "-o "+out, 1)
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = repoRoot
	cmd.Env = append(append(os.Environ(), "GOWORK=off", "VERSION="+testVersion, "COMMIT="+testCommit), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", line, err, b)
	}
	return nil
}

// TestDockerfileBuild: the build stage's command gives a static, trimmed binary with
// the version and commit in it, and `gatewatch version` prints them.
func TestDockerfileBuild(t *testing.T) {
	stages, err := dockerfile()
	if err != nil {
		t.Fatal(err)
	}
	env, line, err := buildStage(stages)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0"} {
		if !slices.Contains(env, want) {
			t.Errorf("build stage ENV %q lacks %s", env, want)
		}
	}
	for _, want := range []string{"-trimpath", "-X main.version=${VERSION}", "-X main.commit=${COMMIT}"} {
		if !strings.Contains(line, want) {
			t.Errorf("go build command %q lacks %s", line, want)
		}
	}

	bin := gatewatchBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a program interpreter: it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v (%v): want a static binary for distroless/static", libs, err)
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	for key, want := range map[string]string{"CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[key] != want {
			t.Errorf("build setting %s = %q, want %q", key, settings[key], want)
		}
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(mustAbs(t, repoRoot))) {
		t.Errorf("the binary holds this checkout's path %s: -trimpath did not apply", mustAbs(t, repoRoot))
	}
	// -trimpath keeps -ldflags out of the build info; the linker writes what -X set
	// into the binary only when main.version and main.commit exist.
	for _, want := range []string{testVersion, testCommit} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("the binary does not hold %q: -X main.version / main.commit set nothing", want)
		}
	}

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("gatewatch version: %v\n%s", err, out)
	}
	for _, want := range []string{testVersion, testCommit} {
		if !strings.Contains(string(out), want) {
			t.Errorf("gatewatch version prints %q, want %s in it", out, want)
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestDockerfileImage: the final stage is the production image: distroless or scratch,
// a non-root user, gatewatch as the entrypoint, and no HEALTHCHECK in any stage (the
// orchestrator probes /healthz and /readyz).
func TestDockerfileImage(t *testing.T) {
	stages, err := dockerfile()
	if err != nil {
		t.Fatal(err)
	}
	final := stages[len(stages)-1]
	if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") && final.BaseName != "scratch" {
		t.Errorf("final stage FROM %s, want distroless/static or scratch", final.BaseName)
	}
	var user string
	var entrypoint []string
	for _, s := range stages {
		for _, c := range s.Commands {
			if _, ok := c.(*instructions.HealthCheckCommand); ok {
				t.Errorf("stage %q has a HEALTHCHECK: the orchestrator probes /healthz and /readyz", s.Name)
			}
		}
	}
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EntrypointCommand:
			entrypoint = c.CmdLine
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "root" || u == "0" {
		t.Errorf("final stage USER %q, want a non-root user", user)
	}
	if len(entrypoint) != 1 || filepath.Base(entrypoint[0]) != "gatewatch" {
		t.Errorf("final stage ENTRYPOINT %q, want gatewatch in exec form", entrypoint)
	}
}

// TestDockerignore: the build context keeps every file the build needs (go.mod, go.sum,
// and the Go and embedded files of every package gatewatch is built from) and leaves
// out the VCS data and deploy/ (with its sample secrets).
func TestDockerignore(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	root := mustAbs(t, repoRoot)
	out := run(t, repoRoot, []string{"GOWORK=off"}, "go", "list", "-deps",
		"-f", `{{if not .Standard}}{{if .Module}}{{if .Module.Main}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}
{{end}}{{end}}{{end}}{{end}}`, "./cmd/gatewatch")
	need := []string{"go.mod", "go.sum"}
	for l := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		rel, err := filepath.Rel(root, l)
		if err != nil {
			t.Fatal(err)
		}
		need = append(need, rel)
	}
	if len(need) < 20 {
		t.Fatalf("go list found only %d files gatewatch is built from: %v", len(need), need)
	}
	for _, p := range need {
		if excluded, err := pm.MatchesOrParentMatches(filepath.ToSlash(p)); err != nil || excluded {
			t.Errorf(".dockerignore leaves out %s, which the build needs (%v)", p, err)
		}
	}
	for _, p := range []string{".git/config", "deploy/compose/secrets/token-hmac", "deploy/kubernetes/gatewatch.yaml", "gatewatch"} {
		if excluded, err := pm.MatchesOrParentMatches(p); err != nil || !excluded {
			t.Errorf(".dockerignore lets %s into the build context (%v)", p, err)
		}
	}
}

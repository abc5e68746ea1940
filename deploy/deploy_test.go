// Package deploy_test checks the files under deploy/ and the repository's Dockerfile
// offline, so that none of them can rot: the image's build, the compose project, the
// Kubernetes manifests, the Prometheus rules and the Grafana dashboard. It is a module
// of its own, so that the product's go.mod does not carry the Kubernetes, Compose,
// Prometheus and BuildKit libraries these tests read the files with.
//
// Tools it runs (Debian's packages, installed by `make deps` and CI): kubectl
// (kubernetes-client) and promtool (prometheus). Outside CI a missing tool skips its
// test; with CI set it fails.
package deploy_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the product's repository: this module lives in its deploy/ directory.
const repoRoot = ".."

// requireTool returns the path of an executable the test needs; outside CI a missing one
// skips the test.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	switch {
	case err != nil && os.Getenv("CI") != "":
		t.Fatalf("CI runs every deploy test: %v (make deps installs it)", err)
	case err != nil:
		t.Skipf("%s not installed (make deps installs it): %v", name, err)
	}
	return path
}

// run runs a command and returns its stdout; a failure fails the test with its output.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// The test version and commit stamped into the binary the Dockerfile's build stage makes.
const (
	testVersion = "9.8.7-deploytest"
	testCommit  = "0123456789abcdef0123456789abcdef01234567"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// gatewatchBinary builds gatewatch as the Dockerfile's build stage does (its ENV and its
// `go build` command, with VERSION and COMMIT set), once per test run, and returns it.
func gatewatchBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "gatewatch-deploytest-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "gatewatch")
		binErr = buildLikeDockerfile(binPath)
	})
	if binErr != nil {
		t.Fatalf("building gatewatch as the Dockerfile does: %v", binErr)
	}
	return binPath
}

// checkConfig runs `gatewatch check-config` on body, written to a file in dir, and
// returns what it prints (the config with defaults applied); a refusal fails the test.
func checkConfig(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gatewatchBinary(t), "check-config", path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("gatewatch check-config %s: %v\n%s", name, err, stderr.String())
	}
	if w := warnings(stderr.String()); w != "" {
		t.Errorf("gatewatch check-config %s warns:\n%s", name, w)
	}
	return stdout.String()
}

func warnings(stderr string) string {
	var out []string
	for l := range strings.SplitSeq(stderr, "\n") {
		if strings.HasPrefix(l, "warning:") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// secretFiles writes a sample secret for each name into dir and returns dir.
func secretFiles(t *testing.T, dir string, names ...string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(fmt.Sprintf("deploy-test-sample-%s-not-a-secret\n", n)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

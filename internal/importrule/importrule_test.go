package importrule_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gatewatch/gatewatch/internal/importrule"
)

// list runs `go list -deps` on the module in dir and returns its packages. It stats
// their source files, so that go test's cache, which does not see what a command it
// runs reads, reruns the test when any of them changes.
func list(t *testing.T, dir string) (module string, pkgs []importrule.Package) {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Imports,Module,Dir,GoFiles", "./...")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list in %s: %v\n%s", dir, err, stderr.String())
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			importrule.Package
			Module *struct {
				Path string
				Main bool
			}
			Dir     string
			GoFiles []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Module != nil && p.Module.Main {
			module = p.Module.Path
			pkgs = append(pkgs, p.Package)
			for _, f := range p.GoFiles {
				if _, err := os.Stat(filepath.Join(p.Dir, f)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if module == "" {
		t.Fatalf("go list in %s listed no package of the main module", dir)
	}
	return module, pkgs
}

// TestImportRule: gatewatch's packages import one another only as DESIGN.md's rule
// says (importrule.Parts).
func TestImportRule(t *testing.T) {
	module, pkgs := list(t, "../..")
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages of %s; the rule would check too little", len(pkgs), module)
	}
	for _, v := range importrule.Check(module, pkgs) {
		t.Error(v)
	}
}

// TestImportRuleCatchesAViolation: on a module built to break the rule (testdata/
// violation: ingest imports detectors, and a package outside every part), the check
// reports exactly that.
func TestImportRuleCatchesAViolation(t *testing.T) {
	module, pkgs := list(t, "testdata/violation")
	got := importrule.Check(module, pkgs)
	want := []string{
		"ingest imports detectors: ingest may import none of the other parts",
		"util belongs to no part: add it to importrule.Parts",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Check = %q\nwant %q", got, want)
	}
}

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// runCmd runs gatewatch in-process with stdin and returns stdout, stderr and the exit code.
func runCmd(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), &cmdEnv{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut}, args)
	return out.String(), errOut.String(), code
}

func TestUsage(t *testing.T) {
	_, errOut, code := runCmd(t, "")
	if code != 2 || !strings.Contains(errOut, "Usage:") {
		t.Errorf("no args: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = runCmd(t, "", "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	for _, c := range commands() {
		_, errOut, code := runCmd(t, "", c.name, "--help")
		if code != 0 || !strings.Contains(errOut, "Usage: gatewatch "+c.name) {
			t.Errorf("%s --help: exit %d, stderr %q", c.name, code, errOut)
		}
	}
	_, errOut, code = runCmd(t, "", "parse", "--nope")
	if code != 2 || !strings.Contains(errOut, "flag provided but not defined") {
		t.Errorf("bad flag: exit %d, stderr %q", code, errOut)
	}
}

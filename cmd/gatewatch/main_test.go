package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
)

// runCmd runs gatewatch in-process with stdin and returns stdout, stderr and the exit code.
func runCmd(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut lockedBuffer
	code := run(context.Background(), &cmdEnv{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut}, args)
	return out.String(), errOut.String(), code
}

// lockedBuffer is a bytes.Buffer that several goroutines may write, as the commands'
// background goroutines (a Kafka client's logger) write to stderr while the command
// prints; os.Stderr takes that, a bare bytes.Buffer does not.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
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

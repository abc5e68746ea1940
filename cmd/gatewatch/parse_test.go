package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// TestNoRawCredentialLeavesParse feeds records carrying known tokens and API keys, in
// every format and through auto, with rejected lines among them, and proves that no raw
// value appears on stdout or stderr, while each credential's fingerprint does.
func TestNoRawCredentialLeavesParse(t *testing.T) {
	reqs, _, err := synth.Generate(synth.Config{Duration: 5 * time.Minute, Rate: 2, Seed: 11, Attacks: synth.Attacks})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "hmac")
	os.WriteFile(secretFile, []byte("leak-test-secret-0123456789abcdef"), 0o600)
	cfgFile := filepath.Join(dir, "gatewatch.yaml")
	os.WriteFile(cfgFile, []byte("ingest:\n  token_secret_file: "+secretFile+"\n"), 0o600)

	secrets := map[string]bool{}
	for _, r := range reqs {
		secrets[r.Token] = true
		secrets[r.APIKey] = true
	}
	for _, format := range synth.Formats {
		for _, as := range []string{format, ingest.FormatAuto} {
			t.Run(format+"-as-"+as, func(t *testing.T) {
				var in strings.Builder
				for i := range reqs {
					line, _ := synth.AppendRecord(nil, format, &reqs[i])
					in.Write(line)
					in.WriteByte('\n')
					if i%50 == 0 { // a rejected record that still carries the credential
						cut := string(line[:len(line)/2])
						in.WriteString(cut + "\n")
						in.WriteString("\xff" + string(line) + "\n")
					}
				}
				out, errOut, code := runCmd(t, in.String(), "parse", "--config", cfgFile, "--format", as, "--input", "-")
				if code != 0 {
					t.Fatalf("exit %d: %s", code, errOut)
				}
				for s := range secrets {
					if strings.Contains(out, s) || strings.Contains(errOut, s) {
						t.Fatalf("raw credential %q... appears in the output", s[:8])
					}
				}
				sc := bufio.NewScanner(strings.NewReader(out))
				sc.Buffer(nil, 1<<20)
				n := 0
				for sc.Scan() {
					var ev map[string]any
					if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
						t.Fatalf("stdout line %d: %v", n+1, err)
					}
					if fp, _ := ev["token_fp"].(string); len(fp) != 32 {
						t.Fatalf("event %d has token_fp %q", n+1, fp)
					}
					n++
				}
				if n != len(reqs) {
					t.Errorf("%d events for %d records", n, len(reqs))
				}
				if want := fmt.Sprintf("parse: %d events, ", len(reqs)); !strings.Contains(errOut, want) {
					t.Errorf("stderr lacks %q:\n%.500s", want, errOut)
				}
				if !strings.Contains(errOut, "stdin:") || !strings.Contains(errOut, "rejected") {
					t.Errorf("rejected records are not reported on stderr:\n%.500s", errOut)
				}
			})
		}
	}
}

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/gatewatch/gatewatch/ingest"
)

// runFingerprint prints the fingerprint events carry for raw API keys or tokens read on
// standard input. A credential given as an argument would land in the shell history and
// in every process listing, so arguments are refused.
func runFingerprint(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "fingerprint", "fingerprint [--config FILE] [--kind key|token] < RAW")
	configPath := fs.String("config", "", "config file (its token secret; without one, the secret kept under store.data_dir)")
	kind := fs.String("kind", "key", "key: a raw API key (its client_key and token_fp); token: a bearer token or Authorization value (its token_fp)")
	rest, err := parseFlagsArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		fmt.Fprintln(env.stderr, "fingerprint: give the key or token on standard input, not as an argument: arguments are kept in shell history and shown in process listings")
		return errUsage
	}
	if *kind != "key" && *kind != "token" {
		fmt.Fprintf(env.stderr, "fingerprint: --kind must be key or token, got %q\n", *kind)
		return errUsage
	}
	cfg, err := loadConfigFile(*configPath)
	if err != nil {
		return err
	}
	var secret ingest.TokenSecret
	if c := &cfg.Ingest; c.TokenSecretFile != "" || c.TokenSecretEnv != "" {
		secret, err = ingest.LoadTokenSecret(c.TokenSecretFile, c.TokenSecretEnv)
	} else {
		var note string
		secret, note, err = dataDirSecret(cfg)
		fmt.Fprintln(env.stderr, "fingerprint: "+note)
	}
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(env.stdin)
	sc.Buffer(make([]byte, 0, 4<<10), 64<<10)
	n := 0
	for sc.Scan() {
		raw := sc.Bytes()
		if strings.TrimSpace(string(raw)) == "" {
			continue
		}
		fp := secret.KeyFingerprint(raw)
		if *kind == "token" {
			fp = secret.TokenFingerprint(raw)
		}
		if _, err := fmt.Fprintln(env.stdout, fp); err != nil {
			return err
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read standard input: %w", err)
	}
	if n == 0 {
		return errors.New("no key or token on standard input (one per line)")
	}
	return nil
}

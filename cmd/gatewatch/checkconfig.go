package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"go.yaml.in/yaml/v3"
)

func runCheckConfig(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "check-config", "check-config FILE")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	cfg, err := loadConfigFile(fs.Arg(0))
	if err != nil {
		return err
	}
	out, err := yaml.Marshal(cfg) // secrets are file paths or redact themselves
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "%s: ok\n", fs.Arg(0))
	_, err = env.stdout.Write(out)
	return err
}

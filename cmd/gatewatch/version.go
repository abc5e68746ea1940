package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and commit are set at build time:
//
//	go build -ldflags "-X main.version=1.4.0 -X main.commit=$(git rev-parse HEAD)" ./cmd/gatewatch
//
// Unset, they come from the build information Go records (the module version of
// `go install ...@v1.4.0`, the VCS revision of a build inside a checkout).
var (
	version string
	commit  string
)

// versionInfo returns the version and commit gatewatch was built from, and whether
// the checkout had uncommitted changes; "unknown" where nothing says.
func versionInfo() (v, c string, modified bool) {
	v, c = version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if c == "" {
					c = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true" && commit == ""
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	if c == "" {
		c = "unknown"
	}
	return v, c, modified
}

func runVersion(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "version", "version")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	v, c, modified := versionInfo()
	if modified {
		c += " (modified)"
	}
	_, err := fmt.Fprintf(env.stdout, "gatewatch %s\ncommit %s\n%s %s/%s\n", v, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return err
}

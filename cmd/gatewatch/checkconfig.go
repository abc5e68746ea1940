package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"

	"go.yaml.in/yaml/v3"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	gwconfig "github.com/gatewatch/gatewatch/internal/config"
)

// runCheckConfig validates a config file, then reads what it names as `run` would at
// start-up, so that a config that passes can run; it warns about what is valid but
// almost certainly a mistake, and prints the config with defaults applied.
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
	if err := cfg.check(); err != nil {
		return err
	}
	for _, w := range cfg.warnings() {
		fmt.Fprintf(env.stderr, "warning: %v\n", w)
	}
	out, err := yaml.Marshal(cfg) // secrets are file paths or variable names
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "%s: ok\n", fs.Arg(0))
	_, err = env.stdout.Write(out)
	return err
}

// check reads what the settings name, as start-up will: every secret file and
// environment variable (long enough where a key must be), the TLS files, the GeoIP
// database. It reports every problem at once, placed in the file, and never a
// secret's value.
func (c *config) check() error {
	errs := []error{
		gwconfig.Prefix("ingest", c.Ingest.Check()),
		gwconfig.Prefix("store", c.Store.Check()),
		gwconfig.Prefix("alerting", c.Alerting.Check()),
	}
	errs = append(errs, gwconfig.Prefix("console", c.Console.Check()))
	if db := c.Ingest.GeoIP.Database; db != "" {
		g, err := ingest.OpenGeoIP(db)
		if err != nil {
			errs = append(errs, gwconfig.Errorf("ingest.geoip.database", "%v", err))
		} else {
			_ = g.Close() // opened to check it; nothing was read
		}
	}
	if err := errors.Join(errs...); err != nil {
		return joinPlaced(c.place(err))
	}
	return nil
}

// warnings returns what is valid but almost certainly not what the operator meant:
// no receivers, routes that can never match, receivers no route names, alerts no
// route takes (alerting.Config.Warnings), a console beyond loopback, placed in the
// file.
func (c *config) warnings() []*gwconfig.Error {
	return c.place(errors.Join(gwconfig.Prefix("alerting", c.Alerting.Warnings(firing(c.Detectors))),
		gwconfig.Prefix("console", c.Console.Warnings())))
}

// firing returns the detectors that can raise alerts: those enabled, and those that
// an override enables for some keys or routes. It reads the config as the file says
// it, so that it knows every detector, whatever its config type.
func firing(c detectors.Config) []string {
	var root yaml.Node
	if err := root.Encode(c); err != nil {
		return detectors.Names // cannot tell: assume every detector fires
	}
	var out []string
	for _, name := range detectors.Names {
		d := mappingValue(&root, name)
		if d == nil {
			out = append(out, name)
			continue
		}
		on := func(n *yaml.Node) bool {
			e := mappingValue(n, "enabled")
			return e != nil && e.value.Value == "true"
		}
		overrides := mappingValue(d.value, "overrides")
		if on(d.value) || (overrides != nil && slices.ContainsFunc(overrides.value.Content, on)) {
			out = append(out, name)
		}
	}
	return out
}

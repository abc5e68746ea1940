package console

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/gatewatch/gatewatch/internal/config"
)

// Config is the console section of gatewatch.yaml: off unless Listen is set.
type Config struct {
	// Listen is where `gatewatch run` serves the console, host:port. Without a host
	// (":9465") it is loopback, 127.0.0.1: the console answers beyond this machine
	// only on an address named for it (0.0.0.0:9465, 10.0.0.5:9465), which
	// check-config warns about, since the console speaks plain HTTP and belongs behind
	// a TLS-terminating proxy.
	Listen string `yaml:"listen"`
	// The bearer token requests carry ("Authorization: Bearer <token>"), or an analyst
	// logs in with; from a file or the environment; required with Listen.
	TokenFile string `yaml:"token_file"`
	TokenEnv  string `yaml:"token_env"`
	// UsersFile lists basic-auth users, one "name:bcrypt-hash" a line (htpasswd -B);
	// each logs in, and is named in the audit log, as themselves. Optional.
	UsersFile string `yaml:"users_file"`
	// TrustedProxy trusts an authenticating proxy's user header, from its addresses
	// only. Optional.
	TrustedProxy *TrustedProxy `yaml:"trusted_proxy,omitempty"`
	// The Slack app's signing secret: set, the console serves the app's
	// interactivity endpoint at /slack/interactions (Acknowledge and Silence buttons).
	SlackSigningSecretFile string `yaml:"slack_signing_secret_file"`
	SlackSigningSecretEnv  string `yaml:"slack_signing_secret_env"`
}

// TrustedProxy is an authenticating reverse proxy (oauth2-proxy, an SSO gateway) in
// front of the console: a request from one of its addresses carrying Header is the
// user the header names. From anywhere else the header is ignored.
type TrustedProxy struct {
	Header string   `yaml:"header"` // X-Forwarded-User, X-Auth-Request-Email, ...
	From   []string `yaml:"from"`   // addresses or CIDR prefixes of the proxy
}

// Addr is the address the console binds: Listen, with 127.0.0.1 for a missing host.
func (c *Config) Addr() string {
	host, port, err := net.SplitHostPort(c.Listen)
	if err != nil || host != "" {
		return c.Listen
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// Warnings reports what is valid but exposes the console: an address beyond
// loopback, where the token and the session cookie would cross the network in clear
// unless a TLS-terminating proxy is in front.
func (c *Config) Warnings() error {
	host, _, err := net.SplitHostPort(c.Addr())
	if c.Listen == "" || err != nil {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() || host == "localhost" {
		return nil
	}
	return config.Errorf("listen", "%s answers beyond this machine over plain HTTP: put a TLS-terminating proxy in front, or listen on 127.0.0.1", c.Listen)
}

// MinTokenBytes is the shortest console token accepted: it guards who may read
// alerts and act on them.
const MinTokenBytes = 16

// Token is where the console's token comes from.
func (c *Config) Token() config.SecretRef {
	return config.SecretRef{Key: "token", File: c.TokenFile, Env: c.TokenEnv}
}

// SlackSigningSecret is where the Slack app's signing secret comes from.
func (c *Config) SlackSigningSecret() config.SecretRef {
	return config.SecretRef{Key: "slack_signing_secret", File: c.SlackSigningSecretFile, Env: c.SlackSigningSecretEnv}
}

// Validate reports every invalid setting, keyed below the console section.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen != "" {
		_, port, err := net.SplitHostPort(c.Listen)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || (n == 0 && port != "0") {
			errs = append(errs, config.Errorf("listen", "must be host:port (127.0.0.1:9465), got %q", c.Listen))
		}
	}
	errs = append(errs, c.Token().Validate(c.Listen != ""), c.SlackSigningSecret().Validate(false))
	if c.Listen == "" && (c.UsersFile != "" || c.TrustedProxy != nil || c.SlackSigningSecret().IsSet()) {
		errs = append(errs, config.Errorf("listen", "must be set: the console's other settings do nothing without it"))
	}
	if p := c.TrustedProxy; p != nil {
		if p.Header == "" || strings.ContainsAny(p.Header, " :\r\n") {
			errs = append(errs, config.Errorf("trusted_proxy.header", "must name a header (X-Forwarded-User), got %q", p.Header))
		}
		if len(p.From) == 0 {
			errs = append(errs, config.Errorf("trusted_proxy.from", "must list the proxy's addresses: a header trusted from anywhere lets anyone in"))
		}
		for i, f := range p.From {
			if _, err := parsePrefix(f); err != nil {
				errs = append(errs, config.Errorf(fmt.Sprintf("trusted_proxy.from[%d]", i), "%v", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Check reads what the settings name, as the console will: the token (at least
// MinTokenBytes), the users file, the signing secret. It names the key of each problem,
// never a secret's value. It assumes Validate passed.
func (c *Config) Check() error {
	if c.Listen == "" {
		return nil
	}
	_, err := c.load()
	return err
}

// credentials are the console's loaded secrets.
type credentials struct {
	token   config.Secret
	users   map[string][]byte // name → bcrypt hash
	signing config.Secret     // empty: no Slack endpoint
	proxies []netip.Prefix
}

func (c *Config) load() (credentials, error) {
	var cr credentials
	var errs []error
	tok, err := c.Token().Load(MinTokenBytes)
	errs = append(errs, err)
	cr.token = tok
	if c.UsersFile != "" {
		cr.users, err = loadUsers(c.UsersFile)
		if err != nil {
			errs = append(errs, config.Errorf("users_file", "%v", err))
		}
	}
	if c.SlackSigningSecret().IsSet() {
		cr.signing, err = c.SlackSigningSecret().Load(16)
		errs = append(errs, err)
	}
	if c.TrustedProxy != nil {
		for _, f := range c.TrustedProxy.From {
			p, err := parsePrefix(f)
			if err == nil {
				cr.proxies = append(cr.proxies, p)
			}
		}
	}
	return cr, errors.Join(errs...)
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR prefix", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// maxUsers bounds the users file.
const maxUsers = 10_000

// loadUsers reads an htpasswd file of bcrypt hashes ($2a$, $2b$, $2y$): the format
// `htpasswd -B` writes. Other hash kinds are refused by line, never echoed.
func loadUsers(path string) (map[string][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users := map[string][]byte{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("line %d: want name:bcrypt-hash", n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("line %d (%s): not a bcrypt hash (make it with htpasswd -B)", n, name)
		}
		if _, dup := users[name]; dup {
			return nil, fmt.Errorf("line %d: user %s is listed twice", n, name)
		}
		users[name] = []byte(hash)
		if len(users) > maxUsers {
			return nil, fmt.Errorf("more than %d users", maxUsers)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return users, nil
}

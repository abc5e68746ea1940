// Package clickhousetest runs a real clickhouse-server for integration tests: from a
// temp dir, on free loopback ports, with a generated minimal configuration.
//
// Require hands every test of one test binary the same server (each test then works in
// a database of its own, see NewDatabase), so the suite pays for one server start.
// Start gives a test a server of its own that it may stop and start again, which is
// what outage tests need.
//
// What Debian's clickhouse-server 18.16.1 needs, found by running it:
//   - a config.xml with path, tmp_path, user_files_path and format_schema_path (each
//     with a trailing slash) and a users.xml with a default profile, user and quota;
//     without interserver_http_port, mysql or ZooKeeper sections nothing else listens;
//   - the root element <yandex>; current servers still accept it (and <clickhouse>);
//   - nothing special to run as root: 18.16 starts as whatever user runs it, root
//     included, and does not even look at who owns path (tried with path owned by
//     nobody). Newer releases started as root may switch to the owner of path; the
//     temp dir is created by the current user, so that changes nothing either. CI,
//     which runs as root, needs no uid switch;
//   - readiness is not announced anywhere, so the helper polls a native-protocol ping;
//     a fresh server answers within about a second;
//   - SIGTERM stops it within a second when no client is connected, but it waits about
//     10s for open client connections (a connection pool keeps some); after SIGKILL it
//     restarts from the same path, logging an unclean restart and keeping every part
//     it acknowledged.
//
// Settings newer servers know and 18.16 does not (max_server_memory_usage) are ignored
// by 18.16, so the same config serves both.
package clickhousetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// EnvAddr names the environment variable that points the tests at an existing server
// (host:port of its native protocol) instead of starting one.
const EnvAddr = "GATEWATCH_TEST_CLICKHOUSE"

// startTimeout bounds how long a server may take to answer its first ping. A fresh
// 18.16 answers within a second; a loaded CI machine gets generous slack.
const startTimeout = 60 * time.Second

// stopTimeout bounds a graceful stop before the process group is killed.
const stopTimeout = 20 * time.Second

var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Require returns the native-protocol address (host:port) of a ClickHouse server for
// t: $GATEWATCH_TEST_CLICKHOUSE when set, else a clickhouse-server shared by every test
// in this test binary, started on first use. Without a server binary, t is skipped, or
// fails when $CI is set, because CI runs every ClickHouse test.
//
// The shared server outlives any one test, so no t.Cleanup stops it: a small shell
// watchdog stops it and removes its directory when the test binary exits, however it
// exits (its stdin is a pipe from this process, which the kernel closes then).
func Require(t testing.TB) string {
	t.Helper()
	if addr := os.Getenv(EnvAddr); addr != "" {
		return addr
	}
	bin := findBinary(t)
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "gatewatch-clickhouse-")
		if err != nil {
			shared.err = err
			return
		}
		s := &Server{bin: bin, dir: dir, removeDir: true}
		if shared.err = s.Start(); shared.err != nil {
			_ = os.RemoveAll(dir)
			return
		}
		shared.srv = s
	})
	if shared.err != nil {
		t.Fatalf("clickhousetest: starting the shared clickhouse-server: %v", shared.err)
	}
	return shared.srv.Addr()
}

// A Server is a clickhouse-server owned by one test. Stop and Start keep its data
// directory and ports, so a test can take ClickHouse away and bring it back with its
// data. Methods are not safe for concurrent use.
type Server struct {
	bin       []string // the server binary and the argument that selects server mode, if any
	dir       string
	removeDir bool // the watchdog removes dir after the server exits (the shared server)
	tcpPort   int
	httpPort  int
	tlsPort   int  // 0: no TLS port
	tls       bool // serve TLS with tls.crt and tls.key in dir

	proc   *exec.Cmd
	stdin  io.WriteCloser // closing it tells the watchdog to stop the server
	exited chan struct{}  // closed when the watchdog (and so the server) has exited
}

// Start returns a running clickhouse-server of t's own in t.TempDir(), stopped by
// t.Cleanup. Without a server binary, t is skipped, or fails when $CI is set.
// $GATEWATCH_TEST_CLICKHOUSE does not apply: a test that stops the server must own it.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, &Server{bin: findBinary(t), dir: t.TempDir()})
}

// StartTLS is Start with a second native-protocol port that speaks TLS (TLSAddr), with
// the certificate and key given in PEM.
func StartTLS(t testing.TB, certPEM, keyPEM []byte) *Server {
	t.Helper()
	s := &Server{bin: findBinary(t), dir: t.TempDir(), tls: true}
	for name, data := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(s.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return start(t, s)
}

func start(t testing.TB, s *Server) *Server {
	t.Helper()
	if err := s.Start(); err != nil {
		t.Fatalf("clickhousetest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("clickhousetest: %v", err)
		}
	})
	return s
}

// TLSAddr returns the address of the TLS native-protocol port of a server from
// StartTLS.
func (s *Server) TLSAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tlsPort)) }

// Addr returns the server's native-protocol address, host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tcpPort)) }

// Dir returns the server's directory: config, data and logs.
func (s *Server) Dir() string { return s.dir }

// Start starts the server, if stopped, and returns once it answers a native-protocol
// ping. The first start picks free ports; later starts reuse them, so clients that
// knew the old address reconnect to the same server.
func (s *Server) Start() error {
	if s.proc != nil {
		return nil
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if s.tcpPort == 0 || attempt > 0 {
			// Another process may take a port between our probe and the server's
			// bind; the server then exits, and a fresh pair of ports is tried.
			ports, err := freePorts(3)
			if err != nil {
				return err
			}
			s.tcpPort, s.httpPort = ports[0], ports[1]
			if s.tls {
				s.tlsPort = ports[2]
			}
		}
		if err = s.writeConfig(); err != nil {
			return err
		}
		if err = s.launch(); err == nil {
			return nil
		}
		if !errors.Is(err, errExited) || !strings.Contains(s.logTail(), "Address already in use") {
			return err
		}
	}
	return err
}

// Stop stops the server gracefully (SIGTERM), killing it after a bounded wait. A
// server with client connections open waits for them for several seconds first
// (about 10s for 18.16); Kill is the quick way to take it away.
func (s *Server) Stop() error {
	if s.proc == nil {
		return nil
	}
	_ = s.stdin.Close()
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		return s.Kill()
	}
	s.proc = nil
	return nil
}

// Kill kills the server at once (SIGKILL), as a crash or a lost host would. ClickHouse
// keeps every insert it acknowledged, and Start brings it back with them.
func (s *Server) Kill() error {
	if s.proc == nil {
		return nil
	}
	// The watchdog runs in its own process group with the server in it.
	if err := syscall.Kill(-s.proc.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing clickhouse-server: %w", err)
	}
	<-s.exited
	_ = s.stdin.Close()
	s.proc = nil
	return nil
}

var errExited = errors.New("clickhouse-server exited during start")

// watchdog runs the server and stops it when its stdin reaches EOF: when Stop closes
// the pipe, or when the test binary exits (or is killed) and the kernel closes it.
// Arguments: the directory, whether to remove it afterwards, then the server command.
// The server gets /dev/null for stdin and fd 3 closed, so only the watcher holds the
// pipe; its output goes to files, because an inherited stdout would make `go test`
// wait for the server after the test binary exits.
const watchdog = `
dir=$1; remove=$2; shift 2
exec 3<&0
"$@" </dev/null >"$dir/stdout.log" 2>&1 3<&- &
pid=$!
( read -r _ <&3; kill -TERM "$pid" 2>/dev/null; sleep 15; kill -KILL "$pid" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$pid"; status=$?
kill "$watcher" 2>/dev/null
if [ "$remove" = 1 ]; then rm -rf "$dir"; fi
exit $status
`

func (s *Server) launch() error {
	args := []string{"-c", watchdog, "clickhouse-watchdog", s.dir, "0"}
	if s.removeDir {
		args[4] = "1"
	}
	args = append(args, s.bin...)
	args = append(args, "--config-file="+filepath.Join(s.dir, "config.xml"))
	cmd := exec.Command("/bin/sh", args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.bin[0], err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.proc, s.stdin, s.exited = cmd, stdin, exited

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := waitReady(ctx, s.Addr(), exited); err != nil {
		_ = s.Stop()
		if errors.Is(err, errExited) {
			return fmt.Errorf("%w: %s", err, s.logTail())
		}
		return fmt.Errorf("clickhouse-server in %s: %w; log: %s", s.dir, err, s.logTail())
	}
	return nil
}

// waitReady polls a native-protocol ping until it succeeds, the server exits or ctx
// ends. Polling is the only way: the server announces readiness nowhere.
func waitReady(ctx context.Context, addr string, exited <-chan struct{}) error {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{addr},
		DialTimeout: time.Second,
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := conn.Ping(pingCtx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("no ping answer: %w (last: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

func (s *Server) logTail() string {
	var out []string
	for _, name := range []string{"clickhouse-server.err.log", "stdout.log"} {
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil || len(b) == 0 {
			continue
		}
		if len(b) > 2000 {
			b = b[len(b)-2000:]
		}
		out = append(out, name+": "+string(b))
	}
	return strings.Join(out, "\n")
}

// findBinary returns the server command: Debian's clickhouse-server, else the
// multi-call clickhouse binary of newer installs run as `clickhouse server`.
func findBinary(t testing.TB) []string {
	t.Helper()
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return []string{p}
	}
	if p, err := exec.LookPath("/usr/sbin/clickhouse-server"); err == nil {
		return []string{p} // Debian installs it outside a non-root PATH
	}
	p, err := exec.LookPath("clickhouse")
	if err == nil {
		return []string{p, "server"}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("clickhousetest: CI runs every ClickHouse test, but neither clickhouse-server nor clickhouse is installed (set %s or apt-get install clickhouse-server): %v", EnvAddr, err)
	}
	t.Skipf("clickhousetest: clickhouse-server not installed (set %s or apt-get install clickhouse-server)", EnvAddr)
	return nil
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		defer l.Close() // held until all are chosen, so none is chosen twice
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

func (s *Server) writeConfig() error {
	for _, sub := range []string{"data", "tmp", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(s.dir, sub), 0o755); err != nil {
			return err
		}
	}
	var tlsConfig string
	if s.tls {
		tlsConfig = fmt.Sprintf(tlsXML, s.dir, s.tlsPort)
	}
	config := fmt.Sprintf(configXML, s.dir, s.tcpPort, s.httpPort, tlsConfig)
	if err := os.WriteFile(filepath.Join(s.dir, "config.xml"), []byte(config), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.dir, "users.xml"), []byte(usersXML), 0o644)
}

// configXML is a minimal server config: loopback only, two ports, everything under
// the temp dir (%[1]s), small caches, and a memory cap for newer servers (18.16
// ignores settings it does not know). Logs are at information level because the tail
// of the error log is what a failed start reports. No interserver, MySQL, PostgreSQL
// or ZooKeeper sections: a test server listens on nothing else.
const configXML = `<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>%[1]s/clickhouse-server.log</log>
        <errorlog>%[1]s/clickhouse-server.err.log</errorlog>
        <size>50M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>%[2]d</tcp_port>
    <http_port>%[3]d</http_port>
    <path>%[1]s/data/</path>
    <tmp_path>%[1]s/tmp/</tmp_path>
    <user_files_path>%[1]s/user_files/</user_files_path>
    <format_schema_path>%[1]s/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_server_memory_usage>2147483648</max_server_memory_usage>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mlock_executable>false</mlock_executable>
%[4]s</yandex>
`

// tlsXML adds the TLS port (%[2]d) with the certificate and key in the temp dir (%[1]s).
// Without dhParamsFile the server uses ECDHE only, which every current client offers.
const tlsXML = `    <tcp_port_secure>%[2]d</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>%[1]s/tls.crt</certificateFile>
            <privateKeyFile>%[1]s/tls.key</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
`

// usersXML allows the passwordless default user from loopback only. max_threads keeps
// one query from taking every core of a shared CI machine.
const usersXML = `<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>1000000000</max_memory_usage>
            <max_threads>2</max_threads>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
`

// NewDatabase creates a database with a fresh name on the server at addr, drops it when
// t ends, and returns its name. Tests sharing one server each work in their own.
func NewDatabase(t testing.TB, addr string) string {
	t.Helper()
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	name := "gw_" + sanitize(t.Name()) + "_" + hex.EncodeToString(suffix[:])
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("clickhousetest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		_ = conn.Close()
		t.Fatalf("clickhousetest: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// A test that stopped its server for good has nothing left to drop.
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name); err != nil && conn.Ping(ctx) == nil {
			t.Errorf("clickhousetest: dropping database %s: %v", name, err)
		}
	})
	return name
}

// sanitize keeps a test name usable as an unquoted identifier, and short.
func sanitize(name string) string {
	b := []byte(strings.ToLower(name))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	if len(b) > 40 {
		b = b[:40]
	}
	return string(b)
}

// Conn opens a connection to database db on addr for a test to look at what was
// written; t.Cleanup closes it.
func Conn(t testing.TB, addr, db string) driver.Conn {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Auth: clickhouse.Auth{Database: db}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

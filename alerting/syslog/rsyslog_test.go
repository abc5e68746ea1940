package syslog

import (
	"bytes"
	"fmt"
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
)

// rsyslogTimeout bounds every wait on rsyslogd: its start, its output, its stop.
const rsyslogTimeout = 20 * time.Second

// rsyslog is an rsyslogd started by a test: imtcp and imudp on loopback, writing each
// message it receives twice, raw (the bytes after the framing) and as the RFC 5424
// fields it parsed, one per line.
type rsyslog struct {
	TCPAddr, UDPAddr string
	raw, parsed      string // output files
	dir              string
	cmd              *exec.Cmd
	done             chan struct{} // closed when the process has exited
	out              *lockedBuffer // its stdout and stderr
}

// rsyslogConf writes each message raw and parsed; UDP readiness probes (MSGID
// gwprobe) go to a file of their own so they never mix with what a test sent.
const rsyslogConf = `global(workDirectory="{dir}/work" maxMessageSize="64k")
module(load="imtcp")
module(load="imudp")
template(name="raw" type="string" string="%rawmsg%\n")
template(name="parsed" type="string" string="%pri%|%protocol-version%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\n")
ruleset(name="out") {
  if $msgid == "gwprobe" then {
    action(type="omfile" file="{dir}/probe.log" template="raw")
    stop
  }
  action(type="omfile" file="{dir}/raw.log" template="raw")
  action(type="omfile" file="{dir}/parsed.log" template="parsed")
}
input(type="imtcp" address="127.0.0.1" port="{tcpport}" listenPortFileName="{dir}/tcpport" ruleset="out")
input(type="imudp" address="127.0.0.1" port="{udpport}" ruleset="out")
`

// rsyslogd returns the path of Debian's rsyslogd, skipping the test when it is not
// installed, except in CI, which runs every test.
func rsyslogd(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("rsyslogd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/rsyslogd"); serr == nil {
			return "/usr/sbin/rsyslogd"
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("CI runs every syslog test, but rsyslogd is not installed (apt-get install rsyslog): %v", err)
		}
		t.Skipf("rsyslogd not installed (apt-get install rsyslog): %v", err)
	}
	return bin
}

// startRsyslog runs rsyslogd in the foreground in a temp dir, with its own pid file and
// work directory, listening on tcpPort (0: any free port) and a free UDP port, and
// returns once both inputs receive. t.Cleanup stops it.
func startRsyslog(t *testing.T, tcpPort int) *rsyslog {
	t.Helper()
	bin := rsyslogd(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	udpPort := freeUDPPort(t)
	conf := strings.NewReplacer("{dir}", dir, "{tcpport}", strconv.Itoa(tcpPort), "{udpport}", strconv.Itoa(udpPort)).Replace(rsyslogConf)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	rs := &rsyslog{
		UDPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(udpPort)),
		raw:     filepath.Join(dir, "raw.log"), parsed: filepath.Join(dir, "parsed.log"), dir: dir,
		done: make(chan struct{}), out: &lockedBuffer{},
	}
	rs.cmd = exec.Command(bin, "-n", "-f", confPath, "-i", filepath.Join(dir, "rsyslogd.pid"))
	rs.cmd.Stdout, rs.cmd.Stderr = rs.out, rs.out
	if err := rs.cmd.Start(); err != nil {
		t.Fatalf("start rsyslogd: %v", err)
	}
	go func() {
		_ = rs.cmd.Wait()
		close(rs.done)
	}()
	t.Cleanup(func() { rs.stop(t) })

	// Ready when the TCP port it bound accepts and a UDP probe reached its file.
	waitFor(t, rs, "rsyslogd to listen on TCP", func() bool {
		port := strconv.Itoa(tcpPort)
		if tcpPort == 0 { // only then does imtcp write the port it bound
			b, err := os.ReadFile(filepath.Join(dir, "tcpport"))
			if err != nil || len(bytes.TrimSpace(b)) == 0 {
				return false
			}
			port = string(bytes.TrimSpace(b))
		}
		addr := net.JoinHostPort("127.0.0.1", port)
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		rs.TCPAddr = addr
		return true
	})
	probe, err := net.Dial("udp", rs.UDPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	waitFor(t, rs, "rsyslogd to receive on UDP", func() bool {
		_, _ = probe.Write([]byte("<13>1 - gatewatch-test probe - gwprobe - probe"))
		fi, err := os.Stat(filepath.Join(dir, "probe.log"))
		return err == nil && fi.Size() > 0
	})
	return rs
}

// stop sends SIGTERM and waits for the exit, killing it if it hangs.
func (rs *rsyslog) stop(t *testing.T) {
	select {
	case <-rs.done:
		return
	default:
	}
	_ = rs.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rs.done:
	case <-time.After(rsyslogTimeout):
		_ = rs.cmd.Process.Kill()
		<-rs.done
		t.Errorf("rsyslogd did not stop on SIGTERM within %s", rsyslogTimeout)
	}
}

// lines returns the complete lines of an output file (nil while it does not exist).
func lines(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	s := string(b)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return strings.Split(s[:i], "\n")
	}
	return nil
}

// waitLines waits until path holds at least n lines and returns them.
func (rs *rsyslog) waitLines(t *testing.T, path string, n int) []string {
	t.Helper()
	var got []string
	waitFor(t, rs, fmt.Sprintf("%d lines in %s", n, filepath.Base(path)), func() bool {
		got = lines(path)
		return len(got) >= n
	})
	return got
}

// waitFor polls cond until it holds, failing the test with rsyslogd's output when it
// does not within rsyslogTimeout or when rsyslogd exits.
func waitFor(t *testing.T, rs *rsyslog, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(rsyslogTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-rs.done:
			t.Fatalf("rsyslogd exited while waiting for %s:\n%s", what, rs.out)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s; rsyslogd says:\n%s", what, rsyslogTimeout, rs.out)
		}
	}
}

// freeUDPPort returns a UDP port that was free a moment ago: imudp cannot report the
// port it bound, as imtcp does with listenPortFileName.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

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

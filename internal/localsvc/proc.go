package localsvc

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ErrNotInstalled is returned (wrapped, with an install hint) when a server
// binary cannot be found on this machine.
var ErrNotInstalled = errors.New("localsvc: server binary not installed")

// proc is one external server process. Its waiting goroutine is locked to
// the OS thread that started the process, so the parent-death signal fires
// only when this process dies, not when an unrelated thread exits.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // set before done is closed
}

func startProc(name string, cmd *exec.Cmd, logPath string, cred *syscall.Credential) (*proc, error) {
	return startProcSignal(name, cmd, logPath, cred, syscall.SIGKILL)
}

// startProcSignal is startProc with the signal the process gets when this
// one dies: SIGKILL for servers that recover from a crash by themselves,
// SIGTERM for one that must shut down cleanly (the broker child).
func startProcSignal(name string, cmd *exec.Cmd, logPath string, cred *syscall.Credential, deathSig syscall.Signal) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s log: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig:  deathSig,
		Setpgid:    true,
		Credential: cred,
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, after the
		// child has been reaped.
		runtime.LockOSThread()
		defer close(p.done)
		defer logf.Close()
		if err := cmd.Start(); err != nil {
			p.err = err
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits up to grace for the process to end, then kills
// its whole process group.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// logTail returns the last few lines of the process log for error messages.
func (p *proc) logTail() string { return tailFile(p.logPath, 2048) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(bytes.TrimSpace(b))
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
//
// The port is picked at random below the kernel's ephemeral range (read
// from /proc/sys/net/ipv4/ip_local_port_range; 32768 when unknown) and
// checked by binding it: a port from the ephemeral range (what binding
// port 0 returns) can be taken by any outgoing connection on the machine
// between this check and the server's own bind, which made "address
// already in use" failures on a busy machine. A port is handed out once
// per process.
func FreePort() (int, error) {
	lo, hi := 20000, ephemeralLow()-1
	if hi-lo < 1000 {
		lo = 1024 // a machine whose ephemeral range starts low
	}
	freeMu.Lock()
	defer freeMu.Unlock()
	for range 1000 {
		p := lo + rand.IntN(hi-lo+1)
		if freeGiven[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		freeGiven[p] = true
		return p, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

var (
	freeMu    sync.Mutex
	freeGiven = map[int]bool{}
)

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		var lo, hi int
		if _, err := fmt.Sscanf(string(b), "%d %d", &lo, &hi); err == nil && lo > 1024 {
			return lo
		}
	}
	return 32768
}

// unprivileged returns the credential to run a server as when this process
// is root (PostgreSQL refuses to run as root), or nil when it is not.
func unprivileged(osUser string) (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, -1, -1, nil
	}
	u, err := user.Lookup(osUser)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("running as root needs an unprivileged OS user %q to own the server (create it or set another): %w", osUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

func waitReady(p *proc, timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited during start: %v\n%s", p.name, p.err, p.logTail())
		}
		if last = ready(); last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %v: %v\n%s", p.name, timeout, last, p.logTail())
}

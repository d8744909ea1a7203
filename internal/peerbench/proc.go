package peerbench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat; it
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// CPUSeconds returns the user plus system CPU time of process pid and of
// its waited-for children, from /proc/PID/stat.
func CPUSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	// f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	var sum float64
	for _, s := range f[11:15] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		sum += float64(v)
	}
	return sum / clockTicks, nil
}

// process is a started side: a peer JVM or a Loanflow worker.
type process struct {
	name    string
	cmd     *exec.Cmd
	start   time.Time
	logPath string
	exited  chan struct{}
	err     error
}

// startProcess starts cmd with its output in logPath.
// With $LOANFLOW_PEER_LOGS set, the log goes to that directory instead
// (it outlives the run's temporary directory).
func startProcess(name string, cmd *exec.Cmd, logPath string) (*process, error) {
	if d := os.Getenv("LOANFLOW_PEER_LOGS"); d != "" {
		logPath = filepath.Join(d, filepath.Base(logPath))
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (kill ends whatever it started too), killed
	// if the harness dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &process{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	p.start = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// cpu is the process's CPU seconds so far.
func (p *process) cpu() (float64, error) { return CPUSeconds(p.cmd.Process.Pid) }

// kill ends the process (and anything it started in its group) with
// SIGKILL and waits for it.
func (p *process) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// failure describes an early exit with the end of the process's log.
func (p *process) failure() error {
	raw, _ := os.ReadFile(p.logPath)
	// The first exception says more than the end of a stack trace.
	first := ""
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.Contains(l, "Exception") || strings.Contains(l, "error") {
			first = l + "\n"
			break
		}
	}
	if len(raw) > 3000 {
		raw = raw[len(raw)-3000:]
	}
	return fmt.Errorf("%s exited early (%v): %sthe end of %s:\n%s", p.name, p.err, first, p.logPath, raw)
}

// waitOrExit waits for done, the process's exit or the context.
func (p *process) waitOrExit(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-p.exited:
		select {
		case <-done:
			return nil
		default:
		}
		return p.failure()
	case <-ctx.Done():
		return ctx.Err()
	}
}

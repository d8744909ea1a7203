package localsvc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// brokerChildEnv carries the broker child's options (JSON) from
// StartBrokerProcess to MaybeRunBrokerChild in the re-executed binary.
const brokerChildEnv = "LOANFLOW_EMBEDDED_BROKER_CHILD"

// brokerParentEnv is the pid of the process that started the child: a
// child whose parent is already gone when it starts exits at once.
const brokerParentEnv = "LOANFLOW_EMBEDDED_BROKER_PARENT"

// ErrNoBrokerChildHook is returned by StartBrokerProcess in a process that
// is itself a broker child: its main did not call MaybeRunBrokerChild.
var ErrNoBrokerChildHook = errors.New("localsvc: this binary runs as the broker child but its main (or TestMain) does not call localsvc.MaybeRunBrokerChild first")

// BrokerProcessOptions configures an embedded broker run in a child process.
type BrokerProcessOptions struct {
	// BrokerOptions of the broker; DataDir is required.
	BrokerOptions
	// LogPath is the child's log (its stderr and kfake's warnings).
	// Default DataDir + ".log".
	LogPath string
	// StartTimeout bounds the wait for the child to answer, including the
	// wait for a previous broker on the same DataDir to finish saving.
	// Default 2m.
	StartTimeout time.Duration
	// StopTimeout bounds a clean stop (the save of the whole log) before
	// the child is killed. Default 2m.
	StopTimeout time.Duration
	// Waiting, when set, is called once if another broker still holds
	// DataDir (a previous run saving its state) and the child waits for it.
	Waiting func(dataDir string)
}

func (o *BrokerProcessOptions) setDefaults() {
	if o.LogPath == "" {
		o.LogPath = filepath.Clean(o.DataDir) + ".log"
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 2 * time.Minute
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 2 * time.Minute
	}
}

// BrokerProcess is the embedded broker running in a child process (the
// current binary re-executed; see MaybeRunBrokerChild).
type BrokerProcess struct {
	opts BrokerProcessOptions
	addr string
	proc *proc
}

// StartBrokerProcess starts the embedded broker in a child process that
// re-executes this binary, and waits until it answers a metadata request
// (or ctx ends: the child is then stopped).
// The child holds an exclusive lock (flock) on DataDir from before it
// loads the directory until after it has saved it; a child started while a
// previous broker on the same directory is still saving waits for it.
//
// The child gets SIGTERM when this process dies (the parent-death signal,
// held by the OS thread that started it), so a SIGKILL of this process
// makes the broker finish the request it is handling and close cleanly:
// kfake writes a transaction's markers and offsets as separate file writes
// and tears it when killed in between; its Close, which runs between
// requests, does not (docs/design.md, "The embedded broker").
func StartBrokerProcess(ctx context.Context, opts BrokerProcessOptions) (*BrokerProcess, error) {
	if opts.DataDir == "" {
		return nil, errors.New("localsvc: BrokerProcessOptions.DataDir is empty")
	}
	if os.Getenv(brokerChildEnv) != "" {
		return nil, ErrNoBrokerChildHook
	}
	opts.setDefaults()
	dir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, err
	}
	opts.DataDir = dir
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("localsvc: finding this binary to run the broker child: %w", err)
	}
	spec, err := json.Marshal(opts.BrokerOptions)
	if err != nil {
		return nil, err
	}
	status, statusW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer status.Close()
	cmd := exec.Command(self)
	cmd.Args = []string{self, "embedded-broker", dir}
	cmd.Env = append(os.Environ(), brokerChildEnv+"="+string(spec), brokerParentEnv+"="+strconv.Itoa(os.Getpid()))
	cmd.ExtraFiles = []*os.File{statusW} // fd 3 in the child
	p, err := startProcSignal("embedded broker", cmd, opts.LogPath, nil, syscall.SIGTERM)
	statusW.Close()
	if err != nil {
		return nil, err
	}
	b := &BrokerProcess{opts: opts, proc: p}
	if b.addr, err = b.awaitReady(ctx, status); err != nil {
		b.Stop()
		return nil, err
	}
	return b, nil
}

// awaitReady reads the child's status lines ("waiting", "ready ADDR")
// until it is ready, then checks it answers metadata requests.
func (b *BrokerProcess) awaitReady(ctx context.Context, status io.Reader) (string, error) {
	lines := make(chan string, 4)
	go func() { // ends at EOF: the child closes fd 3 when ready, or exits
		defer close(lines)
		sc := bufio.NewScanner(status)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	deadline := time.NewTimer(b.opts.StartTimeout)
	defer deadline.Stop()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				<-b.proc.done
				return "", fmt.Errorf("embedded broker exited during start: %v\n%s", b.proc.err, b.proc.logTail())
			}
			if line == "waiting" && b.opts.Waiting != nil {
				b.opts.Waiting(b.opts.DataDir)
			}
			if addr, ok := strings.CutPrefix(line, "ready "); ok {
				err := waitReady(b.proc, 30*time.Second, func() error { return brokerAnswers(addr) })
				return addr, err
			}
		case <-ctx.Done():
			return "", fmt.Errorf("starting embedded broker: %w", ctx.Err())
		case <-deadline.C:
			return "", fmt.Errorf("embedded broker not ready after %v (is another broker saving %s?)\n%s", b.opts.StartTimeout, b.opts.DataDir, b.proc.logTail())
		}
	}
}

// brokerAnswers asks addr for metadata (after ApiVersions, which the
// client sends first).
func brokerAnswers(addr string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DialTimeout(time.Second), kgo.DisableClientMetrics())
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = kadm.NewClient(cl).BrokerMetadata(ctx)
	return err
}

// Addrs are the broker's host:port seed addresses.
func (b *BrokerProcess) Addrs() []string { return []string{b.addr} }

// Pid is the child's process id.
func (b *BrokerProcess) Pid() int { return b.proc.cmd.Process.Pid }

// Exited is closed when the child has ended.
func (b *BrokerProcess) Exited() <-chan struct{} { return b.proc.done }

// Stop asks the child to close (SIGTERM: it saves its state and releases
// the directory) and waits for it, killing it after StopTimeout. It is
// safe to call more than once.
func (b *BrokerProcess) Stop() { b.proc.stop(syscall.SIGTERM, b.opts.StopTimeout) }

// Kill ends the child with SIGKILL, as a crash of the broker itself would:
// its state on disk may then hold a torn transaction. For tests.
func (b *BrokerProcess) Kill() { b.proc.stop(syscall.SIGKILL, 10*time.Second) }

// MaybeRunBrokerChild runs the embedded broker child and exits when this
// process was started as one by StartBrokerProcess; otherwise it returns
// at once. Call it first thing in main, and in the TestMain of a test
// binary whose tests start broker processes.
func MaybeRunBrokerChild() {
	spec := os.Getenv(brokerChildEnv)
	if spec == "" {
		return
	}
	os.Exit(runBrokerChild(spec))
}

// runBrokerChild is the child's life: lock the directory, serve until
// SIGTERM or SIGINT, close (kfake saves its state), exit (which releases
// the lock). It writes its status to fd 3 and its log to stderr.
func runBrokerChild(spec string) int {
	log := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s embedded broker pid %d: %s\n", time.Now().Format(time.RFC3339Nano), os.Getpid(), fmt.Sprintf(format, args...))
	}
	parent, _ := strconv.Atoi(os.Getenv(brokerParentEnv))
	os.Unsetenv(brokerChildEnv)
	os.Unsetenv(brokerParentEnv)
	status := os.NewFile(3, "status")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	// A parent that died before the handler was installed sent its
	// SIGTERM too early; this one has not touched the directory yet.
	if os.Getppid() != parent {
		log("parent %d is gone before the start; exiting", parent)
		return 1
	}
	var opts BrokerOptions
	if err := json.Unmarshal([]byte(spec), &opts); err != nil {
		log("bad options %q: %v", spec, err)
		return 2
	}
	unlock, err := lockDir(opts.DataDir, func() {
		log("waiting for the previous broker to finish saving %s", opts.DataDir)
		fmt.Fprintln(status, "waiting")
	}, stop)
	if err != nil {
		log("%v", err)
		return 1
	}
	defer unlock()
	start := time.Now()
	b, err := startBroker(opts, kfake.WithLogger(kfake.BasicLogger(os.Stderr, kfake.LogLevelWarn)))
	if err != nil {
		log("%v", err)
		return 1
	}
	log("serving %s on %s (loaded in %v)", opts.DataDir, b.Addrs()[0], time.Since(start).Round(time.Millisecond))
	fmt.Fprintln(status, "ready "+b.Addrs()[0])
	status.Close()
	sig := <-stop
	log("%v: closing (finishing the current request, saving the state)", sig)
	start = time.Now()
	b.Stop()
	log("saved and closed in %v", time.Since(start).Round(time.Millisecond))
	return 0
}

// lockDir takes an exclusive flock on dir (created if missing), calling
// waiting once if another process holds it. It gives up when stop
// receives a signal first.
func lockDir(dir string, waiting func(), stop <-chan os.Signal) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating broker data dir: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("opening broker data dir to lock it: %w", err)
	}
	fd := int(f.Fd())
	err = syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		waiting()
		locked := make(chan error, 1)
		go func() { locked <- syscall.Flock(fd, syscall.LOCK_EX) }()
		select {
		case err = <-locked:
		case sig := <-stop:
			f.Close()
			return nil, fmt.Errorf("%v while waiting for the lock on %s", sig, dir)
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking broker data dir %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

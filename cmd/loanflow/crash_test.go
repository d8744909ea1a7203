package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
)

// The crash test's workload: loanflow load runs of crashRunCount
// applications at crashRate until crashMinAccepted are accepted and the
// stack has been killed crashMinKills times.
const (
	crashRate        = 80
	crashRunCount    = 2000
	crashMinAccepted = 5000
	crashMinKills    = 5
	// crashProgress is how many decisions the stack must write after a
	// restart before the next kill.
	crashProgress = 100
)

// TestDevStackSurvivesSIGKILL runs the real loanflow binary: `loanflow
// dev` in a directory on fixed free ports, `loanflow load` against it, and
// SIGKILLs `loanflow dev` at least crashMinKills times, each time after the
// stack has made progress since its restart (alternately at a random
// moment and at the broker's next write to its group log, i.e. inside a
// transaction's commit), restarting it on the same directory. Then an
// independent read_committed reader reads every record of loan_decisions:
// every application that got a 202 must be decided exactly once.
//
// LOANFLOW_CRASH_NEGATIVE_CONTROL=1 runs the broker inside `loanflow dev`
// as before (LOANFLOW_DEV_BROKER_IN_PROCESS=1), so the kills reach it.
func TestDevStackSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary, runs the whole stack and kills it")
	}
	requireServers(t)
	start := time.Now()
	st := newCrashStack(t, buildLoanflow(t))
	st.start(t)
	loadCtx, stopLoads := context.WithCancel(context.Background())
	loads := make(chan crashLoadTotals, 1)
	killsDone := make(chan struct{})
	go func() { loads <- runCrashLoads(loadCtx, st, killsDone) }()
	t.Cleanup(func() { // before the stack stops: a failed test stops its loads
		stopLoads()
		select {
		case <-loads:
		case <-time.After(time.Minute):
		}
	})

	kills := 0
	for ; kills < crashMinKills; kills++ {
		if err := st.awaitProgress(crashProgress, 3*time.Minute); err != nil {
			close(killsDone)
			t.Fatalf("kill %d: %v\n%s", kills, err, st.logTail())
		}
		st.kill(t, kills%2 == 1)
		st.start(t)
	}
	close(killsDone)
	totals := <-loads
	loads <- totals // for the cleanup
	if totals.err != nil {
		t.Fatalf("loads: %v\n%s", totals.err, st.logTail())
	}
	decisions, err := readAllDecisions(st.brokers, 2*time.Minute)
	if err != nil {
		t.Fatalf("reading loan_decisions: %v", err)
	}
	lost, dup := checkDecidedOnce(totals.accepted, decisions)
	t.Logf("%d load runs: %d submitted, %d accepted, rejected %v; %d kills of loanflow dev (%d timed at a group-log write), restarts ready in %v; "+
		"loan_decisions holds %d decisions of these runs (%d of submissions without a 202); lost %d, duplicated %d; %s in all",
		totals.runs, totals.submitted, len(totals.accepted), totals.rejected, kills, st.timedKills, st.readyIn, sumCounts(decisions),
		decidedUnaccepted(totals.accepted, decisions), len(lost), len(dup), time.Since(start).Round(time.Second))
	if len(totals.accepted) < crashMinAccepted {
		t.Errorf("only %d applications accepted, want at least %d", len(totals.accepted), crashMinAccepted)
	}
	if len(lost) > 0 || len(dup) > 0 {
		t.Errorf("accepted applications lost (no decision): %d %v; decided more than once: %d %v", len(lost), first(lost, 20), len(dup), first(dup, 20))
	}
	if totals.loadFailures > 0 {
		t.Errorf("%d loanflow load runs reported missing or duplicated decisions themselves", totals.loadFailures)
	}
}

// buildLoanflow builds the loanflow binary of this package.
func buildLoanflow(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "loanflow")
	out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("building loanflow: %v\n%s", err, out)
	}
	return bin
}

// crashStack is `loanflow dev` run again and again on one directory and
// one set of ports.
type crashStack struct {
	bin, dir           string
	args, env          []string
	api, registry      string
	brokers            []string
	adm                *kadm.Client
	cmd                *exec.Cmd
	exited             chan struct{}
	incarnation        int
	readyIn            []time.Duration
	timedKills         int
	decisionsAtRestart int64
}

func newCrashStack(t *testing.T, bin string) *crashStack { return newBinaryStack(t, bin, "crash", nil) }

// newBinaryStack prepares `loanflow dev` in a directory named after name,
// on fixed free ports, with the embedded broker or (brokers set) with
// --brokers.
func newBinaryStack(t *testing.T, bin, name string, brokers []string) *crashStack {
	t.Helper()
	dir := testenv.Dir(t, name)
	port := func() string {
		p, err := localsvc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return strconv.Itoa(p)
	}
	s := &crashStack{bin: bin, dir: dir}
	api, registry, broker := "127.0.0.1:"+port(), "127.0.0.1:"+port(), port()
	s.api, s.registry, s.brokers = "http://"+api, "http://"+registry, []string{"127.0.0.1:" + broker}
	s.args = []string{"dev", "--dir", dir, "--api-addr", api, "--registry-addr", registry,
		"--bureau-addr", "127.0.0.1:" + port(), "--cdc-metrics-addr", "127.0.0.1:" + port(),
		"--worker-admin-port", strconv.Itoa(freePortRun(t, len(devJobs))), "--postgres-port", port(),
		"--redis-port", port(), "--broker-port", broker, "--lender-rate-limit", "2000",
		"--bureau-latency-min", "20ms", "--bureau-latency-max", "200ms"}
	if len(brokers) > 0 {
		s.brokers = brokers
		s.args = append(s.args, "--brokers", strings.Join(brokers, ","))
	}
	s.env = os.Environ()
	if os.Getenv("LOANFLOW_CRASH_NEGATIVE_CONTROL") == "1" {
		s.env = append(s.env, "LOANFLOW_DEV_BROKER_IN_PROCESS=1")
		t.Log("negative control: the broker runs inside loanflow dev")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	s.adm = kadm.NewClient(cl)
	t.Cleanup(func() { s.stop(t) })
	return s
}

// devJobs is how many worker admin ports loanflow dev takes.
var devJobs = []string{"cache-invalidation", "portfolio", "decisions"}

// freePortRun finds n consecutive free ports and returns the first.
func freePortRun(t *testing.T, n int) int {
	t.Helper()
	for range 100 {
		base, err := localsvc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		free := true
		for i := 1; i < n && free; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if free = err == nil; free {
				ln.Close()
			}
		}
		if free {
			return base
		}
	}
	t.Fatal("no run of free ports")
	return 0
}

func (s *crashStack) logPath(i int) string { return filepath.Join(s.dir, fmt.Sprintf("dev-%d.out", i)) }

// start runs loanflow dev and waits until it says it is ready.
func (s *crashStack) start(t *testing.T) {
	t.Helper()
	s.incarnation++
	out, err := os.Create(s.logPath(s.incarnation))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Env, s.cmd.Stdout, s.cmd.Stderr = s.env, out, out
	begin := time.Now()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(s.cmd, s.exited)
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(s.logPath(s.incarnation))
		if strings.Contains(string(b), "Loanflow is running") {
			break
		}
		select {
		case <-s.exited:
			t.Fatalf("loanflow dev (start %d) exited: %v\n%s", s.incarnation, s.cmd.ProcessState, s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("loanflow dev (start %d) not ready after 3m\n%s", s.incarnation, s.logTail())
		}
	}
	s.readyIn = append(s.readyIn, time.Since(begin).Round(100*time.Millisecond))
	s.decisionsAtRestart, _ = s.decisions()
}

// decisions is the number of records (and markers) in loan_decisions.
func (s *crashStack) decisions() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := s.adm.ListEndOffsets(ctx, "loan_decisions")
	if err != nil {
		return 0, err
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n, ends.Error()
}

// awaitProgress waits until loan_decisions grew by n since the last
// start, then a random 0-2s more.
func (s *crashStack) awaitProgress(n int64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if d, err := s.decisions(); err == nil && d >= s.decisionsAtRestart+n {
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Millisecond)
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("loanflow dev exited by itself: %v", s.cmd.ProcessState)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %d new decisions within %v of the restart", n, limit)
		}
	}
}

// kill sends SIGKILL to loanflow dev, at once or (timed) at the broker's
// next write to its group log, which it makes while committing a
// transaction's offsets, and waits for it to end.
func (s *crashStack) kill(t *testing.T, timed bool) {
	t.Helper()
	if timed {
		if err := killAtNextWrite(filepath.Join(s.dir, "broker", "groups.log"), s.cmd.Process.Pid, 10*time.Second); err != nil {
			t.Logf("kill at a group-log write: %v; killing now", err)
		} else {
			s.timedKills++
		}
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// killAtNextWrite sends SIGKILL to pid right after the next write to path,
// waiting at most limit.
func killAtNextWrite(path string, pid int, limit time.Duration) error {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if _, err := syscall.InotifyAddWatch(fd, path, syscall.IN_MODIFY); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		var set syscall.FdSet
		set.Bits[fd/64] |= 1 << (uint(fd) % 64)
		tv := syscall.Timeval{Usec: 100_000}
		if n, _ := syscall.Select(fd+1, &set, nil, nil, &tv); n > 0 {
			if n, _ := syscall.Read(fd, buf); n > 0 {
				return syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return errors.New("no write within " + limit.String())
}

// stop ends loanflow dev gracefully (SIGTERM), killing it after 2m.
func (s *crashStack) stop(t *testing.T) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(2 * time.Minute):
		t.Errorf("loanflow dev did not stop within 2m of SIGTERM")
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *crashStack) logTail() string {
	b, _ := os.ReadFile(s.logPath(s.incarnation))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return fmt.Sprintf("loanflow dev output (start %d):\n%s\nlog: %s", s.incarnation, b, tail(filepath.Join(s.dir, "loanflow.log")))
}

// crashLoadTotals adds up the load runs.
type crashLoadTotals struct {
	runs, submitted, loadFailures int
	accepted                      map[string]bool
	rejected                      map[string]int
	err                           error
}

// runCrashLoads runs loanflow load until killsDone is closed and enough
// applications were accepted. A run that fails before submitting (the
// stack was down while it created its lenders) is run again.
func runCrashLoads(ctx context.Context, s *crashStack, killsDone <-chan struct{}) crashLoadTotals {
	tot := crashLoadTotals{accepted: map[string]bool{}, rejected: map[string]int{}}
	failures := 0
	for attempt := 0; ctx.Err() == nil; attempt++ {
		select {
		case <-killsDone:
			if len(tot.accepted) >= crashMinAccepted {
				return tot
			}
		default:
		}
		sum, ok, err := s.runLoad(ctx, attempt, &tot)
		if err != nil {
			tot.err = err
			return tot
		}
		if !ok {
			if failures++; failures > 10 {
				tot.err = fmt.Errorf("loanflow load failed 10 times (see %s)", filepath.Join(s.dir, "load-*.err"))
				return tot
			}
			continue
		}
		tot.runs++
		tot.submitted += sum.Submitted
		for r, n := range sum.RejectedBy {
			tot.rejected[r] += n
		}
		if sum.Missing > 0 || sum.Duplicated > 0 {
			tot.loadFailures++
		}
	}
	tot.err = ctx.Err()
	return tot
}

// runLoad runs one loanflow load and adds the ids it accepted to tot. ok
// is false when it ended without a summary (it failed in its setup while
// the stack was down); the ids it accepted before count all the same.
func (s *crashStack) runLoad(ctx context.Context, attempt int, tot *crashLoadTotals) (loadSummary, bool, error) {
	subs := filepath.Join(s.dir, fmt.Sprintf("load-%d.submissions", attempt))
	cmd := exec.CommandContext(ctx, s.bin, "load", "--api", s.api, "--credentials", filepath.Join(s.dir, "admin-client.json"),
		"--brokers", strings.Join(s.brokers, ","), "--schema-registry", s.registry, "--rate", strconv.Itoa(crashRate),
		"--count", strconv.Itoa(crashRunCount), "--known-ratio", "0.8", "--lenders", "2", "--customers", "50",
		"--terminals", "8", "--drain", "3m", "--output", "json", "--submissions", subs)
	errf, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("load-%d.err", attempt)))
	if err != nil {
		return loadSummary{}, false, err
	}
	defer errf.Close()
	cmd.Stderr = errf
	out, _ := cmd.Output()
	if err := readAccepted(subs, tot.accepted); err != nil && !errors.Is(err, os.ErrNotExist) {
		return loadSummary{}, false, err
	}
	var sum loadSummary
	return sum, json.Unmarshal(out, &sum) == nil, nil
}

// readAccepted adds the accepted ids of a --submissions file to ids.
func readAccepted(path string, ids map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if id, ok := strings.CutSuffix(sc.Text(), "\taccepted"); ok {
			ids[id] = true
		}
	}
	return sc.Err()
}

// readAllDecisions reads every record of loan_decisions with
// read_committed (control records kept, so the end is reached) once no
// transaction is open in it, and counts the records per application id
// (the key after its lender/). It uses franz-go alone.
func readAllDecisions(brokers []string, limit time.Duration) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("loan_decisions"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ends, err := stableEnds(ctx, kadm.NewClient(cl))
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	next := map[int32]int64{}
	for !reached(next, ends) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("read to %v, want the ends %v: %w", next, ends, ctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) {
			next[r.Partition] = r.Offset + 1
			if !r.Attrs.IsControl() {
				// Keys are lender/application id; the runs' ids are unique
				// across lenders (they carry the run id).
				key := string(r.Key)
				if i := strings.IndexByte(key, '/'); i >= 0 {
					key = key[i+1:]
				}
				counts[key]++
			}
		})
	}
	return counts, nil
}

// stableEnds waits until no transaction is open in loan_decisions (last
// stable offset = high watermark in every partition) and returns the ends.
func stableEnds(ctx context.Context, adm *kadm.Client) (map[int32]int64, error) {
	for {
		lso, err1 := adm.ListCommittedOffsets(ctx, "loan_decisions")
		hwm, err2 := adm.ListEndOffsets(ctx, "loan_decisions")
		if err := errors.Join(err1, err2); err == nil {
			ends, stable := map[int32]int64{}, true
			hwm.Each(func(o kadm.ListedOffset) {
				ends[o.Partition] = o.Offset
				if l, ok := lso.Lookup(o.Topic, o.Partition); !ok || l.Offset != o.Offset {
					stable = false
				}
			})
			if stable && len(ends) > 0 {
				return ends, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("loan_decisions never without an open transaction: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func reached(next, ends map[int32]int64) bool {
	for p, end := range ends {
		if next[p] < end {
			return false
		}
	}
	return true
}

// checkDecidedOnce returns the accepted ids without a decision and those
// of every run decided more than once.
func checkDecidedOnce(accepted map[string]bool, decisions map[string]int) (lost, dup []string) {
	for id := range accepted {
		if decisions[id] == 0 {
			lost = append(lost, id)
		}
	}
	for id, n := range decisions {
		if n > 1 && strings.HasPrefix(id, "ld-") {
			dup = append(dup, id)
		}
	}
	sort.Strings(lost)
	sort.Strings(dup)
	return lost, dup
}

func decidedUnaccepted(accepted map[string]bool, decisions map[string]int) int {
	n := 0
	for id := range decisions {
		if strings.HasPrefix(id, "ld-") && !accepted[id] {
			n++
		}
	}
	return n
}

func sumCounts(m map[string]int) int {
	n := 0
	for id, c := range m {
		if strings.HasPrefix(id, "ld-") {
			n += c
		}
	}
	return n
}

func first(ids []string, n int) []string { return ids[:min(n, len(ids))] }

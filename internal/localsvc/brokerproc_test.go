package localsvc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestMain lets this test binary run as the broker child of
// StartBrokerProcess.
func TestMain(m *testing.M) {
	MaybeRunBrokerChild()
	os.Exit(m.Run())
}

// The torn-transaction workload: every transaction writes its number to
// each of tornTopics*tornParts partitions, so a transaction that kfake
// commits in some partitions and not in others shows up as a count below
// the total.
const (
	tornTopics   = 8
	tornParts    = 32
	tornTotal    = tornTopics * tornParts
	tornTxnID    = "torn-producer"
	tornKills    = 20
	tornMaxTxnNo = 1_000_000 // transaction numbers of kill i start at i*tornMaxTxnNo
)

func tornTopic(i int) string { return fmt.Sprintf("torn-%d", i) }

func tornTopicNames() []string {
	var ts []string
	for i := range tornTopics {
		ts = append(ts, tornTopic(i))
	}
	return ts
}

// createTornTopics creates the topics unless they exist.
func createTornTopics(ctx context.Context, seeds []string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		return err
	}
	defer cl.Close()
	resp, err := kadm.NewClient(cl).CreateTopics(ctx, tornParts, 1, nil, tornTopicNames()...)
	if err != nil {
		return err
	}
	for _, r := range resp {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("creating %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}

func newTornProducer(seeds []string) (*kgo.Client, error) {
	return kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.TransactionalID(tornTxnID),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.RecordRetries(3), kgo.RequestRetries(3),
		kgo.RetryTimeout(2*time.Second))
}

// runTornTxns commits transactions numbered from first until runFor has
// passed; then it produces one more and calls arm just before sending
// EndTxn (arm sets up the kill and returns a channel closed when the
// victim is dead, or nil). It reports each acknowledged commit to acked
// and returns when a transaction fails (the broker went away) or after the
// last one.
func runTornTxns(ctx context.Context, p *kgo.Client, first int, runFor time.Duration, arm func() (<-chan struct{}, error), acked func(int)) error {
	deadline := time.Now().Add(runFor)
	for n := first; ; n++ {
		if err := p.BeginTransaction(); err != nil {
			return err
		}
		recs := make([]*kgo.Record, 0, tornTotal)
		for i := range tornTopics {
			for q := range int32(tornParts) {
				recs = append(recs, &kgo.Record{Topic: tornTopic(i), Partition: q, Value: []byte(strconv.Itoa(n))})
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := p.ProduceSync(cctx, recs...).FirstErr()
		last := time.Now().After(deadline)
		if err == nil && last {
			dead, aerr := arm()
			if aerr != nil {
				cancel()
				return aerr
			}
			if dead != nil {
				go func() { // no retries against a dead broker
					select {
					case <-dead:
						cancel()
					case <-cctx.Done():
					}
				}()
			}
		}
		if err == nil {
			if err = p.EndTransaction(cctx, kgo.TryCommit); err == nil {
				acked(n)
			}
		}
		cancel()
		if last {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// killSoon sends SIGKILL to pid 0-1.5ms from now, as the first
// reproduction did: EndTxn takes about 1.3ms on this workload, so the
// kill lands inside it some of the time.
func killSoon(pid int) {
	d := time.Duration(rand.IntN(1500)) * time.Microsecond
	go func() {
		time.Sleep(d)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}()
}

// killInsideMarkers sends SIGKILL to pid once the broker has written to
// `after` partitions of the torn topics in dataDir: after the last
// produce was acknowledged, these writes are EndTxn's commit markers, so
// the kill lands while the broker writes the others. It watches the
// partition directories with inotify and spins on the non-blocking
// descriptor (for at most 5s) to act within microseconds.
func killInsideMarkers(dataDir string, pid, after int) error {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	for i := range tornTopics {
		for q := range tornParts {
			dir := filepath.Join(dataDir, "partitions", fmt.Sprintf("%s-%d", tornTopic(i), q))
			if _, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_MODIFY); err != nil {
				syscall.Close(fd)
				return fmt.Errorf("watching %s: %w", dir, err)
			}
		}
	}
	go func() {
		defer syscall.Close(fd)
		written := map[int32]bool{} // watch descriptors: partitions
		buf := make([]byte, 64<<10)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			n, _ := syscall.Read(fd, buf)
			for off := 0; off+syscall.SizeofInotifyEvent <= n; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				written[ev.Wd] = true
				off += syscall.SizeofInotifyEvent + int(ev.Len)
			}
			if len(written) >= after {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				return
			}
		}
	}()
	return nil
}

// armKill returns the arm function of runTornTxns for kill number i of a
// victim pid serving dataDir: odd kills use killSoon, as the first
// reproduction did; even ones killInsideMarkers after 2-250 partitions,
// which lands inside EndTxn every time.
func armKill(i int, dataDir string, pid int, dead <-chan struct{}) func() (<-chan struct{}, error) {
	return func() (<-chan struct{}, error) {
		if i%2 == 1 {
			killSoon(pid)
			return dead, nil
		}
		return dead, killInsideMarkers(dataDir, pid, 2+rand.IntN(249))
	}
}

// tornReport is what a read_committed reader sees after the kills.
type tornReport struct {
	visible map[int]int // transaction number -> partitions it is visible in
	torn    []string    // transactions visible in some partitions only
	lost    []int       // acknowledged commits not visible everywhere
	// stuck counts partitions whose sentinel never became visible: a
	// transaction nobody can end (left open in them) holds their last
	// stable offset back, and read_committed readers stop there.
	stuck int
}

// readTorn ends any transaction left open (a new producer with the same
// transactional id aborts it), writes a sentinel into every partition and
// reads every partition up to its sentinel with read_committed, or until
// ctx ends (the partitions not read to the end are then stuck).
func readTorn(ctx context.Context, seeds []string, acked map[int]bool) (tornReport, error) {
	p, err := newTornProducer(seeds)
	if err != nil {
		return tornReport{}, err
	}
	defer p.Close()
	if err := p.BeginTransaction(); err != nil {
		return tornReport{}, err
	}
	var recs []*kgo.Record
	for i := range tornTopics {
		for q := range int32(tornParts) {
			recs = append(recs, &kgo.Record{Topic: tornTopic(i), Partition: q, Value: []byte("end")})
		}
	}
	if err := p.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return tornReport{}, fmt.Errorf("producing sentinels: %w", err)
	}
	if err := p.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return tornReport{}, fmt.Errorf("committing sentinels: %w", err)
	}
	r, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(tornTopicNames()...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return tornReport{}, err
	}
	defer r.Close()
	rep := tornReport{visible: map[int]int{}}
	ended := 0
	for ended < tornTotal {
		fs := r.PollFetches(ctx)
		if ctx.Err() != nil {
			rep.stuck = tornTotal - ended
			break
		}
		fs.EachRecord(func(rec *kgo.Record) {
			if string(rec.Value) == "end" {
				ended++
				return
			}
			n, _ := strconv.Atoi(string(rec.Value))
			rep.visible[n]++
		})
	}
	for n, c := range rep.visible {
		if c != tornTotal {
			rep.torn = append(rep.torn, fmt.Sprintf("txn %d in %d of %d partitions", n, c, tornTotal))
		}
	}
	for n := range acked {
		if rep.visible[n] != tornTotal {
			rep.lost = append(rep.lost, n)
		}
	}
	return rep, nil
}

// ackSet collects acknowledged commits from several goroutines.
type ackSet struct {
	mu sync.Mutex
	m  map[int]bool
}

func (a *ackSet) add(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[int]bool{}
	}
	a.m[n] = true
}

// Environment of TestHelperTxnParent, set by TestParentKillKeepsTransactionsWhole.
const (
	helperDirEnv   = "LOCALSVC_TXN_PARENT_DIR"
	helperPortEnv  = "LOCALSVC_TXN_PARENT_PORT"
	helperFirstEnv = "LOCALSVC_TXN_PARENT_FIRST"
	helperKillEnv  = "LOCALSVC_TXN_PARENT_KILL"
	// negativeControlEnv=1 kills the broker child (with SIGKILL, before
	// its parent) instead: the test must then find the tear.
	negativeControlEnv = "LOANFLOW_TORN_NEGATIVE_CONTROL"
)

// TestHelperTxnParent is not a test: it is the parent process that
// TestParentKillKeepsTransactionsWhole starts and that kills itself. It
// starts the broker child, commits transactions for a while, then sends
// SIGKILL to itself while the broker ends one more (armKill). Acknowledged
// commits go to stdout as "committed N".
func TestHelperTxnParent(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("the parent process of TestParentKillKeepsTransactionsWhole")
	}
	port, _ := strconv.Atoi(os.Getenv(helperPortEnv))
	first, _ := strconv.Atoi(os.Getenv(helperFirstEnv))
	kill, _ := strconv.Atoi(os.Getenv(helperKillEnv))
	b, err := StartBrokerProcess(context.Background(), BrokerProcessOptions{BrokerOptions: BrokerOptions{DataDir: dir, Port: port},
		Waiting: func(string) { fmt.Println("waiting") }})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("started", b.Pid())
	ctx := context.Background()
	if err := createTornTopics(ctx, b.Addrs()); err != nil {
		t.Fatal(err)
	}
	p, err := newTornProducer(b.Addrs())
	if err != nil {
		t.Fatal(err)
	}
	runFor := time.Duration(200+rand.IntN(600)) * time.Millisecond
	victim, dead := os.Getpid(), (<-chan struct{})(nil)
	if os.Getenv(negativeControlEnv) == "1" {
		victim, dead = b.Pid(), b.Exited() // the broker dies first, as if it ran in this process
	}
	mode := kill
	if kill == tornKills-1 {
		mode = 0 // the last kill inside EndTxn (see TestKfakeTornByDirectKill)
	}
	err = runTornTxns(ctx, p, first, runFor, armKill(mode, dir, victim, dead), func(n int) { fmt.Printf("committed %d\n", n) })
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL) // in case the kill went to the broker
	time.Sleep(5 * time.Second)                    // the kill is on its way
	t.Fatalf("still alive after the kill (%v)", err)
}

// runParent runs one TestHelperTxnParent until it has killed itself and
// returns the commits it acknowledged and whether it waited for the
// previous broker.
func runParent(t *testing.T, dir string, port, kill int, acked *ackSet) (waited bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperTxnParent$")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+dir, helperPortEnv+"="+strconv.Itoa(port),
		helperFirstEnv+"="+strconv.Itoa(kill*tornMaxTxnNo), helperKillEnv+"="+strconv.Itoa(kill))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if n, ok := strings.CutPrefix(line, "committed "); ok {
			v, _ := strconv.Atoi(n)
			acked.add(v)
			continue
		}
		waited = waited || line == "waiting"
		lines = append(lines, line)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("parent ended with %v, want killed by itself:\n%s\n%s", err, strings.Join(lines, "\n"), stderr.String())
	}
	return waited
}

// TestParentKillKeepsTransactionsWhole is the torn-transaction
// reproduction of TestKfakeTornByDirectKill with the broker in a child
// process: the process that started it (and produces) is killed while the
// broker handles EndTxn, 20 times; the broker child closes cleanly each
// time, the next parent waits for it, and every transaction is whole and
// every acknowledged commit visible. With LOANFLOW_TORN_NEGATIVE_CONTROL=1
// the helper kills the broker child instead (as if the broker ran in the
// killed process), and the test must fail.
func TestParentKillKeepsTransactionsWhole(t *testing.T) {
	if testing.Short() {
		t.Skip("kills 20 processes")
	}
	dir := t.TempDir()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	var acked ackSet
	waits := 0
	start := time.Now()
	for kill := range tornKills {
		if runParent(t, dir, port, kill, &acked) {
			waits++
		}
	}
	killing := time.Since(start)
	b, err := StartBrokerProcess(context.Background(), BrokerProcessOptions{BrokerOptions: BrokerOptions{DataDir: dir, Port: port}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := readTorn(ctx, b.Addrs(), acked.m)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d parent kills in %v (%d restarts waited for the previous broker's save): %d transactions visible, %d acknowledged, %d torn, %d acknowledged but not whole, %d partitions stuck",
		tornKills, killing.Round(time.Millisecond), waits, len(rep.visible), len(acked.m), len(rep.torn), len(rep.lost), rep.stuck)
	if len(rep.torn) > 0 || len(rep.lost) > 0 || rep.stuck > 0 {
		t.Fatalf("torn: %v; acknowledged but not whole: %v; %d partitions stuck behind a transaction nobody can end\nbroker log:\n%s",
			rep.torn, rep.lost, rep.stuck, tailFile(dir+".log", 4096))
	}
	if len(acked.m) < tornKills {
		t.Fatalf("only %d commits acknowledged over %d runs: the workload did not run", len(acked.m), tornKills)
	}
}

// TestKfakeTornByDirectKill documents the limitation the broker child
// works around: kfake is not crash-atomic. A SIGKILL of the broker process
// itself while it handles EndTxn leaves the transaction committed in the
// partitions whose marker it wrote; at the next load the others hold an
// unended transaction (implicitly aborted in memory, no marker on disk).
// It runs only with LOANFLOW_KFAKE_TORN_REPRO=1 (LOANFLOW_KFAKE_TORN_KILLS
// kills, default 20) and reports what it found rather than asserting it.
//
// Kills alternate between a random 0-1.5ms after EndTxn is sent (the
// first reproduction's timing, which lands inside EndTxn only now and
// then) and a kill timed by inotify after the broker wrote to 2-250 of the
// 256 partitions. An earlier tear may not survive to the final read: the
// producer's next commit, replayed after the next crash, also commits the
// unmarked records of the torn transaction (an aborted transaction turning
// committed, another flaw). The last kill is therefore always timed by the
// markers. Found (kfake 2026-09-18, 2 cores): about half the runs end with
// one transaction visible in part of the partitions (45, 165, 200, 224,
// 246 of 256 seen) and the rest stuck, read_committed readers never
// passing the unended transaction; in the others the kill came too late.
func TestKfakeTornByDirectKill(t *testing.T) {
	if os.Getenv("LOANFLOW_KFAKE_TORN_REPRO") != "1" {
		t.Skip("set LOANFLOW_KFAKE_TORN_REPRO=1 to reproduce kfake tearing a transaction when the broker is killed")
	}
	dir := t.TempDir()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	opts := BrokerProcessOptions{BrokerOptions: BrokerOptions{DataDir: dir, Port: port}}
	ctx := context.Background()
	var acked ackSet
	kills := tornKills
	if n, err := strconv.Atoi(os.Getenv("LOANFLOW_KFAKE_TORN_KILLS")); err == nil && n > 0 {
		kills = n
	}
	for kill := range kills {
		b, err := StartBrokerProcess(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := createTornTopics(ctx, b.Addrs()); err != nil {
			t.Fatal(err)
		}
		mode := kill
		if kill == kills-1 {
			mode = 0 // the last kill inside EndTxn: see above
		}
		p, err := newTornProducer(b.Addrs())
		if err != nil {
			t.Fatal(err)
		}
		runFor := time.Duration(200+rand.IntN(600)) * time.Millisecond
		if err := runTornTxns(ctx, p, kill*tornMaxTxnNo, runFor, armKill(mode, dir, b.Pid(), b.Exited()), acked.add); err != nil {
			t.Fatalf("kill %d: %v", kill, err)
		}
		b.Kill()
		p.Close()
	}
	b, err := StartBrokerProcess(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	// A partition stuck behind a transaction nobody can end never
	// reaches its sentinel: 20s is ample for 256 partitions otherwise.
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	rep, err := readTorn(rctx, b.Addrs(), acked.m)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d broker kills: %d transactions visible, %d acknowledged, %d torn %v, %d acknowledged but not whole %v, "+
		"%d of %d partitions stuck behind a transaction nobody can end",
		kills, len(rep.visible), len(acked.m), len(rep.torn), rep.torn, len(rep.lost), rep.lost, rep.stuck, tornTotal)
}

// TestBrokerProcessWaitsForPreviousBroker: a second broker on the same
// directory waits (and says so) until the first has stopped and saved,
// then serves what the first one held.
func TestBrokerProcessWaitsForPreviousBroker(t *testing.T) {
	dir := t.TempDir()
	first, err := StartBrokerProcess(context.Background(), BrokerProcessOptions{BrokerOptions: BrokerOptions{DataDir: dir}})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(first.Addrs()...))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, "kept"); err != nil {
		t.Fatal(err)
	}
	produceValues(ctx, t, cl, "kept", "v1")
	cl.Close()

	waiting := make(chan string, 1)
	type started struct {
		b   *BrokerProcess
		err error
	}
	second := make(chan started, 1)
	go func() {
		b, err := StartBrokerProcess(context.Background(), BrokerProcessOptions{BrokerOptions: BrokerOptions{DataDir: dir},
			Waiting: func(d string) { waiting <- d }})
		second <- started{b, err}
	}()
	select {
	case d := <-waiting:
		if d != dir {
			t.Errorf("waiting for %s, want %s", d, dir)
		}
	case s := <-second:
		t.Fatalf("second broker started while the first holds the directory: %v", s.err)
	case <-ctx.Done():
		t.Fatal("second broker neither waits nor starts")
	}
	first.Stop()
	s := <-second
	if s.err != nil {
		t.Fatal(s.err)
	}
	defer s.b.Stop()
	r, err := kgo.NewClient(kgo.SeedBrokers(s.b.Addrs()...), kgo.ConsumeTopics("kept"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fs := r.PollFetches(ctx)
	if err := fs.Err0(); err != nil {
		t.Fatal(err)
	}
	if recs := fs.Records(); len(recs) != 1 || string(recs[0].Value) != "v1" {
		t.Fatalf("second broker holds %d records, want v1", len(recs))
	}
}

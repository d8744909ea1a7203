package kafka_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
)

// runUntil waits until cond holds, failing the test after timeout; the
// explain functions then log why cond does not hold (what the output
// lacks against the model), so a CI log shows the cause, not just the
// timeout.
func runUntil(t testing.TB, timeout time.Duration, what string, cond func() bool, explain ...func()) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			for _, f := range explain {
				f()
			}
			dumpWorkers()
			// Workers in this process: their goroutines, into the log
			// directory when there is one.
			buf := make([]byte, 4<<20)
			buf = buf[:runtime.Stack(buf, true)]
			if dir := os.Getenv("LOANFLOW_TEST_LOGS"); dir != "" {
				_ = os.MkdirAll(dir, 0o755)
				_ = os.WriteFile(filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-goroutines.txt"), buf, 0o644)
			}
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// explain logs what the output lacks (or has twice) against the model.
func (r *run) explain() { r.verify("incomplete") }

func (r *run) mustBeExact(label string) {
	r.t.Helper()
	readSettled(r.t, r.seeds(), r.tp) // the workers stopped: their last transactions count
	if v := r.verify(label); !v.ok() {
		r.t.Fatalf("%s: exactly-once violated: %s", label, v)
	}
}

func waitMembers(t testing.TB, adm *kadm.Client, group string, n int) {
	t.Helper()
	runUntil(t, 2*time.Minute, "the group to settle", func() bool {
		g, err := adm.DescribeGroups(context.Background(), group)
		return err == nil && len(g[group].Members) == n && g[group].State == "Stable"
	})
}

// TestScaleOut runs the job over 6 partitions in 3 worker processes,
// kills one mid-stream for good, and checks the output against the model
// and that the survivors own every partition.
func TestScaleOut(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) {
		r := newRun(t, seeds, "scale", 30_000, 6)
		logs := logsDir(t)
		var ws []*workerProc
		for _, id := range []string{"w1", "w2", "w3"} {
			ws = append(ws, startWorker(t, r.env(id, t.TempDir()), logs, 0))
		}
		defer func() {
			for _, w := range ws {
				w.kill()
			}
		}()
		adm := newAdmin(t, seeds)
		group := kafka.Group(r.job)
		waitMembers(t, adm, group, 3)
		produced := streamEvents(t, seeds, r.d.events, 3000)
		base := r.c.get(r.tp.Scored)
		runUntil(t, time.Minute, "progress", func() bool { return r.c.get(r.tp.Scored) > base+2000 })
		ws[1].kill()
		<-produced
		runUntil(t, 4*time.Minute, "all output", r.complete, r.explain)

		g, err := adm.DescribeGroups(context.Background(), group)
		if err != nil {
			t.Fatal(err)
		}
		owned := map[string][]int32{}
		for _, m := range g[group].Members {
			if a, ok := m.Assigned.AsConsumer(); ok {
				for _, tpart := range a.Topics {
					owned[tpart.Topic] = append(owned[tpart.Topic], tpart.Partitions...)
				}
			}
		}
		if len(g[group].Members) != 2 {
			t.Fatalf("group has %d members after one of three died, want 2", len(g[group].Members))
		}
		for _, topic := range []string{r.in.Events, r.in.Accounts} {
			ps := owned[topic]
			sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
			if len(ps) != 6 {
				t.Fatalf("survivors own partitions %v of %s, want all 6", ps, topic)
			}
		}
		for _, w := range []*workerProc{ws[0], ws[2]} {
			w.signal(syscall.SIGTERM)
			<-w.done
		}
		r.mustBeExact("scale-out")
	})
}

// TestZombieFencing pauses one of two workers (SIGSTOP) until the group
// expels it, lets the other take its tasks over, resumes it, and checks
// the resumed zombie committed nothing: the output is still exact.
func TestZombieFencing(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) {
		r := newRun(t, seeds, "zombie", 30_000, 4)
		logs := logsDir(t)
		w1 := startWorker(t, r.env("w1", t.TempDir()), logs, 0)
		w2 := startWorker(t, r.env("w2", t.TempDir()), logs, 0)
		defer w1.kill()
		defer w2.kill()
		adm := newAdmin(t, seeds)
		group := kafka.Group(r.job)
		waitMembers(t, adm, group, 2)
		produced := streamEvents(t, seeds, r.d.events, 3000)
		base := r.c.get(r.tp.Scored)
		runUntil(t, time.Minute, "progress", func() bool { return r.c.get(r.tp.Scored) > base+2000 })

		w1.signal(syscall.SIGSTOP)
		waitMembers(t, adm, group, 1)
		taken := r.c.get(r.tp.Scored)
		runUntil(t, time.Minute, "the survivor to make progress", func() bool { return r.c.get(r.tp.Scored) > taken+1000 })
		w1.signal(syscall.SIGCONT)
		<-produced
		runUntil(t, 4*time.Minute, "all output", r.complete, r.explain)
		for _, w := range []*workerProc{w1, w2} {
			w.signal(syscall.SIGTERM)
			<-w.done
		}
		r.mustBeExact("zombie")
	})
}

// TestSavepointRoundTrip stops the job with a savepoint halfway through
// its input, starts it again from the savepoint with fresh local state,
// and checks the output continues without gap or duplicate.
func TestSavepointRoundTrip(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) {
		r := newRun(t, seeds, "sp", 20_000, 4)
		half := len(r.d.events) / 2
		produce(t, seeds, r.d.events[:half])
		run := func(cfg kafka.Config) (*kafka.Worker, chan error) {
			cfg.Brokers, cfg.MaxCachedEntries = seeds, 32
			w, err := kafka.NewWorker(enrichJob(r.job, r.tp), cfg)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- w.Run(context.Background()) }()
			return w, done
		}
		w, done := run(kafka.Config{StateDir: t.TempDir(), WorkerID: "first"})
		runUntil(t, 2*time.Minute, "part of the input processed", func() bool { return r.c.get(r.tp.Scored) >= half/2 })
		sp := filepath.Join(t.TempDir(), "savepoint")
		if err := w.StopWithSavepoint(context.Background(), sp); err != nil {
			t.Fatalf("stop with savepoint: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("first run: %v", err)
		}
		if _, err := os.Stat(filepath.Join(sp, "job.json")); err != nil {
			t.Fatalf("savepoint not written: %v", err)
		}
		produce(t, seeds, r.d.events[half:])
		w2, done2 := run(kafka.Config{StateDir: t.TempDir(), WorkerID: "second", FromSavepoint: sp})
		runUntil(t, 3*time.Minute, "all output", func() bool {
			select {
			case err := <-done2:
				t.Fatalf("second run ended: %v", err)
			default:
			}
			return r.complete()
		}, r.explain)
		if err := w2.StopWithSavepoint(context.Background(), ""); err != nil {
			t.Fatal(err)
		}
		if err := <-done2; err != nil {
			t.Fatalf("second run: %v", err)
		}
		r.mustBeExact("savepoint")
	})
}

// TestBrokerLeaderLoss runs the job on three Apache Kafka brokers
// (replication factor 3, min.insync.replicas 2) and kills the broker that
// leads most of the job's partitions mid-run, then brings it back: the
// output must still be exact.
func TestBrokerLeaderLoss(t *testing.T) {
	k := testenv.NewKafka(t, localsvc.KafkaOptions{Brokers: 3})
	seeds := k.Addrs()
	r := newRun(t, seeds, "leader", 30_000, 4)
	logs := logsDir(t)
	w := startWorker(t, r.env("w1", t.TempDir()), logs, 0)
	defer w.kill()
	produced := streamEvents(t, seeds, r.d.events, 3000)
	runUntil(t, 2*time.Minute, "progress", func() bool { return r.c.get(r.tp.Scored) > 5000 })
	victim := busiestLeader(t, newAdmin(t, seeds), r)
	t.Logf("killing broker %d, the leader of most of the job's partitions", victim)
	k.Kill(victim)
	before := r.c.get(r.tp.Scored)
	runUntil(t, 2*time.Minute, "progress without the leader", func() bool { return r.c.get(r.tp.Scored) > before+2000 })
	if err := k.Start(victim); err != nil {
		t.Fatalf("restarting broker %d: %v", victim, err)
	}
	<-produced
	runUntil(t, 4*time.Minute, "all output", r.complete, r.explain)
	if w.exited() {
		t.Fatalf("the worker exited:\n%s", w.tail())
	}
	w.signal(syscall.SIGTERM)
	<-w.done
	r.mustBeExact("leader loss")
}

// busiestLeader returns the node number of the broker that leads most
// partitions of the run's topics.
func busiestLeader(t testing.TB, adm *kadm.Client, r *run) int {
	t.Helper()
	md, err := adm.Metadata(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	count := map[int32]int{}
	for _, td := range md.Topics {
		for _, pd := range td.Partitions {
			count[pd.Leader]++
		}
	}
	best, bestN := int32(-1), -1
	for id, n := range count {
		if n > bestN {
			best, bestN = id, n
		}
	}
	return int(best) // node ids are the harness's node numbers, 1..n
}

// combine returns a's and b's outputs together.
func combine(a, b outputs) outputs {
	o := outputs{scored: map[int64][]string{}, dead: map[int64]int{}, timers: map[string]int{},
		tumbling: map[winKey][]windowOut{}, sliding: map[winKey][]windowOut{}, sessions: map[winKey][]windowOut{}}
	for _, x := range []outputs{a, b} {
		for id, v := range x.scored {
			o.scored[id] = append(o.scored[id], v...)
		}
		for id, n := range x.dead {
			o.dead[id] += n
		}
		for k, n := range x.timers {
			o.timers[k] += n
		}
		for _, m := range []struct{ dst, src map[winKey][]windowOut }{{o.tumbling, x.tumbling}, {o.sliding, x.sliding}, {o.sessions, x.sessions}} {
			for k, ws := range m.src {
				m.dst[k] = append(m.dst[k], ws...)
			}
		}
		o.n += x.n
	}
	return o
}

// TestOlderSavepointRestores restores a savepoint after the job has moved
// on past it (its repartition topics hold records written after the
// savepoint), into three workers where one took it: what the job wrote
// before the savepoint plus what the restored job writes must be exactly
// the model's output. (Repartition topics used to keep the later records,
// which the restored job read again: windows counted them twice.)
func TestOlderSavepointRestores(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) {
		r := newRun(t, seeds, "osp", 20_000, 4)
		half := len(r.d.events) / 2
		produce(t, seeds, r.d.events[:half])
		start := func(tp jobTopics, cfg kafka.Config) (*kafka.Worker, chan error) {
			cfg.Brokers, cfg.MaxCachedEntries, cfg.StateDir = seeds, 32, t.TempDir()
			w, err := kafka.NewWorker(enrichJob(r.job, tp), cfg)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- w.Run(context.Background()) }()
			return w, done
		}
		stop := func(w *kafka.Worker, done chan error, savepoint string) {
			t.Helper()
			if err := w.StopWithSavepoint(context.Background(), savepoint); err != nil {
				t.Fatalf("stop: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("run: %v", err)
			}
		}
		// First run: part of the first half, then a savepoint.
		w, done := start(r.tp, kafka.Config{WorkerID: "first"})
		status := func(ws ...*kafka.Worker) func() {
			return func() {
				for _, w := range ws {
					t.Logf("worker status: %+v", w.Status())
				}
			}
		}
		runUntil(t, 2*time.Minute, "part of the input processed", func() bool {
			select {
			case err := <-done:
				t.Fatalf("the first run ended: %v", err)
			default:
			}
			return r.c.get(r.tp.Scored) >= half/2
		},
			status(w), func() { t.Logf("%d scored records so far, want %d", r.c.get(r.tp.Scored), half/2) })
		sp := filepath.Join(t.TempDir(), "savepoint")
		stop(w, done, sp)
		before := readSettled(t, seeds, r.tp)
		// Second run: from the savepoint to the end of the input.
		produce(t, seeds, r.d.events[half:])
		w, done = start(r.tp, kafka.Config{WorkerID: "second", FromSavepoint: sp})
		// A worker that ended says why (its error is otherwise only read
		// by stop).
		running := func(name string, done chan error) {
			select {
			case err := <-done:
				t.Fatalf("%s ended: %v", name, err)
			default:
			}
		}
		runUntil(t, 3*time.Minute, "the second run's output", func() bool {
			running("the second run", done)
			return r.complete()
		}, status(w), r.explain)
		stop(w, done, "")
		tpB := r.in.withOutputs(func(s string) string { return testenv.Name(t, "osp-b-"+s) }, r.job)
		// The dead-letter topic is the job's own: leave out what the
		// second run wrote to it.
		deadBefore := readSettled(t, seeds, r.tp).dead
		thirdRun := func(read func(testing.TB, []string, jobTopics) outputs) outputs {
			o := read(t, seeds, tpB)
			for id, n := range deadBefore {
				if o.dead[id] -= n; o.dead[id] == 0 {
					delete(o.dead, id)
				}
			}
			return o
		}
		// Third run: from the same savepoint again, into new outputs, with
		// three workers.
		w1, d1 := start(tpB, kafka.Config{WorkerID: "third-1", FromSavepoint: sp})
		select {
		case <-w1.Ready():
		case err := <-d1:
			t.Fatalf("third run: %v", err)
		}
		w2, d2 := start(tpB, kafka.Config{WorkerID: "third-2"})
		w3, d3 := start(tpB, kafka.Config{WorkerID: "third-3"})
		last := time.Time{}
		runUntil(t, 4*time.Minute, "the third run's output", func() bool {
			if time.Since(last) < 2*time.Second {
				return false
			}
			last = time.Now()
			running("third-1", d1)
			running("third-2", d2)
			running("third-3", d3)
			return check(r.want, combine(before, thirdRun(readOutputs))).lost == 0
		}, status(w1, w2, w3), func() {
			t.Logf("incomplete: before the savepoint plus the third run: %s", check(r.want, combine(before, thirdRun(readOutputs))))
		})
		stop(w1, d1, "")
		stop(w2, d2, "")
		stop(w3, d3, "")
		v := check(r.want, combine(before, thirdRun(readSettled)))
		t.Logf("older savepoint into three workers: %s", v)
		if !v.ok() {
			t.Fatalf("restoring an older savepoint: %s", v)
		}
	})
}

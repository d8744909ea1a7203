package kafka_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
)

// runUntil waits until cond holds, failing the test after timeout.
func runUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func checkExactlyOnce(t *testing.T, seeds []string, inputs, tp jobTopics, d dataset, label string) {
	t.Helper()
	got := readOutputs(t, seeds, tp)
	want := referenceRun(t, seeds, inputs, d)
	lost, dup, wrong, detail := compare(want, got)
	t.Logf("%s: %d unique ids, %d windows: lost=%d duplicated=%d wrong=%d", label, d.uniqueIDs, d.windows, lost, dup, wrong)
	if lost+dup+wrong > 0 {
		t.Fatalf("%s: exactly-once violated:\n%v", label, detail)
	}
}

// TestScaleOut runs the job over 6 partitions in 3 worker processes,
// kills one mid-stream for good, and checks that every input's output
// appears exactly once and that the survivors own every partition.
func TestScaleOut(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	inputs, d := setupEnrichParts(t, seeds, 30_000, 6)
	tp := inputs
	tp.Scored, tp.Windows = testenv.Name(t, "scale-scored"), testenv.Name(t, "scale-windows")
	job := testenv.Name(t, "scale")
	logs := t.TempDir()
	c := follow(t, seeds, tp.Scored, tp.Windows)
	var ws []*workerProc
	for _, id := range []string{"w1", "w2", "w3"} {
		ws = append(ws, startWorker(t, helperEnv{Seeds: seeds, Job: job, Topics: tp, StateDir: t.TempDir(), WorkerID: id, Delivery: string(kafka.ExactlyOnce)}, logs, 0))
	}
	defer func() {
		for _, w := range ws {
			w.kill()
		}
	}()
	adm := newAdmin(t, seeds)
	group := kafka.Group(job)
	runUntil(t, time.Minute, "three workers in the group", func() bool {
		g, err := adm.DescribeGroups(context.Background(), group)
		return err == nil && len(g[group].Members) == 3 && g[group].State == "Stable"
	})
	produced := streamEvents(t, seeds, d.events, 3000)
	base := c.get(tp.Scored)
	runUntil(t, time.Minute, "progress", func() bool { return c.get(tp.Scored) > base+2000 })
	ws[1].kill()
	<-produced
	runUntil(t, 3*time.Minute, "all output", func() bool { return c.complete(tp, d) })

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
	for _, topic := range []string{inputs.Events, inputs.Accounts} {
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
	checkExactlyOnce(t, seeds, inputs, tp, d, "scale-out")
}

// TestZombieFencing pauses one of two workers (SIGSTOP) until the group
// expels it, lets the other take its tasks over, resumes it, and checks
// the resumed zombie committed nothing: the output is still exactly once.
func TestZombieFencing(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	inputs, d := setupEnrichParts(t, seeds, 30_000, 4)
	tp := inputs
	tp.Scored, tp.Windows = testenv.Name(t, "zombie-scored"), testenv.Name(t, "zombie-windows")
	job := testenv.Name(t, "zombie")
	logs := t.TempDir()
	c := follow(t, seeds, tp.Scored, tp.Windows)
	w1 := startWorker(t, helperEnv{Seeds: seeds, Job: job, Topics: tp, StateDir: t.TempDir(), WorkerID: "w1", Delivery: string(kafka.ExactlyOnce)}, logs, 0)
	w2 := startWorker(t, helperEnv{Seeds: seeds, Job: job, Topics: tp, StateDir: t.TempDir(), WorkerID: "w2", Delivery: string(kafka.ExactlyOnce)}, logs, 0)
	defer w1.kill()
	defer w2.kill()
	adm := newAdmin(t, seeds)
	group := kafka.Group(job)
	runUntil(t, time.Minute, "two workers in the group", func() bool {
		g, err := adm.DescribeGroups(context.Background(), group)
		return err == nil && len(g[group].Members) == 2 && g[group].State == "Stable"
	})
	produced := streamEvents(t, seeds, d.events, 3000)
	base := c.get(tp.Scored)
	runUntil(t, time.Minute, "progress", func() bool { return c.get(tp.Scored) > base+2000 })

	w1.signal(syscall.SIGSTOP)
	runUntil(t, time.Minute, "the group to expel the paused worker", func() bool {
		g, err := adm.DescribeGroups(context.Background(), group)
		return err == nil && len(g[group].Members) == 1 && g[group].State == "Stable"
	})
	taken := c.get(tp.Scored)
	runUntil(t, time.Minute, "the survivor to make progress", func() bool { return c.get(tp.Scored) > taken+1000 })
	w1.signal(syscall.SIGCONT)
	runUntil(t, 3*time.Minute, "the resumed worker to find itself fenced", func() bool {
		b, _ := os.ReadFile(w1.log)
		return bytes.Contains(b, []byte("partitions lost")) || bytes.Contains(b, []byte("checkpoint aborted"))
	})

	<-produced
	runUntil(t, 3*time.Minute, "all output", func() bool { return c.complete(tp, d) })
	for _, w := range []*workerProc{w1, w2} {
		w.signal(syscall.SIGTERM)
		<-w.done
	}
	checkExactlyOnce(t, seeds, inputs, tp, d, "zombie")
}

// TestSavepointRoundTrip stops the job with a savepoint halfway through
// its input, starts it again from the savepoint with fresh local state,
// and checks the output continues without gap or duplicate.
func TestSavepointRoundTrip(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	inputs, d := setupEnrichParts(t, seeds, 20_000, 4)
	tp := inputs
	tp.Scored, tp.Windows = testenv.Name(t, "sp-scored"), testenv.Name(t, "sp-windows")
	job := testenv.Name(t, "sp")
	c := follow(t, seeds, tp.Scored, tp.Windows)
	half := len(d.events) / 2
	produce(t, seeds, d.events[:half])

	run := func(cfg kafka.Config) (*kafka.Worker, chan error) {
		w, err := kafka.NewWorker(enrichJob(job, tp), cfg)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- w.Run(context.Background()) }()
		return w, done
	}
	w, done := run(kafka.Config{Brokers: seeds, StateDir: t.TempDir(), WorkerID: "first"})
	runUntil(t, time.Minute, "half the input processed", func() bool { return c.get(tp.Scored) >= half*9/10 })
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
	before := c.get(tp.Scored)
	maxTS := int64(0)
	for _, r := range d.events[:half] {
		var e txn
		_ = json.Unmarshal(r.Value, &e)
		maxTS = max(maxTS, e.TS)
	}
	for _, r := range readAll(t, seeds, tp.Windows) {
		var w windowOut
		_ = json.Unmarshal(r.Value, &w)
		if w.Start+10000 > maxTS-1000 {
			t.Errorf("window %+v fired in the first run, whose newest event is at %d (watermark at most %d)", w, maxTS, maxTS-1001)
		}
	}

	produce(t, seeds, d.events[half:])
	w2, done2 := run(kafka.Config{Brokers: seeds, StateDir: t.TempDir(), WorkerID: "second", FromSavepoint: sp})
	runUntil(t, 2*time.Minute, "all output", func() bool { return c.complete(tp, d) })
	if err := w2.StopWithSavepoint(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if err := <-done2; err != nil {
		t.Fatalf("second run: %v", err)
	}
	t.Logf("savepoint: %d scored records before the stop, %d after the restart", before, c.get(tp.Scored)-before)
	checkExactlyOnce(t, seeds, inputs, tp, d, "savepoint")
}

package kafka_test

import (
	"context"
	"math/rand"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

// counter follows output topics with a read_committed consumer.
type counter struct {
	mu     sync.Mutex
	counts map[string]int
	cancel context.CancelFunc
	done   chan struct{}
}

func follow(t testing.TB, seeds []string, topics ...string) *counter {
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topics...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &counter{counts: map[string]int{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer cl.Close()
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			c.mu.Lock()
			fs.EachRecord(func(r *kgo.Record) { c.counts[r.Topic]++ })
			c.mu.Unlock()
		}
	}()
	t.Cleanup(c.stop)
	return c
}

func (c *counter) get(topic string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[topic]
}

func (c *counter) stop() {
	c.cancel()
	<-c.done
}

func (c *counter) complete(tp jobTopics, d dataset) bool {
	return c.get(tp.Scored) >= d.uniqueIDs && c.get(tp.Windows) >= d.windows
}

func crashRecords(t *testing.T) int {
	if v := os.Getenv("LOANFLOW_CRASH_RECORDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if testing.Short() {
		return 20_000
	}
	return 100_000
}

// setupEnrich creates the input topics of the enrich job and fills the
// accounts table; the events are produced by the caller.
func setupEnrich(t *testing.T, seeds []string, n int) (jobTopics, dataset) {
	return setupEnrichParts(t, seeds, n, 4)
}

func setupEnrichParts(t *testing.T, seeds []string, n int, parts int32) (jobTopics, dataset) {
	inputs := jobTopics{Events: testenv.Name(t, "events"), Accounts: testenv.Name(t, "accounts")}
	adm := newAdmin(t, seeds)
	createTopic(t, adm, inputs.Events, parts, nil)
	createTopic(t, adm, inputs.Accounts, parts, map[string]*string{"cleanup.policy": strp("compact")})
	d := genData(inputs, n, parts, 1)
	produce(t, seeds, d.accounts)
	return inputs, d
}

// streamEvents produces the events at about rate records/s, like a live
// source, and closes done when all are written.
func streamEvents(t *testing.T, seeds []string, recs []*kgo.Record, rate int) (done chan struct{}) {
	done = make(chan struct{})
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		defer cl.Close()
		const chunk = 250
		tick := time.NewTicker(time.Second * chunk / time.Duration(rate))
		defer tick.Stop()
		for i := 0; i < len(recs); i += chunk {
			<-tick.C
			end := min(i+chunk, len(recs))
			if err := cl.ProduceSync(context.Background(), recs[i:end]...).FirstErr(); err != nil {
				t.Errorf("producing events: %v", err)
				return
			}
		}
	}()
	return done
}

func strp(s string) *string { return &s }

// referenceRun runs the job uninterrupted, in process, and returns its
// output.
func referenceRun(t *testing.T, seeds []string, inputs jobTopics, d dataset) outputs {
	tp := inputs
	tp.Scored, tp.Windows = testenv.Name(t, "ref-scored"), testenv.Name(t, "ref-windows")
	w, err := kafka.NewWorker(enrichJob(testenv.Name(t, "ref"), tp), kafka.Config{Brokers: seeds, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	c := follow(t, seeds, tp.Scored, tp.Windows)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	deadline := time.Now().Add(2 * time.Minute)
	for !c.complete(tp, d) {
		if time.Now().After(deadline) {
			t.Fatalf("reference run incomplete after 2m: scored %d/%d windows %d/%d", c.get(tp.Scored), d.uniqueIDs, c.get(tp.Windows), d.windows)
		}
		select {
		case err := <-done:
			t.Fatalf("reference run stopped: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("reference run: %v", err)
	}
	return readOutputs(t, seeds, tp)
}

// TestCrashExactlyOnce kills a worker process with SIGKILL at random
// moments while it runs the enrich job over 100,000 records arriving as a
// stream, restarting it each time, and checks that a read_committed reader
// sees exactly the output of an uninterrupted run of the same input.
func TestCrashExactlyOnce(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	n := crashRecords(t)
	inputs, d := setupEnrich(t, seeds, n)

	tp := inputs
	tp.Scored, tp.Windows = testenv.Name(t, "crash-scored"), testenv.Name(t, "crash-windows")
	env := helperEnv{Seeds: seeds, Job: testenv.Name(t, "crash"), Topics: tp, StateDir: t.TempDir(), WorkerID: "w1", Delivery: crashDelivery()}
	logs := t.TempDir()
	if dir := os.Getenv("LOANFLOW_TEST_LOGS"); dir != "" {
		logs = dir
		_ = os.MkdirAll(dir, 0o755)
	}
	c := follow(t, seeds, tp.Scored, tp.Windows)
	produced := streamEvents(t, seeds, d.events, 3000)
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	kills, midStream := 0, 0
	deadline := time.Now().Add(6 * time.Minute)
	p := startWorker(t, env, logs, 0)
	progress := func() int { return c.get(tp.Scored) + c.get(tp.Windows) }
	inputDone := func() bool {
		select {
		case <-produced:
			return true
		default:
			return false
		}
	}
	for !(inputDone() && c.complete(tp, d)) {
		if time.Now().After(deadline) {
			t.Fatalf("incomplete after %d kills: scored %d/%d windows %d/%d\n%s", kills, c.get(tp.Scored), d.uniqueIDs, c.get(tp.Windows), d.windows, p.tail())
		}
		// Kill only once the new process made progress, so that every
		// kill lands mid-stream, not during start-up.
		base := progress()
		for progress() == base && !(inputDone() && c.complete(tp, d)) && time.Now().Before(deadline) {
			if p.exited() {
				t.Fatalf("worker exited on its own:\n%s", p.tail())
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Duration(200+rng.Intn(1300)) * time.Millisecond)
		if inputDone() && c.complete(tp, d) {
			break
		}
		p.kill()
		kills++
		if !inputDone() || !c.complete(tp, d) {
			midStream++
		}
		p = startWorker(t, env, logs, kills)
	}
	p.signal(15)
	<-p.done
	got := readOutputs(t, seeds, tp)

	want := referenceRun(t, seeds, inputs, d)
	if len(want.scored) != d.uniqueIDs || want.nWindows != d.windows {
		t.Fatalf("reference run: %d ids (want %d), %d windows (want %d)", len(want.scored), d.uniqueIDs, want.nWindows, d.windows)
	}
	lost, dup, wrong, detail := compare(want, got)
	t.Logf("crash test: %d input records (%d unique ids), %d windows, %d SIGKILLs mid-stream: lost=%d duplicated=%d wrong=%d",
		len(d.events), d.uniqueIDs, d.windows, midStream, lost, dup, wrong)
	if lost+dup+wrong > 0 {
		t.Fatalf("exactly-once violated:\n%v", detail)
	}
	if midStream < 10 {
		t.Fatalf("only %d kills landed mid-stream; the test needs at least 10", midStream)
	}
}

// crashDelivery is the crash run's delivery mode: exactly-once, or
// LOANFLOW_CRASH_DELIVERY=at-least-once to see the test catch duplicates.
func crashDelivery() string {
	if d := os.Getenv("LOANFLOW_CRASH_DELIVERY"); d != "" {
		return d
	}
	return string(kafka.ExactlyOnce)
}

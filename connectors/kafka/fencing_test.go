package kafka_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestZombieWithoutOffsetsIsFenced makes a worker a zombie that does not
// know it: the broker stops counting its heartbeats (it still answers
// them, so the worker sees no error, no rebalance and no pause) and
// expels it, while every input is consumed and committed and the worker
// still holds async calls in flight. When the calls return, the zombie's
// transactions carry results but no consumed offsets; the other worker
// has taken the tasks over and re-issued the same calls from the last
// checkpoint. Every input must still come out exactly once: the zombie's
// transactions must not commit.
func TestZombieWithoutOffsetsIsFenced(t *testing.T) {
	brk := testenv.NewBroker(t, localsvc.BrokerOptions{})
	seeds := brk.Addrs()
	adm := newAdmin(t, seeds)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	createTopic(t, adm, in, 4, nil)
	createTopic(t, adm, out, 4, nil)
	const n = 40
	var recs []*kgo.Record
	for i := 0; i < n; i++ {
		recs = append(recs, &kgo.Record{Topic: in, Partition: int32(i % 4), Value: []byte(strconv.Itoa(i))})
	}
	produce(t, seeds, recs)

	gate := make(chan struct{})
	var calls, pending atomic.Int64
	// Which worker has a call in flight for which input, and which inputs
	// the survivor (re-)issued since the expulsion.
	var mu sync.Mutex
	inFlight := map[string]map[int64]int{"zombie": {}, "survivor": {}}
	var reissued map[int64]bool
	job := testenv.Name(t, "zjob")
	build := func(id string) *pipeline.Builder {
		b := pipeline.NewBuilder(job)
		src := kafka.Source(b, "numbers", kafka.SourceConfig[int64]{Topic: in, Codec: intCodec{}})
		res := operators.Async(src, "slow", operators.AsyncSpec[int64, int64]{
			Call: func(ctx context.Context, v int64) (int64, error) {
				calls.Add(1)
				pending.Add(1)
				mu.Lock()
				inFlight[id][v]++
				if id == "survivor" && reissued != nil {
					reissued[v] = true
				}
				mu.Unlock()
				defer func() {
					mu.Lock()
					inFlight[id][v]--
					mu.Unlock()
					pending.Add(-1)
				}()
				select {
				case <-gate:
					return v, nil
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			},
			Capacity: 100, Timeout: 10 * time.Minute, InCodec: intCodec{},
		})
		kafka.Sink(res, "out", kafka.SinkConfig[int64]{Topic: out, Codec: intCodec{}})
		return b
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		quiet = slog.Default()
	}
	start := func(id string) (context.CancelFunc, chan error) {
		w, err := kafka.NewWorker(build(id), kafka.Config{Brokers: seeds, StateDir: t.TempDir(), WorkerID: id, Logger: quiet,
			SessionTimeout: 3 * time.Second, TransactionTimeout: time.Minute, CommitInterval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		return cancel, done
	}
	stopA, doneA := start("zombie")
	stopB, doneB := start("survivor")
	defer func() {
		stopA()
		stopB()
		for _, d := range []chan error{doneA, doneB} {
			select {
			case <-d:
			case <-time.After(2 * time.Minute):
				t.Error("a worker did not stop")
			}
		}
	}()
	group := kafka.Group(job)
	runUntil(t, time.Minute, "two workers in the group", func() bool {
		g, err := adm.DescribeGroups(context.Background(), group)
		return err == nil && len(g[group].Members) == 2 && g[group].State == "Stable"
	})
	runUntil(t, time.Minute, "every input consumed and committed, its call in flight", func() bool {
		os, err := adm.FetchOffsets(context.Background(), group)
		if err != nil {
			return false
		}
		sum := int64(0)
		os.Each(func(o kadm.OffsetResponse) { sum += o.At })
		return sum == n && calls.Load() >= n
	})

	// From now on the broker answers the zombie's heartbeats without
	// counting them: its session runs out and the group expels it, but
	// the worker hears nothing of it.
	var fakeHeartbeats atomic.Bool
	fakeHeartbeats.Store(true)
	brk.Cluster.ControlKey(int16(kmsg.Heartbeat), func(req kmsg.Request) (kmsg.Response, error, bool) {
		brk.Cluster.KeepControl()
		hb := req.(*kmsg.HeartbeatRequest)
		if !fakeHeartbeats.Load() || hb.InstanceID == nil || *hb.InstanceID != "zombie" {
			return nil, nil, false
		}
		return hb.ResponseKind(), nil, true
	})
	mu.Lock()
	reissued = map[int64]bool{}
	mu.Unlock()
	runUntil(t, time.Minute, "the group to expel the zombie and the survivor to re-issue the zombie's calls", func() bool {
		g, err := adm.DescribeGroups(context.Background(), group)
		if err != nil || len(g[group].Members) != 1 || g[group].State != "Stable" {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		held := 0
		for v, c := range inFlight["zombie"] {
			if c == 0 {
				continue
			}
			held++
			if !reissued[v] {
				return false
			}
		}
		return held > 0
	})
	// Count the zombie's EndTxn requests from here on: it must try.
	var zombieEnds atomic.Int64
	brk.Cluster.ControlKey(int16(kmsg.EndTxn), func(req kmsg.Request) (kmsg.Response, error, bool) {
		brk.Cluster.KeepControl()
		if e := req.(*kmsg.EndTxnRequest); e.TransactionalID == kafka.Group(job)+"-zombie" {
			zombieEnds.Add(1)
		}
		return nil, nil, false
	})
	close(gate)
	runUntil(t, time.Minute, "the zombie to end a transaction with its results", func() bool { return zombieEnds.Load() >= 1 })
	// The zombie may hear of its expulsion now; it rejoins and the
	// tasks settle. Once every input's output is out and no call is in
	// flight, graceful stops commit whatever is left.
	fakeHeartbeats.Store(false)
	runUntil(t, 2*time.Minute, "every input's output with no call in flight", func() bool {
		return pending.Load() == 0 && len(readAll(t, seeds, out)) >= n
	})
	stopA()
	stopB()
	for _, d := range []chan error{doneA, doneB} {
		if err := <-d; err != nil {
			t.Errorf("worker: %v", err)
		}
		d <- nil
	}
	seen := map[string]int{}
	for _, r := range readAll(t, seeds, out) {
		seen[string(r.Value)]++
	}
	lost, dup := 0, 0
	for i := 0; i < n; i++ {
		switch c := seen[strconv.Itoa(i)]; {
		case c == 0:
			lost++
		case c > 1:
			dup += c - 1
		}
	}
	t.Logf("zombie without offsets: %d inputs, %d calls, %d zombie EndTxn: lost=%d duplicated=%d", n, calls.Load(), zombieEnds.Load(), lost, dup)
	if lost+dup > 0 {
		t.Fatalf("exactly-once violated by a zombie's offset-less transactions: lost=%d duplicated=%d", lost, dup)
	}
}

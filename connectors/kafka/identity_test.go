package kafka_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
	"github.com/twmb/franz-go/pkg/kgo"
)

// sumJob builds a job that keeps the running sum of in's values under one
// key and writes each sum to out.
func sumJob(job, in, out string) *pipeline.Builder {
	b := pipeline.NewBuilder(job)
	src := kafka.Source(b, "src", kafka.SourceConfig[int64]{Topic: in, Codec: intCodec{}})
	keyed := pipeline.KeyBy(src, "key", func(int64) string { return "k" }, pipeline.NoRepartition())
	sums := operators.Process(keyed, "sum", func() operators.ProcessFunc[string, int64, int64] { return &summer{} })
	kafka.Sink(sums, "out", kafka.SinkConfig[int64]{Topic: out, Codec: intCodec{}})
	return b
}

// summer emits the running sum of each key's values.
type summer struct{ sum *state.ValueState[int64] }

func (s *summer) Open(ctx *operators.ProcessContext[string, int64]) error {
	var err error
	s.sum, err = state.Value[int64](ctx.Store(), ctx.StateSpec("sum", 0), intCodec{})
	return err
}

func (s *summer) Process(ctx *operators.ProcessContext[string, int64], _ string, v int64) error {
	cur, _, err := s.sum.Get(ctx.Key())
	if err != nil {
		return err
	}
	if err := s.sum.Set(ctx.Key(), cur+v); err != nil {
		return err
	}
	return ctx.Emit(cur + v)
}

func (s *summer) OnTimer(*operators.ProcessContext[string, int64], string, pipeline.TimeDomain, int64) error {
	return nil
}

// TestStaleLocalStateRejected: a worker's local state reflects offset N of
// a changelog that was then deleted and created again (as a savepoint
// restore does) and has N records or more again, none of them about the
// worker's key. Offsets alone accepted the old state; the changelog's
// identity (topic id) recorded with it must make the worker wipe it and
// restore from the new changelog.
func TestStaleLocalStateRejected(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	adm := newAdmin(t, seeds)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	createTopic(t, adm, in, 1, nil)
	createTopic(t, adm, out, 1, nil)
	job := testenv.Name(t, "stale")
	build := func() *pipeline.Builder { return sumJob(job, in, out) }
	dir := t.TempDir()
	run := func(values ...int64) {
		t.Helper()
		w, err := kafka.NewWorker(build(), kafka.Config{Brokers: seeds, StateDir: dir, WorkerID: "w"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		before := len(readAll(t, seeds, out))
		var recs []*kgo.Record
		for _, v := range values {
			recs = append(recs, &kgo.Record{Topic: in, Value: []byte(strconv.FormatInt(v, 10))})
		}
		produce(t, seeds, recs)
		runUntil(t, time.Minute, "the outputs", func() bool { return len(readAll(t, seeds, out)) >= before+len(values) })
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	run(1, 2, 3, 4, 5) // local state: k = 15
	log := pipeline.ChangelogTopic(job, "sum")
	if _, err := adm.DeleteTopics(context.Background(), log); err != nil {
		t.Fatal(err)
	}
	runUntil(t, time.Minute, "the changelog to be created again", func() bool {
		resp, err := adm.CreateTopic(context.Background(), 1, -1, map[string]*string{"cleanup.policy": strp("compact")}, log)
		return err == nil && resp.Err == nil
	})
	var filler []*kgo.Record
	for i := 0; i < 50; i++ {
		filler = append(filler, &kgo.Record{Topic: log, Key: []byte(fmt.Sprintf("filler-%d", i)), Value: []byte{0}})
	}
	produce(t, seeds, filler)
	run(1)
	recs := readAll(t, seeds, out)
	if got := string(recs[len(recs)-1].Value); got != "1" {
		t.Fatalf("after the changelog was recreated without k, the worker's sum of k is %s: it kept its old local state (want 1)", got)
	}
}

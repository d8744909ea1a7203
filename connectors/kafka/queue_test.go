package kafka_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

// TestQueueBoundedInRecords: a task's input queue holds at most
// QueueRecords records, however large the fetched batches are. A
// checkpoint's barrier waits behind the queue, so a queue counted in
// batches (up to 1 MiB of small records each) held a transaction open for
// as long as the task took to work through it, past the transaction
// timeout on a loaded machine (the peers' join bench was fenced with
// INVALID_PRODUCER_EPOCH, its checkpoints 40 s apart). The task is held
// inside its first record while the worker fills its queue; nothing here
// depends on timing.
func TestQueueBoundedInRecords(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	adm := newAdmin(t, seeds)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	createTopic(t, adm, in, 1, nil)
	const n, queueRecords = 20000, 1000
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: in, Value: []byte(strconv.Itoa(i))}
	}
	produce(t, seeds, recs) // one partition: batches of thousands of records

	gate := make(chan struct{})
	var seen atomic.Int64
	b := pipeline.NewBuilder(testenv.Name(t, "job"))
	src := kafka.Source(b, "numbers", kafka.SourceConfig[int64]{Topic: in, Codec: intCodec{}})
	held := operators.Map(src, "held", func(v int64) (int64, error) {
		if seen.Add(1) == 1 {
			<-gate
		}
		return v, nil
	})
	kafka.Sink(held, "out", kafka.SinkConfig[int64]{Topic: out, Codec: intCodec{}})
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: seeds, StateDir: t.TempDir(), QueueRecords: queueRecords,
		TransactionTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	// Wait until the queue is full behind the held record (the dispatcher
	// then blocks; nothing more can enter). The task holds the first chunk;
	// the queue and the chunk waiting to enter it hold QueueRecords.
	chunk := int64(queueRecords / 16)
	deadline := time.Now().Add(2 * time.Minute)
	for kafka.Unprocessed(w) < queueRecords {
		if time.Now().After(deadline) {
			t.Fatalf("the queue never filled: %d records handed, unprocessed", kafka.Unprocessed(w))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if u := kafka.Unprocessed(w); u > queueRecords+chunk {
		t.Errorf("the task has %d records handed to it and not processed; the bound is %d (QueueRecords) + %d (the chunk in hand)", u, queueRecords, chunk)
	}
	close(gate)
	got := readCommitted(t, seeds, out, n, 2*time.Minute)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Exactly once, in order: the model is the input itself.
	if len(got) != n {
		t.Fatalf("%d of %d records out", len(got), n)
	}
	for i, r := range got {
		if string(r.Value) != strconv.Itoa(i) {
			t.Fatalf("record %d is %q", i, r.Value)
		}
	}
}

package testenv

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// txnValue numbers the values ProduceTxns writes: every one is unique.
var txnValue atomic.Int64

// ProduceTxns writes batches committed transactions of per records each,
// then one aborted transaction of aborted records, to partition 0 of
// topic; it returns how many committed records it wrote. Each transaction
// leaves a commit (or abort) marker in the log: what a lag that counts
// offsets sees as one more record.
func ProduceTxns(t testing.TB, seeds []string, topic string, batches, per, aborted int) int {
	t.Helper()
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.TransactionalID(topic+"-txn"), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	txn := func(n int, commit bool) {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for range n {
			cl.Produce(ctx, &kgo.Record{Value: []byte(strconv.FormatInt(txnValue.Add(1), 10)), Partition: 0}, nil)
		}
		if err := cl.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	for range batches {
		txn(per, true)
	}
	if aborted > 0 {
		txn(aborted, false)
	}
	return batches * per
}

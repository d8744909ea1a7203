package kafka

import (
	"context"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/internal/testenv"
)

// TestNetLag counts what a read_committed reader has left, against the
// committed records the test itself wrote: transaction markers and an
// aborted transaction are not lag. The negative control is the offset
// difference (what kafka-consumer-groups and kadm report), which differs.
func TestNetLag(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, kind string, seeds []string) {
		ctx := context.Background()
		topic := testenv.Name(t, "lag")
		cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		adm := kadm.NewClient(cl)
		if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
			t.Fatal(err)
		}
		want := testenv.ProduceTxns(t, seeds, topic, 6, 5, 4) // 30 committed, 6 markers, 4 aborted + 1 marker
		meta, err := adm.Metadata(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		lso, err := adm.ListCommittedOffsets(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		end, _ := lso.Lookup(topic, 0)
		td := meta.Topics[topic]
		check := func(from int64, want int64) {
			t.Helper()
			got, exact, err := NetLag(ctx, cl, td.Partitions[0].Leader, topic, [16]byte(td.ID), 0, from, end.Offset, MaxLagScan)
			if err != nil {
				t.Fatal(err)
			}
			if !exact || got != want {
				t.Fatalf("net lag from %d to %d: %d (exact %v), want %d", from, end.Offset, got, exact, want)
			}
		}
		if raw := end.Offset; raw == int64(want) {
			t.Fatalf("negative control: the offset difference %d equals the committed records: no markers were written", raw)
		}
		check(0, int64(want))
		// From just past the last committed data record (offset 34: 6
		// transactions of 5 records and a marker each): only markers and
		// aborted records remain.
		check(int64(6*6-1), 0)
		// From the start of the third transaction: 4 transactions left.
		check(12, 20)
		check(end.Offset, 0)
		// A backlog over the scan bound is its offset difference, marked
		// inexact.
		if got, exact, err := NetLag(ctx, cl, td.Partitions[0].Leader, topic, [16]byte(td.ID), 0, 0, end.Offset, 10); err != nil || exact || got != end.Offset {
			t.Fatalf("net lag over the scan bound: %d (exact %v, %v), want the offset difference %d, inexact", got, exact, err, end.Offset)
		}
	})
}

package kafka_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
)

// countRecords counts the data records of topic a reader of the given
// isolation sees now (control records left out).
func countRecords(t testing.TB, seeds []string, topic string, committed bool) int {
	t.Helper()
	iso := kgo.ReadUncommitted()
	if committed {
		iso = kgo.ReadCommitted()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(iso),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	n := 0
	for empty := 0; empty < 3; {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			empty++
		}
		n += fs.NumRecords()
	}
	return n
}

// TestEarlyCommitWhenIdle: with a commit interval of an hour and a
// MinCommitInterval, a worker whose input ran dry commits its output at
// once: read_committed readers see every sum. The negative control runs
// without MinCommitInterval: the same sums are written (a read_uncommitted
// reader sees them) and none is committed.
func TestEarlyCommitWhenIdle(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	adm := newAdmin(t, seeds)
	for _, early := range []bool{true, false} {
		in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
		createTopic(t, adm, in, 1, nil)
		createTopic(t, adm, out, 1, nil)
		cfg := kafka.Config{Brokers: seeds, StateDir: t.TempDir(), WorkerID: "w", CommitInterval: time.Hour}
		if early {
			cfg.MinCommitInterval = 5 * time.Millisecond
		}
		w, err := kafka.NewWorker(sumJob(testenv.Name(t, "early"), in, out), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		var recs []*kgo.Record
		for v := int64(1); v <= 3; v++ {
			recs = append(recs, &kgo.Record{Topic: in, Value: []byte(strconv.FormatInt(v, 10))})
		}
		produce(t, seeds, recs)
		if early {
			runUntil(t, 2*time.Minute, "the sums committed", func() bool { return countRecords(t, seeds, out, true) == 3 })
		} else {
			runUntil(t, 2*time.Minute, "the sums written", func() bool { return countRecords(t, seeds, out, false) == 3 })
			if n := countRecords(t, seeds, out, true); n != 0 {
				t.Fatalf("negative control: %d sums committed with a commit interval of an hour and no MinCommitInterval", n)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

package kafka_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestRestartAbortsOwnOpenTransaction: a worker that died with its
// transaction open after the transaction took in the group's offsets (the
// window of a commit) comes back without waiting for that transaction to
// time out: re-initialising its transactional id (InitProducerId) aborts
// the transaction at once. The dead incarnation's transaction is made here,
// deterministically, with the worker's transactional id and a 10-minute
// timeout; the test waits at most 3 minutes for the restarted worker's
// output, and checks that the dead transaction's output never shows and
// its offset is not used. (The worker now re-initialises in setup; on this
// path the end of the empty transaction after the first rebalance also
// loads the id, so removing only the setup call does not fail this test:
// the CI failure came from a restart whose first wait for stable offsets
// ran before either.)
func TestRestartAbortsOwnOpenTransaction(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) {
		adm := newAdmin(t, seeds)
		in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
		createTopic(t, adm, in, 1, nil)
		createTopic(t, adm, out, 1, nil)
		job := testenv.Name(t, "reinit")
		b := sumJob(job, in, out)
		produce(t, seeds, []*kgo.Record{{Topic: in, Value: []byte("1")}, {Topic: in, Value: []byte("2")}})

		// The previous incarnation: its transaction wrote an output and
		// took in the group's offsets, and then it died.
		ctx := context.Background()
		txnID := kafka.Group(job) + "-w"
		dead, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.TransactionalID(txnID),
			kgo.TransactionTimeout(10*time.Minute), kgo.RecordPartitioner(kgo.ManualPartitioner()))
		if err != nil {
			t.Fatal(err)
		}
		if err := dead.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := dead.ProduceSync(ctx, &kgo.Record{Topic: out, Value: []byte("from the dead")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		pid, epoch, err := dead.ProducerID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		add := kmsg.NewPtrAddOffsetsToTxnRequest()
		add.TransactionalID, add.ProducerID, add.ProducerEpoch, add.Group = txnID, pid, epoch, kafka.Group(job)
		if resp, err := add.RequestWith(ctx, dead); err != nil || resp.ErrorCode != 0 {
			t.Fatalf("adding offsets to the transaction: %v %+v", err, resp)
		}
		commit := kmsg.NewPtrTxnOffsetCommitRequest()
		commit.TransactionalID, commit.Group, commit.ProducerID, commit.ProducerEpoch = txnID, kafka.Group(job), pid, epoch
		commit.Generation, commit.MemberID = -1, ""
		ct := kmsg.NewTxnOffsetCommitRequestTopic()
		ct.Topic = in
		td, err := adm.ListTopics(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		ct.TopicID = td[in].ID // v6 names topics by id
		cp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		cp.Partition, cp.Offset, cp.LeaderEpoch = 0, 1, -1
		ct.Partitions = append(ct.Partitions, cp)
		commit.Topics = append(commit.Topics, ct)
		if resp, err := commit.RequestWith(ctx, dead); err != nil || resp.Topics[0].Partitions[0].ErrorCode != 0 {
			t.Fatalf("committing offsets in the transaction: %v %+v", err, resp)
		}
		// No EndTxn: the client is dropped as a SIGKILL would.

		w, err := kafka.NewWorker(b, kafka.Config{Brokers: seeds, StateDir: t.TempDir(), WorkerID: "w",
			TransactionTimeout: 10 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		defer func() { cancel(); <-done }()
		// The dead transaction's offset (1) is aborted: the restarted
		// worker starts from the beginning, and the output it wrote
		// never shows.
		want := strconv.Itoa(1 + 2)
		runUntil(t, 3*time.Minute, "the restarted worker's sum (transaction timeout 10 min)", func() bool {
			select {
			case err := <-done:
				t.Fatalf("the worker stopped: %v", err)
			default:
			}
			recs := readAll(t, seeds, out)
			return len(recs) > 0 && string(recs[len(recs)-1].Value) == want
		})
		for _, r := range readAll(t, seeds, out) {
			if string(r.Value) == "from the dead" {
				t.Fatal("the dead incarnation's transaction became visible")
			}
		}
	})
}

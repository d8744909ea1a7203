package kafka_test

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

// hangTxn leaves a hanging transaction on topic/0: a transactional record
// of txnID's producer written without AddPartitionsToTxn, so the
// transaction coordinator never hears of it and never ends it. This is the
// state a single Apache node can be left in after a crash (docs/design.md);
// made on purpose here with a broker whose partition verification (KIP-890
// part 1, which would refuse the write) is off. It returns the producer's
// id and epoch.
func hangTxn(t *testing.T, seeds []string, topic, txnID string) (int64, int16) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Produce v11 at most: v12 adds the partition to the transaction
	// implicitly (KIP-890 part 2).
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.MaxVersions(kversion.V3_7_0()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	init := kmsg.NewPtrInitProducerIDRequest()
	init.TransactionalID = &txnID
	init.TransactionTimeoutMillis = 60_000
	var ir *kmsg.InitProducerIDResponse
	runUntil(t, time.Minute, "a producer id", func() bool {
		ir, err = init.RequestWith(ctx, cl)
		return err == nil && ir.ErrorCode == 0
	})
	rec := kmsg.Record{Key: []byte("hanging"), Value: []byte("never committed")}
	body := rec.AppendTo(nil)
	rec.Length = int32(len(body) - 1) // the zero length took one varint byte
	now := time.Now().UnixMilli()
	b := kmsg.RecordBatch{
		PartitionLeaderEpoch: -1, Magic: 2, Attributes: 0x0010, // transactional
		FirstTimestamp: now, MaxTimestamp: now,
		ProducerID: ir.ProducerID, ProducerEpoch: ir.ProducerEpoch,
		NumRecords: 1, Records: rec.AppendTo(nil),
	}
	raw := b.AppendTo(nil)
	b.Length = int32(len(raw) - 12)
	raw = b.AppendTo(nil)
	binary.BigEndian.PutUint32(raw[17:21], crc32.Checksum(raw[21:], crc32.MakeTable(crc32.Castagnoli)))

	req := kmsg.NewPtrProduceRequest()
	req.TransactionID, req.Acks, req.TimeoutMillis = &txnID, -1, 30_000
	rt := kmsg.NewProduceRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewProduceRequestTopicPartition()
	rp.Records = raw
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	md, err := kadm.NewClient(cl).Metadata(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	leader := md.Topics[topic].Partitions[0].Leader
	resp, err := cl.Broker(int(leader)).Request(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if code := resp.(*kmsg.ProduceResponse).Topics[0].Partitions[0].ErrorCode; code != 0 {
		t.Fatalf("writing the hanging transaction: %v", kerr.ErrorForCode(code))
	}
	return ir.ProducerID, ir.ProducerEpoch
}

// stableGap is how far topic/0's last stable offset is behind its end.
func stableGap(t *testing.T, adm *kadm.Client, topic string) int64 {
	t.Helper()
	ctx := context.Background()
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	lsos, err := adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := ends.Lookup(topic, 0)
	l, _ := lsos.Lookup(topic, 0)
	return e.Offset - l.Offset
}

// TestHangingTransactionsAborted: a hanging transaction on a changelog
// stops every read_committed reader at its start for good; a worker
// restoring that changelog closes it once the stable offset has stayed put
// for longer than the transaction timeout and the coordinator has no
// transaction of that producer id it has not ended, whether it was left by
// the worker's own earlier incarnation or by another producer. The negative
// control: with KeepHangingTransactions the restore fails.
//
// Apache Kafka only: kfake checks every transactional write against its
// coordinator, so a hanging transaction cannot be made there.
func TestHangingTransactionsAborted(t *testing.T) {
	k := testenv.NewKafka(t, localsvc.KafkaOptions{Configs: map[string]string{
		"transaction.partition.verification.enable": "false",
	}})
	seeds := k.Addrs()
	adm := newAdmin(t, seeds)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	createTopic(t, adm, in, 1, nil)
	createTopic(t, adm, out, 1, nil)
	job := testenv.Name(t, "hang")
	build := func() *pipeline.Builder { return sumJob(job, in, out) }
	dir := t.TempDir()
	const worker = "w"
	// run starts a worker, feeds it values and waits for their sums; it
	// returns the worker's error if the run fails before that.
	model := int64(0)
	run := func(cfg kafka.Config, values ...int64) (*kafka.Worker, error) {
		t.Helper()
		cfg.Brokers, cfg.StateDir, cfg.WorkerID = seeds, dir, worker
		if cfg.TransactionTimeout == 0 {
			cfg.TransactionTimeout = 5 * time.Second
		}
		w, err := kafka.NewWorker(build(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		select {
		case <-w.Ready():
		case err := <-done:
			return w, err
		}
		var recs []*kgo.Record
		for _, v := range values {
			recs = append(recs, &kgo.Record{Topic: in, Value: []byte(strconv.FormatInt(v, 10))})
			model += v
		}
		produce(t, seeds, recs)
		want := strconv.FormatInt(model, 10)
		runUntil(t, 2*time.Minute, "the sum "+want, func() bool {
			select {
			case err := <-done:
				t.Fatalf("the worker stopped: %v", err)
			default:
			}
			all := readAll(t, seeds, out)
			return len(all) > 0 && string(all[len(all)-1].Value) == want
		})
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return w, nil
	}
	if _, err := run(kafka.Config{}, 1, 2, 3); err != nil {
		t.Fatal(err)
	}
	log := pipeline.ChangelogTopic(job, "sum")

	// The worker's own earlier incarnation.
	hangTxn(t, seeds, log, kafka.Group(job)+"-"+worker)
	if gap := stableGap(t, adm, log); gap == 0 {
		t.Fatal("the hanging transaction did not hold the changelog's stable offset back")
	}
	_, err := run(kafka.Config{KeepHangingTransactions: true, RestoreWait: 3 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "kafka-transactions.sh") {
		t.Fatalf("negative control: with KeepHangingTransactions the restore should fail on the hanging transaction, got %v", err)
	}
	w, err := run(kafka.Config{RestoreWait: 2 * time.Minute}, 4)
	if err != nil {
		t.Fatalf("a worker did not clear its own hanging transaction: %v", err)
	}
	if n := w.HangingTransactionsAborted(); n != 1 {
		t.Fatalf("the worker aborted %d hanging transactions, want 1", n)
	}
	if gap := stableGap(t, adm, log); gap != 0 {
		t.Fatalf("the changelog's stable offset is still %d behind its end", gap)
	}

	// Another producer's (a worker of the job that never came back).
	hangTxn(t, seeds, log, testenv.Name(t, "gone-worker"))
	w, err = run(kafka.Config{TransactionTimeout: 2 * time.Second, RestoreWait: 2 * time.Minute}, 5)
	if err != nil {
		t.Fatalf("a restore did not clear another producer's hanging transaction: %v", err)
	}
	if n := w.HangingTransactionsAborted(); n != 1 {
		t.Fatalf("the worker aborted %d hanging transactions, want 1", n)
	}
	// The aborted records never become visible: the changelog read
	// committed holds only sums the model produced.
	for _, r := range readAll(t, seeds, log) {
		if string(r.Key) == "hanging" {
			t.Fatalf("the hanging transaction's record became visible at offset %d", r.Offset)
		}
	}
}

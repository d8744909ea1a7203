package kafka

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kadm"
)

// Hanging transactions: a partition holds a producer's open transaction
// that its transaction coordinator no longer knows (Apache Kafka can leave
// one when a single node restarts while a transaction times out, see
// docs/design.md). Its last stable offset never moves again: read_committed
// readers stop there and a restore waits forever. Kafka's own tooling
// (`kafka-transactions.sh find-hanging` / `abort`) finds such a transaction
// with DescribeProducers, checks it against the coordinator and closes it
// with an abort marker (WriteTxnMarkers, KIP-664). The worker does the
// same, in two cases where the answer is certain:
//
//   - its own producer's earlier epochs: once InitProducerId has returned,
//     the coordinator has aborted (or committed) every transaction of this
//     transactional id; a transaction of an earlier epoch still open on a
//     partition the job writes, or on the group's offsets partition, is
//     hanging (nothing else will end it);
//   - any producer on a changelog the worker restores, once the stable
//     offset has stayed put for longer than the transaction timeout and the
//     coordinator reports no ongoing transaction of that producer and epoch
//     on that partition.
//
// An abort marker only closes the producer's open transaction on that
// partition: records a coordinator has not committed are never made
// visible, so aborting loses nothing a reader was promised.

// writtenTopics lists the topics a job's transactions write: changelogs,
// repartition and sink topics, and its dead-letter topic.
func writtenTopics(plan *pipeline.Plan) []string {
	seen := map[string]bool{pipeline.DeadLetterTopic(plan.Job): true}
	for _, s := range plan.Subtopologies {
		for _, c := range s.Changelogs {
			seen[c] = true
		}
		for _, o := range s.Outputs {
			seen[o] = true
		}
	}
	out := make([]string, 0, len(seen))
	for t := range seen {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// openTxn is a producer's open transaction on one partition.
type openTxn struct {
	topic            string
	partition        int32
	producerID       int64
	producerEpoch    int16
	coordinatorEpoch int32
	startOffset      int64
}

func (o openTxn) String() string {
	return fmt.Sprintf("%s/%d producer %d epoch %d from offset %d", o.topic, o.partition, o.producerID, o.producerEpoch, o.startOffset)
}

// openTxns describes the open transactions on the given partitions.
func openTxns(ctx context.Context, adm *kadm.Client, s kadm.TopicsSet) ([]openTxn, error) {
	described, err := adm.DescribeProducers(ctx, s)
	if err != nil {
		return nil, err
	}
	var out []openTxn
	for _, p := range described.SortedPartitions() {
		if p.Err != nil {
			return nil, fmt.Errorf("describing the producers of %s/%d: %w", p.Topic, p.Partition, p.Err)
		}
		for _, pr := range p.ActiveProducers {
			if pr.CurrentTxnStartOffset < 0 {
				continue
			}
			out = append(out, openTxn{
				topic: p.Topic, partition: p.Partition,
				producerID: pr.ProducerID, producerEpoch: pr.ProducerEpoch,
				coordinatorEpoch: pr.CoordinatorEpoch, startOffset: pr.CurrentTxnStartOffset,
			})
		}
	}
	return out, nil
}

// abortTxn writes an abort marker for one open transaction, as
// `kafka-transactions.sh abort` does.
func abortTxn(ctx context.Context, adm *kadm.Client, o openTxn) error {
	ce := o.coordinatorEpoch
	if ce < 0 {
		ce = 0
	}
	resp, err := adm.WriteTxnMarkers(ctx, kadm.TxnMarkers{
		ProducerID:       o.producerID,
		ProducerEpoch:    o.producerEpoch,
		Commit:           false,
		CoordinatorEpoch: ce,
		Topics:           kadm.TopicsSet{o.topic: {o.partition: {}}},
	})
	if err != nil {
		return fmt.Errorf("aborting the hanging transaction on %s: %w", o, err)
	}
	var perr error
	resp.EachPartition(func(r kadm.TxnMarkersPartitionResponse) {
		if r.Err != nil && perr == nil {
			perr = fmt.Errorf("aborting the hanging transaction on %s: %w", o, r.Err)
		}
	})
	return perr
}

// abortOwnHanging closes the transactions of this worker's producer left
// open by earlier epochs on the topics the job writes. It runs right after
// InitProducerId returned (pid, epoch). A broker that cannot describe
// producers (an old version) leaves them to the restore's wait.
func (w *Worker) abortOwnHanging(ctx context.Context, pid int64, epoch int16) error {
	if w.cfg.KeepHangingTransactions {
		return nil
	}
	s := make(kadm.TopicsSet)
	for _, t := range writtenTopics(w.plan) {
		s[t] = nil
	}
	open, err := openTxns(ctx, w.adm, s)
	if err != nil {
		w.log.Warn("could not look for hanging transactions of this worker's producer", "err", err)
		return nil
	}
	// The transaction's offset commit: a hanging one there keeps the
	// group's offsets unstable (UNSTABLE_OFFSET_COMMIT) for good.
	if offs, err := openTxns(ctx, w.adm, kadm.TopicsSet{"__consumer_offsets": nil}); err == nil {
		open = append(open, offs...)
	}
	for _, o := range open {
		if o.producerID != pid || o.producerEpoch >= epoch {
			continue
		}
		if err := abortTxn(ctx, w.adm, o); err != nil {
			return err
		}
		w.hangingAborted.Add(1)
		w.log.Warn("aborted a hanging transaction left by this worker's previous incarnation (its coordinator had already ended it)",
			"txn", o.String(), "current_epoch", epoch)
	}
	return nil
}

// abortIfHanging closes the open transaction at a changelog partition's
// stable offset when its coordinator no longer knows it. stuckFor is how
// long the stable offset has stayed at lso; below the transaction timeout
// the transaction may simply be running (or its abort on timeout still to
// come), and nothing is done.
func (w *Worker) abortIfHanging(ctx context.Context, topic string, p int32, lso int64, stuckFor time.Duration) (bool, error) {
	if w.cfg.KeepHangingTransactions || stuckFor < w.cfg.TransactionTimeout+5*time.Second {
		return false, nil
	}
	open, err := openTxns(ctx, w.adm, kadm.TopicsSet{topic: {p: {}}})
	if err != nil {
		return false, nil // cannot tell: keep waiting, the restore's deadline explains
	}
	for _, o := range open {
		if o.startOffset != lso {
			continue
		}
		ongoing, err := w.coordinatorHas(ctx, o)
		if err != nil || ongoing {
			return false, nil
		}
		// Still the same transaction? (It may have ended meanwhile.)
		again, err := openTxns(ctx, w.adm, kadm.TopicsSet{topic: {p: {}}})
		if err != nil {
			return false, nil
		}
		same := false
		for _, a := range again {
			same = same || (a.producerID == o.producerID && a.producerEpoch == o.producerEpoch && a.startOffset == o.startOffset)
		}
		if !same {
			return false, nil
		}
		if err := abortTxn(ctx, w.adm, o); err != nil {
			return false, err
		}
		w.hangingAborted.Add(1)
		w.log.Warn("aborted a hanging transaction: its coordinator no longer knows it, and the changelog's stable offset had not moved for longer than the transaction timeout",
			"txn", o.String(), "stuck_for", stuckFor.Round(time.Second))
		return true, nil
	}
	return false, nil
}

// coordinatorHas reports whether the transaction coordinator knows o as
// ongoing (or being committed or aborted) on its partition.
func (w *Worker) coordinatorHas(ctx context.Context, o openTxn) (bool, error) {
	listed, err := w.adm.ListTransactions(ctx, []int64{o.producerID}, nil)
	if err != nil {
		return false, err
	}
	ids := listed.TransactionalIDs()
	if len(ids) == 0 {
		return false, nil // no transactional id holds this producer any more
	}
	described, err := w.adm.DescribeTransactions(ctx, ids...)
	if err != nil {
		return false, err
	}
	for _, d := range described {
		if d.ProducerID != o.producerID || d.ProducerEpoch != o.producerEpoch {
			continue
		}
		switch d.State {
		case "Ongoing", "PrepareCommit", "PrepareAbort", "PrepareEpochFence":
		default:
			continue
		}
		if _, ok := d.Topics[o.topic][o.partition]; ok {
			return true, nil
		}
	}
	return false, nil
}

// HangingTransactionsAborted is how many hanging transactions this worker
// has closed with an abort marker.
func (w *Worker) HangingTransactionsAborted() int64 { return w.hangingAborted.Load() }

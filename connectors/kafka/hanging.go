package kafka

import (
	"context"
	"fmt"
	"time"

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
// same for the changelogs it restores: a transaction at the stable
// offset, once that offset has stayed put for longer than the transaction
// timeout and the coordinator reports no transaction of that producer id
// that it has not ended. (An earlier version also aborted, right after
// InitProducerId, any open transaction of its own producer's earlier
// epochs: on Apache Kafka 4.4 InitProducerId returns while the markers of
// the transaction it ends are still being written, so that aborted
// transactions being committed, and the engine crash test saw records lost
// and duplicated.)
//
// An abort marker only closes the producer's open transaction on that
// partition: records a coordinator has not committed are never made
// visible, so aborting loses nothing a reader was promised.

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
	// Conservative: any transaction of that producer id that the
	// coordinator has not ended counts, whatever its epoch (with
	// transactions v2 the coordinator bumps the epoch when it prepares
	// the end, so the partition's records carry an older one) and
	// whatever partitions it lists (a prepared transaction lists only the
	// partitions still without markers).
	for _, d := range described {
		if d.ProducerID != o.producerID {
			continue
		}
		switch d.State {
		case "Ongoing", "PrepareCommit", "PrepareAbort", "PrepareEpochFence":
			return true, nil
		}
	}
	return false, nil
}

// HangingTransactionsAborted is how many hanging transactions this worker
// has closed with an abort marker.
func (w *Worker) HangingTransactionsAborted() int64 { return w.hangingAborted.Load() }

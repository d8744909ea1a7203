package kafka

import (
	"context"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Unprocessed returns the records w has handed to its tasks that they have
// not finished processing: the queues, the chunk waiting to enter one and
// the chunk being processed.
func Unprocessed(w *Worker) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n int64
	for _, tr := range w.tasks {
		for _, pos := range tr.positions {
			if h, p := pos.handed.Load(), pos.processed.Load(); h > p {
				n += h - p
			}
		}
	}
	return n
}

// RestoreOnly does what Run does of a savepoint restore (the job's topics,
// the rewritten changelogs and repartition topics, the committed offsets)
// and stops there, so a test can read the restored topics before any task
// consumes (and purges) them.
func RestoreOnly(ctx context.Context, w *Worker) error {
	var err error
	if w.admCl, err = kgo.NewClient(w.clientOpts()...); err != nil {
		return err
	}
	defer w.admCl.Close()
	w.adm = kadm.NewClient(w.admCl)
	if w.parts, err = ensureTopics(ctx, w.adm, w.plan, w.cfg); err != nil {
		return err
	}
	if w.rcl, err = kgo.NewClient(w.clientOpts(kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())...); err != nil {
		return err
	}
	defer w.rcl.Close()
	return w.restoreSavepoint(ctx, w.cfg.FromSavepoint)
}

// TxnVerdict reads the transaction coordinator's log (__transaction_state)
// for txnID and says how the coordinator ended the transaction producer
// pid at epoch holds (or held) on topic/p: "committed", "aborted", "not
// in a transaction", "running" or "unknown".
func TxnVerdict(ctx context.Context, seeds []string, txnID string, pid int64, epoch int16, topic string, p int32) (string, error) {
	w := &Worker{cfg: Config{Brokers: seeds}}
	cl, err := kgo.NewClient(w.clientOpts()...)
	if err != nil {
		return "", err
	}
	defer cl.Close()
	w.adm = kadm.NewClient(cl)
	recs, err := w.readTxnLog(ctx, txnID)
	if err != nil {
		return "", err
	}
	v, _ := judgeTxn(recs, pid, epoch, topic, p)
	return v.String(), nil
}

// ResolveHanging runs a restoring worker's check on topic/p as if its
// stable offset had not moved for an hour: it closes the open transaction
// there the way the coordinator's log says it ended (resolveIfHanging).
// It returns whether it closed one there, and how many partitions it
// closed with commit and with abort markers.
func ResolveHanging(ctx context.Context, seeds []string, topic string, p int32, lso int64) (closed bool, committed, aborted int64, err error) {
	w := &Worker{cfg: Config{Brokers: seeds, TransactionTimeout: 10 * time.Second}, log: slog.Default()}
	cl, err := kgo.NewClient(w.clientOpts()...)
	if err != nil {
		return false, 0, 0, err
	}
	defer cl.Close()
	w.adm = kadm.NewClient(cl)
	closed, err = w.resolveIfHanging(ctx, topic, p, lso, time.Hour)
	return closed, w.hangingCommitted.Load(), w.hangingAborted.Load(), err
}

// CloseOwnHanging does what a starting worker does once its transactional
// producer (txnID) is initialised: it closes, on the given topics, the
// transactions of that producer id's earlier epochs still open, the way
// the coordinator's log says they ended (closeOwnHanging). It returns how
// many partitions it closed with commit and with abort markers.
func CloseOwnHanging(ctx context.Context, seeds []string, txnID string, topics []string) (committed, aborted int64, err error) {
	w := &Worker{cfg: Config{Brokers: seeds, TransactionTimeout: 10 * time.Second}, log: slog.Default(), parts: map[string]int32{}}
	cl, err := kgo.NewClient(w.clientOpts(kgo.TransactionalID(txnID))...)
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	w.adm = kadm.NewClient(cl)
	pid, epoch, err := cl.ProducerID(ctx)
	if err != nil {
		return 0, 0, err
	}
	td, err := w.adm.ListTopics(ctx, topics...)
	if err != nil {
		return 0, 0, err
	}
	for _, t := range topics {
		w.parts[t] = int32(len(td[t].Partitions))
	}
	w.closeOwnHanging(ctx, txnID, pid, epoch, topics, txnID+"-group")
	return w.hangingCommitted.Load(), w.hangingAborted.Load(), nil
}

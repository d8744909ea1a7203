package kafka

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
)

// Hanging transactions: a partition holds a producer's open transaction
// that its transaction coordinator has ended without writing a marker
// there. Its last stable offset never moves again: read_committed readers
// stop there and a restore waits forever. A single Apache Kafka node
// restarted after a SIGKILL leaves them: reloading a transaction it was
// ending, its coordinator skips the markers of partitions its metadata
// does not list yet ("Couldn't find leader endpoint ... likely deleted
// already and hence can be skipped") and writes Complete* anyway; see
// docs/design.md. That happens to transactions being committed as well
// as aborted.
//
// Kafka's own tooling (`kafka-transactions.sh find-hanging` / `abort`,
// KIP-664) finds such a transaction with DescribeProducers and closes it
// with an abort marker (WriteTxnMarkers). Aborting a transaction the
// coordinator committed breaks exactly-once: its records on the other
// partitions (outputs, other changelogs, the consumed offsets) are
// visible, the changelog's are dropped, and the restored state lacks them
// (the engine crash test saw session windows emitted twice and scored
// records lost, about one CI run in four). The worker therefore closes a
// hanging transaction on a changelog it restores the way the coordinator
// ended it, read from the coordinator's own log (__transaction_state,
// txnlog.go): a commit marker if it committed, an abort marker if it
// aborted or never had the partition in the transaction. The
// coordinator's Prepare record lists every partition of the transaction,
// so every one of them still holding it open gets the same marker at once.
// When the log does not say (no transactional id holds the producer id,
// the log's history is gone, the log cannot be read), nothing is done and
// the restore fails after RestoreWait with the command an operator runs.

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

// writeMarker closes one open transaction with a commit or an abort marker
// (WriteTxnMarkers, as `kafka-transactions.sh abort` does for aborts).
func writeMarker(ctx context.Context, adm *kadm.Client, o openTxn, commit bool) error {
	ce := o.coordinatorEpoch
	if ce < 0 {
		ce = 0
	}
	resp, err := adm.WriteTxnMarkers(ctx, kadm.TxnMarkers{
		ProducerID:       o.producerID,
		ProducerEpoch:    o.producerEpoch,
		Commit:           commit,
		CoordinatorEpoch: ce,
		Topics:           kadm.TopicsSet{o.topic: {o.partition: {}}},
	})
	if err != nil {
		return fmt.Errorf("closing the hanging transaction on %s: %w", o, err)
	}
	var perr error
	resp.EachPartition(func(r kadm.TxnMarkersPartitionResponse) {
		if r.Err != nil && perr == nil {
			perr = fmt.Errorf("closing the hanging transaction on %s: %w", o, r.Err)
		}
	})
	return perr
}

// hangCheckAfter is how long a changelog's stable offset must stay put
// before the worker asks whether the transaction holding it hangs: a
// crashed worker's transaction is normally ended within the transaction
// timeout by the coordinator (or at once by the worker's next
// incarnation), and the checks below read the coordinator's log.
func (w *Worker) hangCheckAfter() time.Duration {
	d := w.cfg.TransactionTimeout + 5*time.Second
	if d > 15*time.Second {
		// The verdict below needs the coordinator to have finished the
		// transaction (a Complete record in its log), so a long timeout
		// need not be waited out in full.
		d = 15 * time.Second
	}
	return d
}

// resolveIfHanging closes the open transaction at a changelog partition's
// stable offset when its coordinator has finished with it, the way the
// coordinator's own log says it ended: commit markers for a committed
// transaction, abort markers for an aborted one or for a write the
// coordinator never had in a transaction. Every partition the
// coordinator's Prepare record lists that still holds that transaction
// open gets the same marker (outputs, repartition topics, the group's
// offsets), so one check closes the whole transaction. stuckFor is how
// long the stable offset has stayed at lso. It reports whether it closed
// anything on topic/p.
func (w *Worker) resolveIfHanging(ctx context.Context, topic string, p int32, lso int64, stuckFor time.Duration) (bool, error) {
	if w.cfg.KeepHangingTransactions || stuckFor < w.hangCheckAfter() {
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
		ids, ongoing, err := w.coordinatorHas(ctx, o)
		if err != nil || ongoing || len(ids) != 1 {
			// Running, unreadable, or no (or more than one) transactional
			// id holds the producer id: nothing says how it ended.
			w.noteHanging(o, outcomeUnknown, stuckFor, len(ids))
			return false, nil
		}
		recs, err := w.readTxnLog(ctx, ids[0])
		if err != nil {
			if w.firstInAMinute("log " + o.topic + "/" + fmt.Sprint(o.partition)) {
				w.log.Warn("cannot read the transaction coordinator's log to close a hanging transaction", "txn", o.String(), "err", err)
			}
			return false, nil
		}
		if ids[0] == w.ownTxnID {
			recs = mergeTxnLog(w.ownTxnLog, recs)
		}
		verdict, prep := judgeTxn(recs, o.producerID, o.producerEpoch, o.topic, o.partition)
		if verdict != outcomeCommitted && verdict != outcomeAborted && verdict != outcomeNotInTxn {
			w.noteHanging(o, verdict, stuckFor, 1)
			return false, nil
		}
		if len(prep.partitions) == 0 && verdict != outcomeNotInTxn {
			// The log kept only the Complete record (compacted): it says
			// how the transaction ended, not where it wrote. Look for it
			// on every partition of the job's topics (without a job, of
			// this partition's topic).
			prep = w.hangScope(ctx, o.topic)
		}
		closed := w.closeTxn(ctx, o, ids[0], verdict, prep, stuckFor)
		for _, c := range closed {
			if c.topic == topic && c.partition == p {
				return true, nil
			}
		}
		return false, nil
	}
	return false, nil
}

// hangScope lists every partition of the topics the job writes (or, for
// a worker without a job, of topic), as a Prepare record would.
func (w *Worker) hangScope(ctx context.Context, topic string) txnLogRecord {
	scope := []string{topic}
	if w.plan != nil {
		scope = w.writtenTopics()
	}
	out := txnLogRecord{partitions: map[string][]int32{}}
	td, err := w.adm.ListTopics(ctx, scope...)
	if err != nil {
		return out
	}
	for _, t := range scope {
		for q := range td[t].Partitions {
			out.partitions[t] = append(out.partitions[t], q)
		}
	}
	return out
}

// closeTxn writes the marker the coordinator's verdict calls for on
// o.partition and on every partition of prep (the coordinator's Prepare
// record) that still holds o's producer id and epoch open. It returns the
// partitions it closed.
func (w *Worker) closeTxn(ctx context.Context, o openTxn, txnID string, verdict txnOutcome, prep txnLogRecord, stuckFor time.Duration) []openTxn {
	commit := verdict == outcomeCommitted
	targets := kadm.TopicsSet{o.topic: {o.partition: {}}}
	for t, ps := range prep.partitions {
		for _, q := range ps {
			targets.Add(t, q)
		}
	}
	still, err := openTxns(ctx, w.adm, targets)
	if err != nil {
		w.log.Warn("cannot look at a hanging transaction's partitions to close it; looked at again on the next check",
			"txn", o.String(), "coordinator_verdict", verdict.String(), "err", err)
		return nil
	}
	var closed []openTxn
	for _, s := range still {
		if s.producerID != o.producerID || s.producerEpoch != o.producerEpoch {
			continue
		}
		if err := writeMarker(ctx, w.adm, s, commit); err != nil {
			// It may have been closed meanwhile: looked at again on the
			// next check.
			w.log.Warn("closing a hanging transaction failed", "txn", s.String(), "commit", commit, "err", err)
			continue
		}
		if commit {
			w.hangingCommitted.Add(1)
		} else {
			w.hangingAborted.Add(1)
		}
		closed = append(closed, s)
	}
	if len(closed) > 0 {
		var parts []string
		for _, c := range closed {
			parts = append(parts, fmt.Sprintf("%s/%d@%d", c.topic, c.partition, c.startOffset))
		}
		w.log.Warn("closed a hanging transaction its coordinator had ended without markers on some partitions",
			"producer_id", o.producerID, "epoch", o.producerEpoch, "transactional_id", txnID,
			"coordinator_verdict", verdict.String(), "marker", map[bool]string{true: "commit", false: "abort"}[commit],
			"partitions", len(closed), "closed", strings.Join(parts, ","), "stuck_for", stuckFor.Round(time.Second))
	}
	return closed
}

// closeOwnHanging runs once the worker's transactional producer is
// initialised (its previous incarnation fenced, the transaction it left
// open ended by the coordinator), before any task writes: every partition
// the job writes (and the group's offsets partition) that still holds a
// transaction of this producer id from an earlier epoch is closed the way
// the coordinator's log says that transaction ended. Left open, the
// transaction would be closed by this incarnation's next marker on that
// partition, with this incarnation's outcome: an aborted transaction's
// records committed, or a committed one's aborted. A partition whose
// verdict the log does not give is left alone (the restore's check, or an
// operator, closes it).
func (w *Worker) closeOwnHanging(ctx context.Context, txnID string, pid int64, epoch int16, topics []string, group string) {
	targets := kadm.TopicsSet{}
	for _, t := range topics {
		for q := int32(0); q < w.partitions(t); q++ {
			targets.Add(t, q)
		}
	}
	open, err := openTxns(ctx, w.adm, targets)
	if err != nil {
		w.log.Warn("cannot look for transactions of an earlier incarnation left open", "err", err)
		return
	}
	// The group's offsets partition, looked at on its own: a principal
	// without access to __consumer_offsets still has the job's topics
	// swept.
	if td, err := w.adm.ListTopicsWithInternal(ctx, "__consumer_offsets"); err == nil {
		if d, ok := td["__consumer_offsets"]; ok && d.Err == nil && len(d.Partitions) > 0 {
			more, err := openTxns(ctx, w.adm, kadm.TopicsSet{"__consumer_offsets": {txnLogPartition(group, int32(len(d.Partitions))): {}}})
			if err != nil {
				w.log.Info("cannot look at the group's offsets partition for transactions of an earlier incarnation", "err", err)
			}
			open = append(open, more...)
		}
	}
	// One transaction of an earlier epoch may be open on many partitions.
	type txnKey struct {
		pid   int64
		epoch int16
	}
	groups := map[txnKey][]openTxn{}
	var order []txnKey
	for _, o := range open {
		if o.producerID != pid || o.producerEpoch >= epoch {
			continue
		}
		k := txnKey{o.producerID, o.producerEpoch}
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], o)
	}
	if len(order) == 0 {
		return
	}
	recs, err := w.readTxnLog(ctx, txnID)
	if err != nil {
		w.log.Warn("cannot read the transaction coordinator's log to close an earlier incarnation's open transaction", "txn", groups[order[0]][0].String(), "err", err)
		return
	}
	recs = mergeTxnLog(w.ownTxnLog, recs)
	for _, k := range order {
		// Judged partition by partition (a partition a transaction
		// never listed is aborted, whatever the others get), closed
		// verdict by verdict.
		byVerdict := map[txnOutcome][]openTxn{}
		preps := map[txnOutcome]txnLogRecord{}
		for _, o := range groups[k] {
			verdict, prep := judgeTxn(recs, o.producerID, o.producerEpoch, o.topic, o.partition)
			if verdict != outcomeCommitted && verdict != outcomeAborted && verdict != outcomeNotInTxn {
				w.log.Warn("an earlier incarnation's transaction is open on a partition the job writes, and the coordinator's log does not say how it ended",
					"txn", o.String(), "coordinator_verdict", verdict.String(), "transactional_id", txnID)
				continue
			}
			byVerdict[verdict] = append(byVerdict[verdict], o)
			preps[verdict] = prep
		}
		for _, verdict := range []txnOutcome{outcomeCommitted, outcomeAborted, outcomeNotInTxn} {
			members := byVerdict[verdict]
			if len(members) == 0 {
				continue
			}
			prep := preps[verdict]
			if verdict == outcomeNotInTxn {
				prep = txnLogRecord{} // only the partitions judged so
			}
			all := txnLogRecord{partitions: map[string][]int32{}}
			for t, ps := range prep.partitions {
				all.partitions[t] = append(all.partitions[t], ps...)
			}
			for _, o := range members {
				all.partitions[o.topic] = append(all.partitions[o.topic], o.partition)
			}
			w.closeTxn(ctx, members[0], txnID, verdict, all, 0)
		}
	}
}

// noteHanging logs, at most once a minute per partition, why a stable
// offset that has not moved for long is left alone.
func (w *Worker) noteHanging(o openTxn, verdict txnOutcome, stuckFor time.Duration, ids int) {
	if !w.firstInAMinute(fmt.Sprintf("%s/%d", o.topic, o.partition)) {
		return
	}
	w.log.Info("a changelog's stable offset is held by an open transaction; waiting for its coordinator",
		"txn", o.String(), "coordinator_verdict", verdict.String(), "transactional_ids", ids, "stuck_for", stuckFor.Round(time.Second))
}

// firstInAMinute reports whether nothing was logged under key in the last
// minute, and notes that something is now.
func (w *Worker) firstInAMinute(key string) bool {
	w.hangMu.Lock()
	defer w.hangMu.Unlock()
	if time.Since(w.hangNoted[key]) < time.Minute {
		return false
	}
	if w.hangNoted == nil {
		w.hangNoted = map[string]time.Time{}
	}
	w.hangNoted[key] = time.Now()
	return true
}

// coordinatorHas reports the transactional ids that hold o's producer id,
// and whether the transaction coordinator knows a transaction of theirs as
// ongoing (or being committed or aborted).
func (w *Worker) coordinatorHas(ctx context.Context, o openTxn) ([]string, bool, error) {
	listed, err := w.adm.ListTransactions(ctx, []int64{o.producerID}, nil)
	if err != nil {
		return nil, false, err
	}
	ids := listed.TransactionalIDs()
	if len(ids) == 0 {
		return nil, false, nil // no transactional id holds this producer any more
	}
	described, err := w.adm.DescribeTransactions(ctx, ids...)
	if err != nil {
		return ids, false, err
	}
	// Conservative: any transaction of that producer id that the
	// coordinator has not ended counts, whatever partitions it lists (a
	// prepared transaction lists only the partitions still without
	// markers), unless its epoch shows it is a later one (mayBeRunning;
	// with transactions v2 the coordinator bumps the epoch when it
	// prepares the end, so the partition's records carry an older one).
	// A live producer is in a transaction most of the time: counting its
	// later ones would leave its hanging transaction open until the
	// restore gives up.
	for _, d := range described {
		if d.ProducerID != o.producerID {
			continue
		}
		if mayBeRunning(d.State, d.ProducerEpoch, o.producerEpoch) {
			return ids, true, nil
		}
	}
	return ids, false, nil
}

// HangingTransactionsAborted is how many hanging transactions (one per
// partition) this worker has closed with an abort marker.
func (w *Worker) HangingTransactionsAborted() int64 { return w.hangingAborted.Load() }

// HangingTransactionsCommitted is how many hanging transactions (one per
// partition) this worker has closed with a commit marker, their
// coordinator having committed them.
func (w *Worker) HangingTransactionsCommitted() int64 { return w.hangingCommitted.Load() }

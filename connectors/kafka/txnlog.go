package kafka

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The transaction coordinator's own log (__transaction_state) is the only
// record of how it ended a transaction. A hanging transaction (open on a
// partition, ended by its coordinator without a marker there) must be
// closed the way the coordinator ended it: aborting one the coordinator
// committed drops records whose siblings on other partitions (outputs,
// other changelogs, the consumed offsets) are visible, and exactly-once is
// gone. Kafka's own `kafka-transactions.sh abort` always aborts; the
// engine reads the verdict instead (docs/design.md, "hanging
// transactions").

// txnLogTopic is the transaction coordinator's log.
const txnLogTopic = "__transaction_state"

// txnOutcome is what the coordinator's log says about one producer's
// transaction on one partition.
type txnOutcome int

const (
	// outcomeUnknown: the log does not say (it holds nothing of that
	// producer id and epoch: another transactional id, or history the log
	// no longer keeps). Nothing is done; the restore's deadline explains.
	outcomeUnknown txnOutcome = iota
	// outcomeRunning: the coordinator has not finished with the
	// transactional id (its last record is Ongoing or Prepare*): its own
	// markers may still come.
	outcomeRunning
	// outcomeCommitted: the transaction holding the partition ended in
	// PrepareCommit and then CompleteCommit.
	outcomeCommitted
	// outcomeAborted: it ended in PrepareAbort and then CompleteAbort.
	outcomeAborted
	// outcomeNotInTxn: the coordinator knew the producer at that epoch but
	// never had the partition in a transaction (a write without
	// AddPartitionsToTxn): nothing of it was ever committed.
	outcomeNotInTxn
)

func (o txnOutcome) String() string {
	return [...]string{"unknown", "running", "committed", "aborted", "not in a transaction"}[o]
}

// txnLogRecord is one state record of a transactional id, as the
// coordinator wrote it.
type txnLogRecord struct {
	offset     int64
	state      kmsg.TransactionState
	producerID int64
	epoch      int16
	txnVersion int16 // the client's transaction version (2: the epoch bumps at every end)
	partitions map[string][]int32
}

func (r txnLogRecord) has(topic string, p int32) bool {
	for _, q := range r.partitions[topic] {
		if q == p {
			return true
		}
	}
	return false
}

// judgeTxn reads the coordinator's records of one transactional id (in log
// order) for the transaction that producer id pid at epoch epoch holds
// open on topic/p.
//
// A transaction's records are Ongoing (one per partition set, with the
// producer's epoch), then PrepareCommit or PrepareAbort, then
// CompleteCommit or CompleteAbort (with transactions v2 the Prepare and
// Complete records carry the epoch bumped by one). The partition's open
// transaction is the last one of that epoch that listed it (a later
// transaction of the same epoch writing the partition would have joined
// the open one and closed it), so its outcome is the first Prepare after
// the last Ongoing record of (pid, epoch) listing the partition, once a
// Complete record follows.
func judgeTxn(recs []txnLogRecord, pid int64, epoch int16, topic string, p int32) (txnOutcome, txnLogRecord) {
	if len(recs) == 0 {
		return outcomeUnknown, txnLogRecord{}
	}
	// The coordinator's latest record: an unfinished transaction, unless
	// its epoch shows it is a later one of the same producer id.
	if lr := recs[len(recs)-1]; mayBeRunning(lr.state.String(), lr.epoch, epoch) ||
		(lr.producerID != pid && mayBeRunning(lr.state.String(), lr.epoch, lr.epoch)) {
		return outcomeRunning, lr
	}
	last, known := -1, false
	for i, r := range recs {
		if r.producerID != pid {
			continue
		}
		if r.epoch == epoch {
			// The log's cleaner keeps, in the prefix it has cleaned, only
			// the last record of a key before its cleaning point: the
			// records of an id that follow one that survives are all
			// there. A record from before the transaction's Ongoing
			// records (InitProducerId's Empty, or with v2, where an
			// epoch has one transaction, any record of the epoch: the
			// end of the previous transaction carries it) therefore
			// proves any Ongoing record listing the partition would
			// still be in the log. With v1 an Ongoing record proves
			// nothing: many transactions share an epoch, and a later
			// one's may be all the cleaner kept.
			switch {
			case r.state == kmsg.TransactionStateEmpty:
				known = true
			case r.txnVersion >= 2:
				known = true
			}
			if r.state == kmsg.TransactionStateOngoing && r.has(topic, p) {
				last = i
			}
		}
	}
	if last < 0 {
		// The log is compacted: once later records supersede them, the
		// Ongoing records may be gone. With transactions v2 a Prepare
		// record of epoch e+1 ends the transaction of epoch e and lists
		// all its partitions; failing that, the Complete record of epoch
		// e+1 says how it ended (not which partitions it had: the caller
		// finds those still open).
		for i, r := range recs {
			if r.producerID != pid || r.txnVersion < 2 || r.epoch != epoch+1 {
				continue
			}
			switch r.state {
			case kmsg.TransactionStatePrepareCommit, kmsg.TransactionStatePrepareAbort:
				if !r.has(topic, p) {
					return outcomeNotInTxn, txnLogRecord{}
				}
				return ended(recs[i+1:], r)
			case kmsg.TransactionStateCompleteCommit:
				return outcomeCommitted, r
			case kmsg.TransactionStateCompleteAbort:
				return outcomeAborted, r
			}
		}
		if known {
			return outcomeNotInTxn, txnLogRecord{}
		}
		return outcomeUnknown, txnLogRecord{}
	}
	for i := last + 1; i < len(recs); i++ {
		r := recs[i]
		switch r.state {
		case kmsg.TransactionStateOngoing:
			continue // the same transaction adding partitions
		case kmsg.TransactionStatePrepareCommit, kmsg.TransactionStatePrepareAbort:
			// The Prepare record lists every partition of the
			// transaction: the ones whose markers may be missing too.
			return ended(recs[i+1:], r)
		default:
			// Ended without a Prepare (a transaction that never had a
			// partition is ended without one): not this transaction.
			return outcomeUnknown, txnLogRecord{}
		}
	}
	return outcomeRunning, recs[len(recs)-1]
}

// mayBeRunning reports whether a transactional id whose coordinator is in
// state (TransactionState's name) at epoch cur may still be ending, or
// adding partitions to, the transaction of epoch epoch: a transaction
// being ended carries its own epoch (v1) or the next one (v2), an ongoing
// one its own; a coordinator past those (a later transaction of a live
// producer, which every epoch bump makes) has finished with it. A later
// write of that producer to the partition carries the later epoch, and
// the partition then refuses a marker of the older one.
func mayBeRunning(state string, cur, epoch int16) bool {
	switch state {
	case "Ongoing":
		return int32(cur) <= int32(epoch)
	case "PrepareCommit", "PrepareAbort", "PrepareEpochFence":
		return int32(cur) <= int32(epoch)+1
	}
	return false
}

// mergeTxnLog appends to an earlier read of a transactional id's records
// the records of a later read that came after it: the records the log
// compacted away in between are kept from the earlier read.
func mergeTxnLog(earlier, later []txnLogRecord) []txnLogRecord {
	if len(earlier) == 0 {
		return later
	}
	out := append([]txnLogRecord(nil), earlier...)
	lastOffset := earlier[len(earlier)-1].offset
	for _, r := range later {
		if r.offset > lastOffset {
			out = append(out, r)
		}
	}
	return out
}

// ended is the outcome of the transaction prepared by prep, once a
// Complete record follows it in after.
func ended(after []txnLogRecord, prep txnLogRecord) (txnOutcome, txnLogRecord) {
	verdict := outcomeCommitted
	if prep.state == kmsg.TransactionStatePrepareAbort {
		verdict = outcomeAborted
	}
	for _, r := range after {
		if r.state == kmsg.TransactionStateCompleteCommit || r.state == kmsg.TransactionStateCompleteAbort {
			return verdict, prep
		}
	}
	return outcomeRunning, prep
}

// txnLogPartition is the partition of __transaction_state that holds a
// transactional id: Kafka's Utils.abs(id.hashCode()) % partitions, with
// Java's String.hashCode over UTF-16 code units.
func txnLogPartition(txnID string, partitions int32) int32 {
	var h int32
	for _, c := range txnID {
		if c >= 0x10000 { // a surrogate pair in UTF-16
			c -= 0x10000
			h = 31*h + int32(0xD800+(c>>10))
			h = 31*h + int32(0xDC00+(c&0x3FF))
			continue
		}
		h = 31*h + int32(c)
	}
	if h == -1<<31 {
		h = 0
	} else if h < 0 {
		h = -h
	}
	return h % partitions
}

// readTxnLog reads every record of one transactional id from the
// coordinator's log, in log order, up to its end when called.
func (w *Worker) readTxnLog(ctx context.Context, txnID string) ([]txnLogRecord, error) {
	td, err := w.adm.ListTopicsWithInternal(ctx, txnLogTopic)
	if err != nil {
		return nil, fmt.Errorf("describing %s: %w", txnLogTopic, err)
	}
	d, ok := td[txnLogTopic]
	if !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
		// No log: no transaction was ever recorded (an Apache cluster
		// before its first transactional producer; kfake, whose
		// coordinator keeps no log). Nothing to judge, nothing to warn.
		return nil, nil
	}
	if d.Err != nil || len(d.Partitions) == 0 {
		return nil, fmt.Errorf("describing %s: %v", txnLogTopic, d.Err)
	}
	p := txnLogPartition(txnID, int32(len(d.Partitions)))
	ends, err := w.adm.ListEndOffsets(ctx, txnLogTopic)
	if err != nil {
		return nil, fmt.Errorf("listing the end of %s: %w", txnLogTopic, err)
	}
	end, ok := ends.Lookup(txnLogTopic, p)
	if !ok || end.Err != nil {
		return nil, fmt.Errorf("listing the end of %s/%d: %v", txnLogTopic, p, end.Err)
	}
	if end.Offset == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(w.clientOpts(kgo.FetchMaxWait(200*time.Millisecond),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{txnLogTopic: {p: kgo.NewOffset().AtStart()}}))...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out []txnLogRecord
	for next := int64(-1); next < end.Offset-1; {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("reading %s/%d: %w", txnLogTopic, p, err)
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return nil, fmt.Errorf("reading %s/%d: %w", txnLogTopic, p, ferr)
		}
		fs.EachRecord(func(r *kgo.Record) {
			next = r.Offset
			var k kmsg.TxnMetadataKey
			if r.Value == nil || k.ReadFrom(r.Key) != nil || k.Version != 0 || k.TransactionalID != txnID {
				return // another id, a tombstone, or another record type
			}
			var v kmsg.TxnMetadataValue
			if v.ReadFrom(r.Value) != nil {
				return
			}
			rec := txnLogRecord{offset: r.Offset, state: v.State, producerID: v.ProducerID, epoch: v.ProducerEpoch,
				txnVersion: v.ClientTransactionVersion, partitions: map[string][]int32{}}
			for _, t := range v.Topics {
				rec.partitions[t.Topic] = append(rec.partitions[t.Topic], t.Partitions...)
			}
			out = append(out, rec)
		})
	}
	return out, nil
}

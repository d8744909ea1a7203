package kafka

import (
	"fmt"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestTxnLogPartition checks the partition of __transaction_state a
// transactional id maps to against Java's own String.hashCode and Kafka's
// Utils.abs, as printed by a Java 17 program (`java H.java`, in the commit
// message): "hello" hashes to 99162322; "polygenelubricants" to
// Integer.MIN_VALUE, which Utils.abs maps to 0; U+1F600 (the UTF-16 pair
// D83D DE00) to 1772899; two ids to negative hashes.
func TestTxnLogPartition(t *testing.T) {
	for _, c := range []struct {
		id    string
		parts int32
		want  int32
	}{
		{"hello", 50, 22},
		{"hello", 1, 0},
		{"polygenelubricants", 50, 0},
		{"\U0001F600", 50, 49},
		{"hellohellohello", 50, 38},                        // -1353814638
		{"crash_testcrashexactlyonce_apache_13-w1", 50, 7}, // -1114502557
		{"loanflow-decisions-worker-1", 50, 41},            // 273191591
		{"caf\u00e9-\u4e16\u754c", 50, 8},                  // 547412258: two- and three-byte UTF-8
	} {
		if got := txnLogPartition(c.id, c.parts); got != c.want {
			t.Errorf("txnLogPartition(%q, %d) = %d, want %d", c.id, c.parts, got, c.want)
		}
	}
}

// TestJudgeTxn checks judgeTxn against sequences of coordinator records
// written out by hand, each with the outcome the transaction it names had.
func TestJudgeTxn(t *testing.T) {
	const pid = 7
	X := map[string][]int32{"log": {3}}
	XY := map[string][]int32{"log": {3}, "out": {0, 1}}
	Y := map[string][]int32{"out": {0}}
	rec := func(s kmsg.TransactionState, epoch int16, parts map[string][]int32) txnLogRecord {
		return txnLogRecord{state: s, producerID: pid, epoch: epoch, partitions: parts}
	}
	v2 := func(r txnLogRecord) txnLogRecord { r.txnVersion = 2; return r }
	const (
		empty   = kmsg.TransactionStateEmpty
		ongoing = kmsg.TransactionStateOngoing
		pc      = kmsg.TransactionStatePrepareCommit
		pa      = kmsg.TransactionStatePrepareAbort
		cc      = kmsg.TransactionStateCompleteCommit
		ca      = kmsg.TransactionStateCompleteAbort
	)
	for _, c := range []struct {
		name  string
		recs  []txnLogRecord
		epoch int16
		want  txnOutcome
	}{
		{"empty log", nil, 5, outcomeUnknown},
		{"transactions v2: committed, its Prepare at the bumped epoch",
			[]txnLogRecord{rec(empty, 4, nil), rec(ongoing, 5, Y), rec(ongoing, 5, XY), rec(pc, 6, XY), rec(cc, 6, nil)}, 5, outcomeCommitted},
		{"transactions v2: aborted",
			[]txnLogRecord{rec(ongoing, 5, XY), rec(pa, 6, XY), rec(ca, 6, nil)}, 5, outcomeAborted},
		{"committed, then later transactions and a restart",
			[]txnLogRecord{rec(ongoing, 5, XY), rec(pc, 6, XY), rec(cc, 6, nil), rec(ongoing, 6, Y), rec(pa, 7, Y), rec(ca, 7, nil), rec(empty, 8, nil)}, 5, outcomeCommitted},
		{"the later of two transactions of one epoch (v1) that listed the partition",
			[]txnLogRecord{rec(ongoing, 5, X), rec(pa, 5, X), rec(ca, 5, nil), rec(ongoing, 5, XY), rec(pc, 5, XY), rec(cc, 5, nil)}, 5, outcomeCommitted},
		{"a later transaction of the same epoch without the partition does not decide it",
			[]txnLogRecord{rec(ongoing, 5, X), rec(pa, 5, X), rec(ca, 5, nil), rec(ongoing, 5, Y), rec(pc, 5, Y), rec(cc, 5, nil)}, 5, outcomeAborted},
		{"prepared, markers still being written",
			[]txnLogRecord{rec(ongoing, 5, XY), rec(pc, 6, XY)}, 5, outcomeRunning},
		{"transactions v1: the coordinator's last record is Ongoing at the epoch (a transaction that may yet write the partition)",
			[]txnLogRecord{rec(ongoing, 5, XY), rec(pc, 5, XY), rec(cc, 5, nil), rec(ongoing, 5, Y)}, 5, outcomeRunning},
		{"a live producer's later transaction (epoch 6) is running: the one of epoch 5 is over",
			[]txnLogRecord{rec(ongoing, 5, XY), rec(pc, 6, XY), rec(cc, 6, nil), rec(ongoing, 6, Y)}, 5, outcomeCommitted},
		{"a live producer's later transaction is being ended (its Prepare at epoch 7)",
			[]txnLogRecord{rec(ongoing, 5, XY), rec(pa, 6, XY), rec(ca, 6, nil), rec(ongoing, 6, Y), rec(pc, 7, Y)}, 5, outcomeAborted},
		{"the epoch's own transaction being ended by a fence (v1 Prepare at the next epoch)",
			[]txnLogRecord{rec(ongoing, 5, XY), rec(pc, 5, XY), rec(cc, 5, nil), rec(ongoing, 5, Y), rec(pa, 6, Y)}, 5, outcomeRunning},
		{"another producer id's transaction running (the id's producer id rotated)",
			[]txnLogRecord{rec(ongoing, 5, XY), rec(pc, 6, XY), rec(cc, 6, nil), {state: ongoing, producerID: pid + 1, epoch: 0, partitions: Y}}, 5, outcomeRunning},
		{"the epoch is known but the partition was never added",
			[]txnLogRecord{rec(empty, 5, nil), rec(ongoing, 5, Y), rec(pc, 6, Y), rec(cc, 6, nil)}, 5, outcomeNotInTxn},
		{"known only from InitProducerId (a write without AddPartitionsToTxn)",
			[]txnLogRecord{rec(cc, 4, nil), rec(empty, 5, nil)}, 5, outcomeNotInTxn},
		{"the epoch is nowhere in the log",
			[]txnLogRecord{rec(ongoing, 9, X), rec(pc, 10, X), rec(cc, 10, nil)}, 5, outcomeUnknown},
		{"compacted (v2): only the Complete record of the next epoch, committed",
			[]txnLogRecord{v2(rec(cc, 6, nil))}, 5, outcomeCommitted},
		{"compacted (v2): only the Complete record of the next epoch, aborted, then a restart",
			[]txnLogRecord{v2(rec(ca, 6, nil)), v2(rec(empty, 7, nil))}, 5, outcomeAborted},
		{"compacted (v2): the Prepare record of the next epoch lists the partition",
			[]txnLogRecord{v2(rec(pc, 6, XY)), v2(rec(cc, 6, nil))}, 5, outcomeCommitted},
		{"compacted (v2): the Prepare record of the next epoch does not list it",
			[]txnLogRecord{v2(rec(pc, 6, Y)), v2(rec(cc, 6, nil))}, 5, outcomeNotInTxn},
		{"compacted (v2): prepared, not complete",
			[]txnLogRecord{v2(rec(pa, 6, XY)), v2(rec(empty, 9, nil))}, 5, outcomeRunning},
		{"compacted (v1): a Complete record of the same epoch does not say which transaction",
			[]txnLogRecord{rec(cc, 5, nil)}, 5, outcomeUnknown},
		{"v2: the end of the previous transaction carries this epoch, and nothing listed the partition since",
			[]txnLogRecord{v2(rec(cc, 5, nil)), v2(rec(empty, 6, nil))}, 5, outcomeNotInTxn},
		{"compacted (v1): a Complete record of the next epoch is not this transaction's end",
			[]txnLogRecord{rec(cc, 6, nil)}, 5, outcomeUnknown},
		{"transactions v1: an Ongoing record of a later transaction of the epoch does not prove the partition's was compacted away",
			// T1 (epoch 5) listed log/3 and committed, its marker there
			// skipped; the cleaner kept only T2's records (T2, epoch 5
			// too, never listed log/3). T1's records on log/3 are
			// committed: an abort marker would drop them.
			[]txnLogRecord{rec(ongoing, 5, Y), rec(pc, 5, Y), rec(cc, 5, nil)}, 5, outcomeUnknown},
		{"another producer id",
			[]txnLogRecord{{state: ongoing, producerID: pid + 1, epoch: 5, partitions: X}, {state: pc, producerID: pid + 1, epoch: 6, partitions: X}, {state: cc, producerID: pid + 1, epoch: 6}}, 5, outcomeUnknown},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got, _ := judgeTxn(c.recs, pid, c.epoch, "log", 3); got != c.want {
				t.Fatalf("judgeTxn = %s, want %s", got, c.want)
			}
		})
	}
}

// TestMergeTxnLog: records an earlier read saw and a later read no longer
// has (compacted away) are kept; the later read's new records follow.
func TestMergeTxnLog(t *testing.T) {
	r := func(off int64) txnLogRecord { return txnLogRecord{offset: off} }
	got := mergeTxnLog([]txnLogRecord{r(3), r(7)}, []txnLogRecord{r(7), r(9), r(12)})
	var offs []int64
	for _, x := range got {
		offs = append(offs, x.offset)
	}
	if fmt.Sprint(offs) != "[3 7 9 12]" {
		t.Fatalf("merged offsets %v, want [3 7 9 12]", offs)
	}
	if got := mergeTxnLog(nil, []txnLogRecord{r(1)}); len(got) != 1 {
		t.Fatalf("merging into nothing: %d records, want 1", len(got))
	}
}

// TestMayBeRunning: which coordinator states may still end (or add a
// partition to) the transaction of epoch 5, by the epochs transactions
// v1 and v2 write (v1: Ongoing and Prepare carry the transaction's epoch,
// a timeout or fence's Prepare the next; v2: Prepare carries the next),
// and at the top of the epoch range, where epoch+1 must not wrap.
func TestMayBeRunning(t *testing.T) {
	for _, c := range []struct {
		state      string
		cur, epoch int16
		want       bool
	}{
		{"Ongoing", 5, 5, true},
		{"Ongoing", 6, 5, false},
		{"PrepareCommit", 5, 5, true},
		{"PrepareAbort", 6, 5, true},
		{"PrepareEpochFence", 6, 5, true},
		{"PrepareCommit", 7, 5, false},
		{"CompleteCommit", 5, 5, false},
		{"Empty", 5, 5, false},
		{"PrepareCommit", 32767, 32766, true},
		{"PrepareCommit", 32767, 32767, true},
		{"Ongoing", 32767, 32767, true},
	} {
		if got := mayBeRunning(c.state, c.cur, c.epoch); got != c.want {
			t.Errorf("mayBeRunning(%s, %d, %d) = %v, want %v", c.state, c.cur, c.epoch, got, c.want)
		}
	}
}

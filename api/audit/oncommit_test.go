package audit_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/loanflow/loanflow/api/audit"
)

// chainLock is the advisory lock audit_append_keyed takes (migration
// 00006): holding it holds the journal inside a batch's statement.
const chainLock = 5496152229725950977

// TestOnCommitToldOfBatchesWithWriteEntries: OnCommit (the API's
// loanflow_api_audit_commit_seconds, what an audited read waits for) is
// told of every batch holding Append's entries, including one that
// chained queued write entries along because a kick arrived meanwhile:
// the rows it was told of add up to the rows audit_log holds, counted by
// PostgreSQL. The batches are made deterministic by holding the chain's
// lock: the journal waits inside entry 0's batch while entries 1 and 2, a
// write entry and a kick queue up; released, it appends 1, 2 and the
// write entry in one batch. Before the fix that batch (3 of the 4 rows)
// was never told.
func TestOnCommitToldOfBatchesWithWriteEntries(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	var mu sync.Mutex
	told, batches := 0, 0
	j := audit.NewJournal(pool, newKeys(t), audit.JournalConfig{MaxBatch: 2, CommitTimeout: time.Minute, PendingInterval: time.Hour, PendingGap: time.Nanosecond,
		OnCommit: func(rows int, _ time.Duration) { mu.Lock(); told += rows; batches++; mu.Unlock() }})
	defer j.Close()
	entry := func(r string) audit.Entry {
		return audit.Entry{Actor: "c", Lender: "l", Action: "credit_profile.read", Resource: "customer/" + r, Purpose: "ACCOUNT_REVIEW", Result: audit.ResultOK}
	}
	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(chainLock)); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3)
	go func() { errs <- j.Append(ctx, entry("0")) }()
	waiting := func() bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	}
	for deadline := time.Now().Add(time.Minute); !waiting(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the journal never waited for the chain's lock")
		}
	}
	go func() { errs <- j.Append(ctx, entry("1")) }()
	go func() { errs <- j.Append(ctx, entry("2")) }()
	for deadline := time.Now().Add(time.Minute); j.Queued() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 entries queued", j.Queued())
		}
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return pend(ctx, tx, audit.Entry{Actor: "w", Lender: "l", Action: "loan.update", Resource: "loan/9", Result: audit.ResultOK})
	}); err != nil {
		t.Fatal(err)
	}
	j.Kick()
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1)", int64(chainLock)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if p := count(t, pool, "audit_pending"); p != 0 {
		t.Fatalf("%d write entries still queued: the scenario did not chain it with the reads", p)
	}
	rows := count(t, pool, "audit_log")
	mu.Lock()
	defer mu.Unlock()
	if rows != 4 || told != rows {
		t.Fatalf("OnCommit was told of %d rows in %d batches; audit_log holds %d (want 4: three reads and the write entry)", told, batches, rows)
	}
}

package audit_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/audit"
)

func pend(ctx context.Context, tx pgx.Tx, entries ...audit.Entry) error {
	expr, args := audit.PendSQL(1, entries...)
	var id int64
	return tx.QueryRow(ctx, "SELECT "+expr, args...).Scan(&id)
}

func count(t *testing.T, pool *pgxpool.Pool, table string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPendingEntriesAreChained: queued entries commit (or roll back) with
// their transaction, stay out of the chain until chained, are chained in
// queue order with the same canonical hash as appended ones, and the
// pending table refuses edits.
func TestPendingEntriesAreChained(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	queued := make([]audit.Entry, len(odd))
	for i, e := range odd {
		e.RequestID = fmt.Sprintf("q%d", i)
		queued[i] = e
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return pend(ctx, tx, queued...) }); err != nil {
		t.Fatal(err)
	}
	_ = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := pend(ctx, tx, audit.Entry{Actor: "rolled-back", Action: "a", Result: "ok"}); err != nil {
			t.Fatal(err)
		}
		return fmt.Errorf("roll back")
	})
	if n, p := count(t, pool, "audit_log"), count(t, pool, "audit_pending"); n != 0 || p != len(odd) {
		t.Fatalf("before chaining: %d chained, %d pending; want 0, %d", n, p, len(odd))
	}
	if _, err := pool.Exec(ctx, "UPDATE audit_pending SET actor = 'x'"); err == nil || !strings.Contains(err.Error(), "only inserted") {
		t.Fatalf("UPDATE of a pending entry: %v", err)
	}
	if _, err := pool.Exec(ctx, "TRUNCATE audit_pending"); err == nil {
		t.Fatal("TRUNCATE of pending entries allowed")
	}
	if n, err := audit.ChainPending(ctx, pool, 2); err != nil || n != 2 {
		t.Fatalf("chaining 2: %d %v", n, err)
	}
	c := audit.NewChainer(pool, audit.ChainerConfig{MaxBatch: 2})
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n, p := count(t, pool, "audit_log"), count(t, pool, "audit_pending"); n != len(odd) || p != 0 {
		t.Fatalf("after chaining: %d chained, %d pending", n, p)
	}
	rep, err := audit.Verify(ctx, pool)
	if err != nil || !rep.OK || rep.Rows != int64(len(odd)) {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	var ids []string
	rows, _ := pool.Query(ctx, "SELECT request_id FROM audit_log ORDER BY seq")
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		ids = append(ids, id)
	}
	if got := strings.Join(ids, ","); got != "q0,q1,q2,q3,q4" {
		t.Fatalf("chain order %s, want the queue order", got)
	}
}

// TestChainerWithAppenders: writers queueing entries, writers appending
// in their own transactions and a running Chainer (kicked, and closed
// while entries may be queued) together leave one intact chain holding
// every committed entry once.
func TestChainerWithAppenders(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	c := audit.NewChainer(pool, audit.ChainerConfig{MaxBatch: 16})
	const writers, each = 8, 40
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				e := audit.Entry{Actor: "w", Lender: "l", Action: "loan.update", Resource: fmt.Sprintf("loan/%d-%d", g, i), Result: "ok"}
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if g%2 == 0 {
						return pend(ctx, tx, e)
					}
					return audit.Append(ctx, tx, e)
				})
				if err != nil {
					t.Error(err)
					return
				}
				c.Kick()
			}
		}(g)
	}
	wg.Wait()
	c.Close() // chains what is left
	if n, p := count(t, pool, "audit_log"), count(t, pool, "audit_pending"); n != writers*each || p != 0 {
		t.Fatalf("%d chained, %d pending; want %d, 0", n, p, writers*each)
	}
	var distinct int
	if err := pool.QueryRow(ctx, "SELECT count(DISTINCT resource) FROM audit_log").Scan(&distinct); err != nil || distinct != writers*each {
		t.Fatalf("%d distinct entries (%v), want %d", distinct, err, writers*each)
	}
	rep, err := audit.Verify(ctx, pool)
	if err != nil || !rep.OK {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

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
	if _, err := pool.Exec(ctx, "SELECT audit_chain_pending(2)"); err == nil || !strings.Contains(err.Error(), "keyed") {
		t.Fatalf("the retired unkeyed chainer: %v", err)
	}
	keys := newKeys(t)
	c := audit.NewJournal(pool, keys, audit.JournalConfig{MaxBatch: 2})
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n, p := count(t, pool, "audit_log"), count(t, pool, "audit_pending"); n != len(odd) || p != 0 {
		t.Fatalf("after chaining: %d chained, %d pending", n, p)
	}
	rep, err := audit.VerifyKeyed(ctx, pool, keys)
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

// TestJournalWithWritersAndReaders: writers queueing entries (PendSQL and
// Append in their transactions), readers appending through the Journal,
// and a second Journal on the same database (another API instance, whose
// batches move the head under the first's cache) together leave one keyed
// chain holding every committed entry once, and audit_append_keyed
// refuses to take queued entries that are not queued as given.
func TestJournalWithWritersAndReaders(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	keys := newKeys(t)
	c := audit.NewJournal(pool, keys, audit.JournalConfig{MaxBatch: 16})
	c2 := audit.NewJournal(pool, keys, audit.JournalConfig{MaxBatch: 16})
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
				c2.Kick()
				r := e
				r.Action, r.Resource = "loan.read", r.Resource+"/read"
				j := c
				if i%3 == 0 {
					j = c2
				}
				if err := j.Append(ctx, r); err != nil {
					t.Error(err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	c.Close() // chains what is left
	c2.Close()
	if n, p := count(t, pool, "audit_log"), count(t, pool, "audit_pending"); n != 2*writers*each || p != 0 {
		t.Fatalf("%d chained, %d pending; want %d, 0", n, p, 2*writers*each)
	}
	var distinct int
	if err := pool.QueryRow(ctx, "SELECT count(DISTINCT resource) FROM audit_log WHERE action <> 'audit.chain_keyed'").Scan(&distinct); err != nil || distinct != 2*writers*each {
		t.Fatalf("%d distinct entries (%v), want %d", distinct, err, 2*writers*each)
	}
	rep, err := audit.VerifyKeyed(ctx, pool, keys)
	if err != nil || !rep.OK {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	// A queued entry can only leave audit_pending chained as queued.
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return pend(ctx, tx, audit.Entry{Actor: "w", Action: "x", Result: "ok"}) }); err != nil {
		t.Fatal(err)
	}
	var id int64
	var head []byte
	if err := pool.QueryRow(ctx, "SELECT id FROM audit_pending").Scan(&id); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, "SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1").Scan(&head); err != nil {
		t.Fatal(err)
	}
	_, err = pool.Exec(ctx, `SELECT audit_append_keyed($1, $2, ARRAY[$3::bigint], ARRAY[now()], '{w}', '{""}', '{other}', '{""}', '{""}', '{ok}', '{""}', '{1}', ARRAY['\x00'::bytea])`,
		rep.Rows+1, head, id)
	if err == nil || !strings.Contains(err.Error(), "no longer queued as given") {
		t.Fatalf("taking a queued entry with other contents: %v", err)
	}
}

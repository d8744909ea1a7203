package audit_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dsn := testenv.NewDatabase(t)
	if _, err := migrations.Up(context.Background(), dsn); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// odd entries exercise the canonical form: empty fields, multi-byte UTF-8,
// separators and digits that a naive concatenation would confuse.
var odd = []audit.Entry{
	{Actor: "", Lender: "", Action: "x", Resource: "", Purpose: "", Result: "ok", RequestID: ""},
	{Actor: "ü-client", Lender: "bänk", Action: "loan.read", Resource: "loan/日本", Purpose: "ACCOUNT_REVIEW", Result: "ok", RequestID: "r1"},
	{Actor: "a|b", Lender: "1", Action: "12", Resource: "3", Purpose: "4", Result: "denied", RequestID: "5"},
	{Actor: "nul\x00", Lender: "bad\xff", Action: "a", Resource: "r\xc3\x28", Result: "ok", RequestID: "\x00"},
	{Actor: strings.Repeat("z", 300), Lender: "l", Action: "a", Resource: "r", Purpose: "", Result: "error", RequestID: "😀",
		At: time.Date(2001, 2, 3, 4, 5, 6, 789123456, time.FixedZone("x", 3600))},
}

// TestJournalKeyedChain: entries queued in write transactions (Append,
// in one and in several statements) and entries appended through the
// Journal from many goroutines all end up in one keyed chain: every row's
// hash is the HMAC, under the index keyset, of the test's own canonical
// form of the stored row (model below), the stored fields are the entries
// (odd ones quoted), and VerifyKeyed accepts it.
func TestJournalKeyedChain(t *testing.T) {
	pool := newPool(t)
	keys := newKeys(t)
	ctx := context.Background()
	for _, e := range odd {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return audit.Append(ctx, tx, e) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return audit.Append(ctx, tx, odd...) }); err != nil {
		t.Fatal(err)
	}
	j := audit.NewJournal(pool, keys, audit.JournalConfig{MaxBatch: 7})
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				e := odd[(g+i)%len(odd)]
				e.RequestID = fmt.Sprintf("g%d-%d", g, i)
				if err := j.Append(ctx, e); err != nil {
					t.Error(err)
				}
			}
		}(g)
	}
	wg.Wait()
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	j.Close()
	rep, err := audit.VerifyKeyed(ctx, pool, keys)
	if err != nil {
		t.Fatal(err)
	}
	want := int64(2*len(odd) + 8*25)
	if !rep.OK || rep.Rows != want || rep.Keyed != want {
		t.Fatalf("verify: %+v, want %d keyed rows all OK", rep, want)
	}
	rows := readRows(t, pool)
	prev := []byte{}
	for _, r := range rows {
		if r.KeyID == nil || !keys.VerifyMAC(audit.ChainDomain, model(prev, r.Seq, r.Entry), *r.KeyID, r.Hash) {
			t.Fatalf("row %d: hash is not the HMAC of the model's canonical row", r.Seq)
		}
		prev = r.Hash
	}
	// The queued entries were chained first, in queue order, stored as
	// PostgreSQL text can hold them.
	if r := rows[3]; r.Actor != `"nul\x00"` || r.Lender != `"bad\xff"` || r.RequestID != `"\x00"` {
		t.Fatalf("row 4 stored %+v", r.Entry)
	}
	if r := rows[4]; !r.At.Equal(odd[4].At.Truncate(time.Microsecond)) || r.Actor != odd[4].Actor {
		t.Fatalf("row 5 stored %+v, want %+v", r.Entry, odd[4])
	}
}

// TestAppendRolledBackLeavesNoRow: the rows belong to the caller's
// transaction, and the chain stays gapless after a rollback.
func TestAppendRolledBackLeavesNoRow(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.Append(ctx, tx, odd[1]); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return audit.Append(ctx, tx, odd[2]) }); err != nil {
		t.Fatal(err)
	}
	keys := newKeys(t)
	j := audit.NewJournal(pool, keys, audit.JournalConfig{})
	defer j.Close()
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyKeyed(ctx, pool, keys)
	if err != nil || !rep.OK || rep.Rows != 1 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// TestVerifyNamesEditedRow: editing a row (triggers disabled by the
// table owner) is reported at that row; TRUNCATE is refused.
func TestVerifyNamesEditedRow(t *testing.T) {
	pool := newPool(t)
	ctx := context.Background()
	entries := make([]audit.Entry, 10)
	for i := range entries {
		entries[i] = audit.Entry{Actor: "c", Lender: "l", Action: "loan.read", Resource: fmt.Sprintf("loan/%d", i), Result: "ok"}
	}
	keys := newKeys(t)
	j := audit.NewJournal(pool, keys, audit.JournalConfig{})
	defer j.Close()
	for _, e := range entries {
		if err := j.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, "TRUNCATE audit_log"); err == nil {
		t.Fatal("TRUNCATE audit_log succeeded")
	}
	if _, err := pool.Exec(ctx, "DELETE FROM audit_log WHERE seq = 3"); err == nil {
		t.Fatal("DELETE succeeded")
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update;
		UPDATE audit_log SET purpose = 'COLLECTION' WHERE seq = 6;
		ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update`); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyKeyed(ctx, pool, keys)
	if err != nil || rep.OK || rep.BrokenSeq != 6 {
		t.Fatalf("verify after editing row 6: %+v %v", rep, err)
	}
}

// BenchmarkJournalAppend measures read-audit entries through the
// group-committing Journal: one caller at a time (the latency of one group
// commit) and 64 concurrent callers (throughput with batching).
func BenchmarkJournalAppend(b *testing.B) {
	pool := newPool(b)
	w := audit.NewJournal(pool, newKeys(b), audit.JournalConfig{})
	defer w.Close()
	e := audit.Entry{Actor: "bench-client", Lender: "bench", Action: "credit_profile.read", Resource: "customer/c-1",
		Purpose: "ACCOUNT_REVIEW", Result: "ok", RequestID: "0123456789abcdef01234567"}
	for _, par := range []int{1, 64} {
		b.Run(fmt.Sprintf("callers=%d", par), func(b *testing.B) {
			var wg sync.WaitGroup
			next := make(chan struct{}, b.N)
			for i := 0; i < b.N; i++ {
				next <- struct{}{}
			}
			close(next)
			b.ResetTimer()
			for g := 0; g < par; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range next {
						if err := w.Append(context.Background(), e); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

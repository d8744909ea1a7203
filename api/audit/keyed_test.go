package audit_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
)

// newKeys creates a local KEK and keysets (the machinery the API uses) and
// opens them.
func newKeys(t testing.TB) *pii.Keyring {
	t.Helper()
	dir := t.TempDir()
	cfg := pii.Config{KEKURI: pii.LocalKMSPrefix + filepath.Join(dir, "kek.json"),
		DataKeysetPath: filepath.Join(dir, "data.json"), IndexKeysetPath: filepath.Join(dir, "index.json")}
	ctx := context.Background()
	if err := pii.Init(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	k, err := pii.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// model is the test's own canonical row (docs: audit package): prev, then
// each field as a 4-byte big-endian length and its bytes.
func model(prev []byte, seq int64, e audit.Entry) []byte {
	out := append([]byte{}, prev...)
	for _, f := range []string{strconv.FormatInt(seq, 10), strconv.FormatInt(e.At.UnixMicro(), 10),
		e.Actor, e.Lender, e.Action, e.Resource, e.Purpose, e.Result, e.RequestID} {
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}

func sha(prev []byte, seq int64, e audit.Entry) []byte {
	s := sha256.Sum256(model(prev, seq, e))
	return s[:]
}

func readRows(t testing.TB, pool *pgxpool.Pool) []audit.Row {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT seq, at, actor, lender_id, action, resource, purpose, result, request_id, prev_hash, hash, key_id
		FROM audit_log ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []audit.Row
	for rows.Next() {
		var r audit.Row
		var kid *int64
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Lender, &r.Action, &r.Resource, &r.Purpose, &r.Result, &r.RequestID, &r.PrevHash, &r.Hash, &kid); err != nil {
			t.Fatal(err)
		}
		if kid != nil {
			k := uint32(*kid)
			r.KeyID = &k
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// asOwner runs sql with audit_log's triggers disabled, as the database's
// owner can.
func asOwner(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, sql, args...); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// recompute rewrites rows from..to with hashes from hash (nil key id:
// the unkeyed form), as an owner without the key would to hide an edit.
func recompute(t testing.TB, pool *pgxpool.Pool, from, to int64, keyed bool, hash func(prev []byte, r audit.Row) []byte) {
	t.Helper()
	rows := readRows(t, pool)
	prev := []byte{}
	for _, r := range rows {
		if r.Seq >= from && r.Seq <= to {
			h := hash(prev, r)
			if keyed {
				asOwner(t, pool, "UPDATE audit_log SET prev_hash = $2, hash = $3 WHERE seq = $1", r.Seq, prev, h)
			} else {
				asOwner(t, pool, "UPDATE audit_log SET prev_hash = $2, hash = $3, key_id = NULL WHERE seq = $1", r.Seq, prev, h)
			}
			r.Hash = h
		}
		prev = r.Hash
	}
}

func journalRows(t testing.TB, pool *pgxpool.Pool, keys audit.Keys, n int) {
	t.Helper()
	j := audit.NewJournal(pool, keys, audit.JournalConfig{})
	defer j.Close()
	for i := 0; i < n; i++ {
		if err := j.Append(context.Background(), audit.Entry{Actor: "c", Lender: "l", Action: "credit_profile.read",
			Resource: fmt.Sprintf("customer/%d", i), Purpose: "ACCOUNT_REVIEW", Result: audit.ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestKeyedChainDetectsRecomputedRewrite (issue 9, High 4): whoever owns
// the database rewrites row 3 and recomputes the chain after it: as an
// unkeyed SHA-256 chain (key ids dropped), as SHA-256 under the key ids,
// and as HMACs under a key of their own. The keyed verification names row
// 3 (or the missing keyed rows) every time; the untouched chain verifies
// (the control), and the unkeyed Verify, which cannot see a recomputed
// chain, passes the second rewrite (what the key adds).
func TestKeyedChainDetectsRecomputedRewrite(t *testing.T) {
	ctx := context.Background()
	keys := newKeys(t)
	other := newKeys(t)
	cases := []struct {
		name   string
		from   int64
		keyed  bool
		hash   func(prev []byte, r audit.Row) []byte
		broken int64
		reason string
	}{
		{"unkeyed SHA-256 chain", 1, false, func(prev []byte, r audit.Row) []byte { return sha(prev, r.Seq, r.Entry) }, 10, "no keyed row"},
		{"SHA-256 under the key ids", 3, true, func(prev []byte, r audit.Row) []byte { return sha(prev, r.Seq, r.Entry) }, 3, "MAC under key"},
		{"HMAC under another key", 3, true, func(prev []byte, r audit.Row) []byte {
			h, _, err := other.MAC(audit.ChainDomain, model(prev, r.Seq, r.Entry))
			if err != nil {
				t.Fatal(err)
			}
			return h
		}, 3, "MAC under key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pool := newPool(t)
			journalRows(t, pool, keys, 10)
			if rep, err := audit.VerifyKeyed(ctx, pool, keys); err != nil || !rep.OK || rep.Keyed != 10 {
				t.Fatalf("untouched chain: %+v %v", rep, err)
			}
			asOwner(t, pool, "UPDATE audit_log SET lender_id = 'someone-else' WHERE seq = 3")
			recompute(t, pool, c.from, 10, c.keyed, c.hash)
			if c.keyed {
				// The linkage is consistent again: only the key can tell.
				if rep, err := audit.Verify(ctx, pool); err != nil || !rep.OK {
					t.Fatalf("unkeyed Verify of the recomputed chain: %+v %v", rep, err)
				}
			}
			rep, err := audit.VerifyKeyed(ctx, pool, keys)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK || rep.BrokenSeq != c.broken || !strings.Contains(rep.Reason, c.reason) {
				t.Fatalf("keyed verify after the rewrite: %+v, want broken at %d (%s)", rep, c.broken, c.reason)
			}
		})
	}
	t.Run("keyed tail downgraded", func(t *testing.T) {
		pool := newPool(t)
		journalRows(t, pool, keys, 10)
		asOwner(t, pool, "UPDATE audit_log SET resource = 'customer/x' WHERE seq = 7")
		recompute(t, pool, 7, 10, false, func(prev []byte, r audit.Row) []byte { return sha(prev, r.Seq, r.Entry) })
		rep, err := audit.VerifyKeyed(ctx, pool, keys)
		if err != nil || rep.OK || rep.BrokenSeq != 7 || !strings.Contains(rep.Reason, "unkeyed row after") {
			t.Fatalf("keyed verify after downgrading rows 7-10: %+v %v", rep, err)
		}
	})
}

// TestKeyedCutOverFromUnkeyedChain: a database whose chain was written
// before migration 00006 (SHA-256 in PostgreSQL) is migrated; the journal's
// first batch starts with a keyed cut-over row naming the last unkeyed row,
// and the chain verifies with the key. Rewriting an unkeyed row and
// recomputing the unkeyed prefix (and the cut-over row's prev_hash) is
// then found at the cut-over row, whose MAC covers the prefix's hash.
func TestKeyedCutOverFromUnkeyedChain(t *testing.T) {
	ctx := context.Background()
	dsn := testenv.NewDatabase(t)
	if _, err := migrations.UpTo(ctx, dsn, 5); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for i := 0; i < 4; i++ { // the pre-00006 append: hashed in PostgreSQL
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return audit.Append(ctx, tx, audit.Entry{Actor: "old", Lender: "l", Action: "loan.read", Resource: fmt.Sprintf("loan/%d", i), Result: "ok"})
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // plans of the replaced functions
	keys := newKeys(t)
	if rep, err := audit.VerifyKeyed(ctx, pool, keys); err != nil || rep.OK || !strings.Contains(rep.Reason, "no keyed row") {
		t.Fatalf("before the cut-over: %+v %v", rep, err)
	}
	journalRows(t, pool, keys, 3)
	rows := readRows(t, pool)
	if len(rows) != 8 || rows[3].KeyID != nil || rows[4].KeyID == nil || rows[4].Action != "audit.chain_keyed" || rows[4].Resource != "audit_log/4" {
		t.Fatalf("after the cut-over: %d rows, row 5 %+v", len(rows), rows[min(4, len(rows)-1)])
	}
	for _, r := range rows[:4] {
		if want := sha(r.PrevHash, r.Seq, r.Entry); string(want) != string(r.Hash) {
			t.Fatalf("unkeyed row %d is not SHA-256 of the model", r.Seq)
		}
	}
	if rep, err := audit.VerifyKeyed(ctx, pool, keys); err != nil || !rep.OK || rep.Keyed != 4 {
		t.Fatalf("after the cut-over: %+v %v", rep, err)
	}
	asOwner(t, pool, "UPDATE audit_log SET action = 'nothing' WHERE seq = 2")
	recompute(t, pool, 1, 4, false, func(prev []byte, r audit.Row) []byte { return sha(prev, r.Seq, r.Entry) })
	rows = readRows(t, pool)
	asOwner(t, pool, "UPDATE audit_log SET prev_hash = $1 WHERE seq = 5", rows[3].Hash)
	if rep, err := audit.Verify(ctx, pool); err != nil || !rep.OK {
		t.Fatalf("unkeyed Verify of the recomputed prefix: %+v %v", rep, err)
	}
	rep, err := audit.VerifyKeyed(ctx, pool, keys)
	if err != nil || rep.OK || rep.BrokenSeq != 5 {
		t.Fatalf("keyed verify after rewriting the unkeyed prefix: %+v %v", rep, err)
	}
}

// TestJournalNeverAcknowledgesWithoutADurableRow: concurrent callers append
// through the Journal to a durable PostgreSQL (fsync on) that is SIGKILLed
// in the middle. After it restarts, every entry whose Append returned nil
// is in the chain (the checker, shown able to fail by deleting an
// acknowledged row), calls after the kill failed, and the chain verifies
// with the key.
func TestJournalNeverAcknowledgesWithoutADurableRow(t *testing.T) {
	ctx := context.Background()
	dir := testenv.Dir(t, "pg")
	pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{Dir: dir, Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { pg.Stop() }()
	dsn, err := pg.CreateDatabase(ctx, "journal")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	keys := newKeys(t)
	j := audit.NewJournal(pool, keys, audit.JournalConfig{})
	const callers = 16
	var (
		mu     sync.Mutex
		acked  []string
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	killAt := make(chan struct{}) // closed before the kill
	var once sync.Once
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				err := j.Append(ctx, audit.Entry{Actor: "c", Lender: "l", Action: "credit_profile.read", Resource: "customer/1", Result: "ok", RequestID: id})
				if err != nil {
					// Until the kill, an error is a test failure;
					// after it, each caller stops at its first error.
					select {
					case <-killAt:
					default:
						t.Errorf("append before the kill: %v", err)
					}
					failed.Add(1)
					return
				}
				mu.Lock()
				acked = append(acked, id)
				if len(acked) == 2000 {
					once.Do(func() { close(killAt); go pg.Kill() })
				}
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	j.Close()
	pool.Close()
	if failed.Load() != callers {
		t.Fatalf("%d of %d callers saw an error after the kill", failed.Load(), callers)
	}
	if pg, err = localsvc.StartPostgres(ctx, localsvc.PostgresOptions{Dir: dir, Port: pg.Port(), Durable: true}); err != nil {
		t.Fatal(err)
	}
	pool, err = pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	missing := func() []string {
		have := map[string]bool{}
		for _, r := range readRows(t, pool) {
			have[r.RequestID] = true
		}
		var out []string
		for _, id := range acked {
			if !have[id] {
				out = append(out, id)
			}
		}
		return out
	}
	if m := missing(); len(m) > 0 {
		t.Fatalf("%d acknowledged entries have no row after the crash, e.g. %v", len(m), m[:min(5, len(m))])
	}
	if rep, err := audit.VerifyKeyed(ctx, pool, keys); err != nil || !rep.OK || rep.Rows < int64(len(acked)) {
		t.Fatalf("chain after the crash: %+v %v (%d acknowledged)", rep, err, len(acked))
	}
	t.Logf("%d acknowledged before the kill, all durable", len(acked))
	// Negative control: the checker finds an acknowledged row that is gone.
	asOwner(t, pool, "DELETE FROM audit_log WHERE request_id = $1", acked[len(acked)/2])
	if m := missing(); len(m) != 1 || m[0] != acked[len(acked)/2] {
		t.Fatalf("control: deleting %s, the checker found %v", acked[len(acked)/2], m)
	}
}

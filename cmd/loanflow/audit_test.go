package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/internal/testenv"
)

// TestAuditVerifyCommand: `loanflow audit verify` with the keys reports an
// intact keyed chain; after the database's owner rewrites row 4 and
// recomputes the chain's hashes without the key, it names row 4 and exits
// with an error, where `--unkeyed` (linkage only, the control) still
// passes.
func TestAuditVerifyCommand(t *testing.T) {
	ctx := context.Background()
	dsn := testenv.NewDatabase(t)
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	keysDir := t.TempDir()
	var kf keyFlags
	kf.dir = keysDir
	if err := pii.Init(ctx, kf.config()); err != nil {
		t.Fatal(err)
	}
	kr, err := pii.Open(ctx, kf.config())
	if err != nil {
		t.Fatal(err)
	}
	j := audit.NewJournal(pool, kr, audit.JournalConfig{})
	for i := 0; i < 5; i++ {
		if err := j.Append(ctx, audit.Entry{Actor: "c", Lender: "l", Action: "loan.read", Resource: fmt.Sprintf("loan/%d", i), Result: audit.ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	run := func(extra ...string) (string, error) {
		var out bytes.Buffer
		root := newRootCmd()
		root.SetOut(&out)
		root.SetArgs(append([]string{"audit", "verify", "--database-url", dsn, "--keys-dir", keysDir}, extra...))
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}
	if out, err := run(); err != nil || !strings.Contains(out, "intact: 5 rows (5 keyed)") {
		t.Fatalf("intact chain: %q %v", out, err)
	}
	// The owner's rewrite: row 4 edited, hashes from row 4 on recomputed
	// (SHA-256; the owner has no key).
	if _, err := pool.Exec(ctx, `ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update;
		UPDATE audit_log SET lender_id = 'other' WHERE seq = 4;
		ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update`); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, "SELECT seq, at, actor, lender_id, action, resource, purpose, result, request_id, hash FROM audit_log ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	var all []audit.Row
	for rows.Next() {
		var r audit.Row
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Lender, &r.Action, &r.Resource, &r.Purpose, &r.Result, &r.RequestID, &r.Hash); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	prev := all[2].Hash
	for _, r := range all[3:] {
		h := audit.ComputeHash(prev, r.Seq, r.Entry)
		if _, err := pool.Exec(ctx, `ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update;
			UPDATE audit_log SET prev_hash = '\x`+hex.EncodeToString(prev)+`', hash = '\x`+hex.EncodeToString(h)+`' WHERE seq = `+fmt.Sprint(r.Seq)+`;
			ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update`); err != nil {
			t.Fatal(err)
		}
		prev = h
	}
	if out, err := run("--unkeyed"); err != nil || !strings.Contains(out, "NOT checked") {
		t.Fatalf("control: the linkage alone passes a recomputed chain: %q %v", out, err)
	}
	if _, err := run(); err == nil || !strings.Contains(err.Error(), "seq=4") {
		t.Fatalf("rewritten row 4: %v", err)
	}
}

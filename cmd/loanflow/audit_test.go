package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/internal/testenv"
)

// TestAuditVerifyCommand: `loanflow audit verify` reports an intact chain,
// and after a row is edited names that row and exits with an error.
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
	entries := make([]audit.Entry, 5)
	for i := range entries {
		entries[i] = audit.Entry{Actor: "c", Lender: "l", Action: "loan.read", Resource: fmt.Sprintf("loan/%d", i), Result: audit.ResultOK}
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return audit.Append(ctx, tx, entries...) }); err != nil {
		t.Fatal(err)
	}
	run := func() (string, error) {
		var out bytes.Buffer
		root := newRootCmd()
		root.SetOut(&out)
		root.SetArgs([]string{"audit", "verify", "--database-url", dsn})
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}
	if out, err := run(); err != nil || !strings.Contains(out, "intact: 5 rows") {
		t.Fatalf("intact chain: %q %v", out, err)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update;
		UPDATE audit_log SET lender_id = 'other' WHERE seq = 4;
		ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update`); err != nil {
		t.Fatal(err)
	}
	if _, err := run(); err == nil || !strings.Contains(err.Error(), "seq=4") {
		t.Fatalf("edited row 4: %v", err)
	}
}

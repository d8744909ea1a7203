package main

import (
	"bytes"
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/loanflow/loanflow/internal/testenv"
)

// TestDBMigrateCreatesTheAPIRole: `loanflow db migrate --api-role` (what
// docker-compose's migrate service runs) migrates as the owner and creates
// a login role that can use the API's tables but cannot disable the audit
// triggers or edit audit rows; the owner can (the control). Naming the
// owner as the API role is refused.
func TestDBMigrateCreatesTheAPIRole(t *testing.T) {
	ctx := context.Background()
	dsn := testenv.NewDatabase(t)
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		root := newRootCmd()
		root.SetOut(&out)
		root.SetArgs(append([]string{"db", "migrate", "--database-url", dsn}, args...))
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}
	role := "lf_app_" + strings.ToLower(testenv.Name(t, "r")[len(testenv.Name(t, "r"))-6:])
	role = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			return r
		}
		return '_'
	}, role)
	for i := 0; i < 2; i++ { // idempotent
		if out, err := run("--api-role", role); err != nil || !strings.Contains(out, "API role "+role+" ready") {
			t.Fatalf("db migrate --api-role (run %d): %q %v", i+1, out, err)
		}
	}
	u, _ := url.Parse(dsn)
	owner := u.User.Username()
	if _, err := run("--api-role", owner); err == nil || !strings.Contains(err.Error(), "owner") {
		t.Fatalf("the owner as the API role: %v", err)
	}
	u.User = url.User(role)
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM loans").Scan(&n); err != nil {
		t.Fatalf("the API role reads loans: %v", err)
	}
	for _, sql := range []string{"ALTER TABLE audit_log DISABLE TRIGGER USER", "UPDATE audit_log SET resource = 'x'", "DELETE FROM audit_pending"} {
		if _, err := conn.Exec(ctx, sql); err == nil {
			t.Errorf("the API role could: %s", sql)
		}
	}
	oc, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close(ctx)
	if _, err := oc.Exec(ctx, "ALTER TABLE audit_log DISABLE TRIGGER USER; ALTER TABLE audit_log ENABLE TRIGGER USER"); err != nil {
		t.Fatalf("control: the owner disables the triggers: %v", err)
	}
}

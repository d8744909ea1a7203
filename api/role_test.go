package api

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/loanflow/loanflow/api/migrations"
)

var roleSerial atomic.Int64

// asAPIRole migrates the database as its owner, creates a login role in
// loanflow_api and makes the server connect with it.
func asAPIRole(t *testing.T, roleDSN *string) envOpt {
	return func(c *Config) {
		ctx := context.Background()
		if _, err := migrations.Up(ctx, c.DatabaseURL); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, c.DatabaseURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		role := fmt.Sprintf("api_login_%d_%d", roleSerial.Add(1), conn.PgConn().PID())
		if _, err := conn.Exec(ctx, "CREATE ROLE "+role+" LOGIN IN ROLE loanflow_api"); err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(c.DatabaseURL)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.User(role)
		c.MigrationsDatabaseURL, c.DatabaseURL = c.DatabaseURL, u.String()
		*roleDSN = c.DatabaseURL
	}
}

// TestAPIRoleCannotTamperWithAudit (issue 9, High 4, least privilege):
// the whole API works as a login role of loanflow_api (customers, loans,
// a patch whose audit entry is queued and chained, profile reads,
// applications, anchors), and that role cannot disable the audit
// triggers, change or delete audit rows, delete queued entries or insert
// rows of its own. The control: the owner can disable the triggers.
func TestAPIRoleCannotTamperWithAudit(t *testing.T) {
	var roleDSN string
	e := newEnv(t, asAPIRole(t, &roleDSN))
	tok := e.lender("bank-role")
	e.customer("c-role", "Role Person", "111-22-7777", "bank-role")
	l, r := e.createLoan(tok, "role-1", "c-role", "100.00")
	if r.status != 201 {
		t.Fatalf("loan: %d %s", r.status, r.body)
	}
	if r := e.do("PATCH", "/v1/loans/"+l.LoanID, tok, map[string]string{"balance": "50.00"}, "If-Match", `"1"`); r.status != 200 {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	if _, r := e.profileAt(tok, "c-role", "ACCOUNT_REVIEW", true); r.status != 200 {
		t.Fatalf("profile: %d %s", r.status, r.body)
	}
	if r := e.apply(tok, "app-role", "c-role", "111-22-7777", "USD"); r.status != 202 {
		t.Fatalf("application: %d %s", r.status, r.body)
	}
	ctx := context.Background()
	if err := e.srv.FlushAudit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.AnchorAudit(ctx); err != nil {
		t.Fatal(err)
	}
	var pending, updates int
	_ = e.srv.Pool().QueryRow(ctx, "SELECT (SELECT count(*) FROM audit_pending), (SELECT count(*) FROM audit_log WHERE action = 'loan.update')").Scan(&pending, &updates)
	if pending != 0 || updates != 1 {
		t.Fatalf("after the flush: %d pending, %d loan.update rows", pending, updates)
	}

	conn, err := pgx.Connect(ctx, roleDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{
		"ALTER TABLE audit_log DISABLE TRIGGER USER",
		"ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update",
		"ALTER TABLE audit_pending DISABLE TRIGGER USER",
		"DROP TRIGGER audit_log_no_update ON audit_log",
		"UPDATE audit_log SET resource = 'x' WHERE seq = 1",
		"DELETE FROM audit_log WHERE seq = 1",
		"TRUNCATE audit_log",
		"DELETE FROM audit_pending",
		"INSERT INTO audit_log (seq, at, actor, lender_id, action, resource, purpose, result, request_id, prev_hash, hash) VALUES (1000000, now(), 'a', 'l', 'x', 'r', '', 'ok', 'q', '', '')",
		"CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
	} {
		_, err := conn.Exec(ctx, sql)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || (pe.Code != "42501" && pe.Code != "P0001") {
			t.Errorf("as the API role, %q: %v (want permission denied)", sql, err)
		}
	}
	// Control: the owner can.
	owner, err := pgx.Connect(ctx, e.cfg.MigrationsDatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	if _, err := owner.Exec(ctx, "ALTER TABLE audit_log DISABLE TRIGGER USER; ALTER TABLE audit_log ENABLE TRIGGER USER"); err != nil {
		t.Fatalf("the owner disabling the triggers (control): %v", err)
	}
}

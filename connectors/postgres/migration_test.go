package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/schemas"
)

// TestAPIMigrationTables runs the reader on the API's real schema (its
// goose migrations) with the local stack's settings: every table it
// publishes streams, and customer_360 follows customers, credit_profiles
// and loans.
func TestAPIMigrationTables(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := migrations.Up(ctx, e.dsn); err != nil {
		t.Fatal(err)
	}
	c := e.conn()
	cfg := e.cfg
	cfg.EnsureReplicaIdentityFull = true
	cfg.Tables = []TableConfig{{Table: "customers"}, {Table: "credit_profiles"}, {Table: "loans"}, {Table: "audit_log"}}
	view := Customer360View()
	view.Topic = cfg.TopicPrefix + "_customer_360"
	cfg.Views = []ViewConfig{view}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	for _, sql := range []string{
		"INSERT INTO lenders (lender_id, name) VALUES ('l1', 'Lender')",
		`INSERT INTO customers (customer_id, name_ct, ssn_ct, ssn_index, ssn_index_key_version, credit_limit, risk_tier)
			VALUES ('c1', '\x01', '\x02', '\x03', 1, 10000, 'LOW')`,
		`INSERT INTO credit_profiles (customer_id, current_score, score_history) VALUES ('c1', 720, '[{"s": 700}]')`,
		`INSERT INTO loans (loan_id, application_id, customer_id, lender_id, amount, balance, currency, term_months, status)
			VALUES ('loan1', 'app1', 'c1', 'l1', 2500.00, 2500.00, 'USD', 12, 'ACTIVE')`,
		"UPDATE customers SET current_balance = 2500.00, version = version + 1 WHERE customer_id = 'c1'",
		"UPDATE loans SET days_past_due = 3 WHERE loan_id = 'loan1'",
	} {
		e.exec(c, sql)
	}
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	for _, table := range []string{"customers", "credit_profiles", "loans"} {
		n := 0
		for _, r := range e.readAll(cfg.TopicPrefix + ".public." + table) {
			if !r.heartbeat() && r.value != nil {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no change records for %s", table)
		}
	}
	scl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{e.regURL}})
	if err != nil {
		t.Fatal(err)
	}
	serde, err := schemas.NewWriterSchemaDecoder[schemas.Customer360](scl, view.Topic+"-value")
	if err != nil {
		t.Fatal(err)
	}
	var last *schemas.Customer360
	for _, r := range e.readAll(view.Topic) {
		if r.heartbeat() || r.rec.Value == nil {
			continue
		}
		row, err := serde.Decode(r.rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		last = &row
	}
	if last == nil || last.CustomerID != "c1" || last.Score != 720 || last.CurrentBalance.String() != "2500.00" || !last.Delinquent || last.Version != 2 {
		t.Fatalf("customer_360 row: %+v", last)
	}
}

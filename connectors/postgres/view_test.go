package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/avro"

	"github.com/loanflow/loanflow/schemas"
)

// TestCustomer360View: changes to customers, credit_profiles and loans
// keep the compacted customer_360 topic equal to the joined current rows,
// in the Customer360 schema; a deleted customer gets a tombstone.
func TestCustomer360View(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	for _, sql := range []string{
		`CREATE TABLE customers (customer_id text PRIMARY KEY, credit_limit numeric(18,2) NOT NULL,
			current_balance numeric(18,2) NOT NULL DEFAULT 0, risk_tier text NOT NULL, status text NOT NULL DEFAULT 'ACTIVE',
			version bigint NOT NULL DEFAULT 1, updated_at timestamptz NOT NULL DEFAULT now())`,
		`CREATE TABLE credit_profiles (customer_id text PRIMARY KEY REFERENCES customers, current_score int NOT NULL,
			updated_at timestamptz NOT NULL DEFAULT now())`,
		`CREATE TABLE loans (loan_id text PRIMARY KEY, customer_id text NOT NULL REFERENCES customers, days_past_due int NOT NULL DEFAULT 0)`,
		"ALTER TABLE customers REPLICA IDENTITY FULL", "ALTER TABLE credit_profiles REPLICA IDENTITY FULL", "ALTER TABLE loans REPLICA IDENTITY FULL",
		"INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ('c1', 5000, 'LOW')",
		"INSERT INTO credit_profiles VALUES ('c1', 700)",
	} {
		e.exec(c, sql)
	}
	cfg := e.cfg
	topic := cfg.TopicPrefix + "_customer_360"
	view := Customer360View()
	view.Topic = topic
	cfg.Views = []ViewConfig{view}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ('c2', 900.50, 'HIGH')")
	e.exec(c, "INSERT INTO credit_profiles VALUES ('c2', 580)")
	e.exec(c, "UPDATE customers SET current_balance = 1200.25, version = version + 1 WHERE customer_id = 'c1'")
	e.exec(c, "INSERT INTO loans VALUES ('l1', 'c1', 31)")
	e.exec(c, "INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ('c3', 1, 'LOW')")
	e.exec(c, "INSERT INTO credit_profiles VALUES ('c3', 600)")
	e.exec(c, "DELETE FROM credit_profiles WHERE customer_id = 'c3'")
	e.exec(c, "DELETE FROM customers WHERE customer_id = 'c3'")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	scl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{e.regURL}})
	if err != nil {
		t.Fatal(err)
	}
	serde, err := schemas.NewWriterSchemaDecoder[schemas.Customer360](scl, topic+"-value")
	if err != nil {
		t.Fatal(err)
	}
	last := map[string]*schemas.Customer360{}
	for _, r := range e.readAll(topic) {
		if r.heartbeat() {
			continue
		}
		k, _ := r.rec.Key, 0
		var key string
		if _, err := avro.MustParse(`"string"`).Decode(k[5:], &key); err != nil {
			t.Fatal(err)
		}
		if r.value == nil {
			last[key] = nil
			continue
		}
		row, err := serde.Decode(r.rec.Value)
		if err != nil {
			t.Fatalf("decoding Customer360: %v", err)
		}
		last[key] = &row
	}
	c1, c2 := last["c1"], last["c2"]
	if c1 == nil || c2 == nil {
		t.Fatalf("missing rows: %v", last)
	}
	if c1.CurrentBalance.String() != "1200.25" || !c1.Delinquent || c1.Version != 2 || c1.Score != 700 || c1.SourceLSN == nil {
		t.Errorf("c1 = %+v", *c1)
	}
	if c2.CreditLimit.String() != "900.50" || c2.Score != 580 || c2.RiskTier != "HIGH" || c2.Delinquent {
		t.Errorf("c2 = %+v", *c2)
	}
	if v, ok := last["c3"]; !ok || v != nil {
		t.Errorf("c3: want a tombstone last, got %v (present %v)", v, ok)
	}
	_ = ctx
}

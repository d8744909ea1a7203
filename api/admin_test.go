package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/loanflow/loanflow/schemas"
)

// TestCustomerRiskTier: POST /v1/customers stores every risk tier the
// decisions job knows and refuses any other with a 422 problem that names
// the allowed tiers, storing nothing.
func TestCustomerRiskTier(t *testing.T) {
	e := newEnv(t)
	body := func(id, tier string) NewCustomer {
		return NewCustomer{CustomerID: id, Name: "Risk Person", SSN: "555-12-3456", CreditLimit: "1000.00", RiskTier: tier, Score: 700}
	}
	for i, tier := range schemas.RiskTiers {
		id := fmt.Sprintf("c-tier-%d", i)
		if r := e.do("POST", "/v1/customers", e.admin, body(id, tier)); r.status != 201 {
			t.Fatalf("tier %s: %d %s", tier, r.status, r.body)
		}
		var got string
		if err := e.srv.Pool().QueryRow(context.Background(), "SELECT risk_tier FROM customers WHERE customer_id = $1", id).Scan(&got); err != nil || got != tier {
			t.Fatalf("tier %s stored as %q (%v)", tier, got, err)
		}
	}
	const want = "risk_tier must be LOW, MEDIUM, HIGH or VERY_HIGH"
	for i, tier := range []string{"", "A", "B", "low", "Very_High", "VERY HIGH", " HIGH", "HIGH ", "UNKNOWN", "\x00", strings.Repeat("H", 100)} {
		id := fmt.Sprintf("c-badtier-%d", i)
		r := e.do("POST", "/v1/customers", e.admin, body(id, tier))
		var p struct {
			Status int    `json:"status"`
			Detail string `json:"detail"`
		}
		if r.status != 422 || r.header.Get("Content-Type") != "application/problem+json" || json.Unmarshal(r.body, &p) != nil ||
			p.Status != 422 || !strings.Contains(p.Detail, want) {
			t.Errorf("tier %q: %d %s %s", tier, r.status, r.header.Get("Content-Type"), r.body)
		}
		var n int
		if err := e.srv.Pool().QueryRow(context.Background(), "SELECT count(*) FROM customers WHERE customer_id = $1", id).Scan(&n); err != nil || n != 0 {
			t.Errorf("tier %q: %d rows stored (%v)", tier, n, err)
		}
	}
	// The JSON type is checked before the value: a number is a 400.
	r := e.do("POST", "/v1/customers", e.admin, `{"customer_id":"c-num","name":"N","ssn":"555-12-3456","credit_limit":"1.00","risk_tier":2,"score":700}`)
	if r.status != 400 {
		t.Errorf("numeric risk_tier: %d %s", r.status, r.body)
	}
}

// TestLoanStatusNames: the statuses the API accepts and can reach are
// exactly schemas.LoanStatuses (the names the portfolio job aggregates on),
// and the final ones (no transition out) are those the portfolio stops
// counting.
func TestLoanStatusNames(t *testing.T) {
	reachable := map[string]bool{StatusActive: true} // a new loan is ACTIVE
	for from, tos := range transitions {
		if !schemas.ValidLoanStatus(from) {
			t.Errorf("transition from %q, not a schemas.LoanStatuses status", from)
		}
		for _, to := range tos {
			if !schemas.ValidLoanStatus(to) {
				t.Errorf("transition %s -> %q, not a schemas.LoanStatuses status", from, to)
			}
			reachable[to] = true
		}
	}
	for _, s := range schemas.LoanStatuses {
		if !knownStatus(s) || !reachable[s] {
			t.Errorf("status %s: accepted %v, reachable %v", s, knownStatus(s), reachable[s])
		}
		if final := len(transitions[s]) == 0; final == schemas.LoanStatusOpen(s) {
			t.Errorf("status %s: final in the API %v, open for the portfolio %v", s, final, schemas.LoanStatusOpen(s))
		}
	}
	for _, s := range []string{"PAID_OFF", "CLOSED", "PENDING", "DEFAULT", "paid", ""} {
		if knownStatus(s) {
			t.Errorf("status %q accepted", s)
		}
	}
}

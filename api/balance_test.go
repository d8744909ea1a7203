package api

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/internal/money"
)

// customerBalance returns a customer's current_balance and version, and
// the sum of its loans' balances.
func customerBalance(t *testing.T, e *env, id string) (bal string, version int64, loans string) {
	t.Helper()
	err := e.srv.Pool().QueryRow(context.Background(), `SELECT c.current_balance::text, c.version,
		(SELECT coalesce(sum(balance), 0)::numeric(18,2)::text FROM loans l WHERE l.customer_id = c.customer_id)
		FROM customers c WHERE c.customer_id = $1`, id).Scan(&bal, &version, &loans)
	if err != nil {
		t.Fatal(err)
	}
	return bal, version, loans
}

// TestCustomerBalanceFollowsLoans: creating a loan adds its amount to the
// customer's current_balance and a balance change adds the difference, in
// the same transaction (customer_360, which decisions are made on, never
// sees a loan without its balance); refused requests change nothing; a
// balance that would not fit numeric(18,2) is a 422.
func TestCustomerBalanceFollowsLoans(t *testing.T) {
	e := newEnv(t)
	a := e.lender("lender-b")
	e.customer("c-bal", "Grace Hopper", "111-22-3333", "lender-b")
	step := func(what, wantBal string) int64 {
		t.Helper()
		bal, ver, loans := customerBalance(t, e, "c-bal")
		if bal != wantBal || loans != wantBal {
			t.Fatalf("%s: current_balance %s, loans sum to %s, want %s", what, bal, loans, wantBal)
		}
		return ver
	}
	v0 := step("new customer", "0.00")
	l1, r := e.createLoan(a, "bal-1", "c-bal", "1500.00")
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if v := step("first loan", "1500.00"); v != v0+1 {
		t.Fatalf("customer version %d after a loan, want %d (customer_360 must see a new version)", v, v0+1)
	}
	if _, r := e.createLoan(a, "bal-1", "c-bal", "1500.00"); r.status != 201 || r.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay: %d %s", r.status, r.body)
	}
	step("replay", "1500.00")
	l2, _ := e.createLoan(a, "bal-2", "c-bal", "500.25")
	step("second loan", "2000.25")
	if _, r := e.createLoan(a, "bal-3", "nobody", "10.00"); r.status != 422 {
		t.Fatalf("unknown customer: %d", r.status)
	}
	patch := func(l Loan, ver int, body map[string]any, want int) {
		t.Helper()
		if r := e.do("PATCH", "/v1/loans/"+l.LoanID, a, body, "If-Match", fmt.Sprintf(`"%d"`, ver)); r.status != want {
			t.Fatalf("patch %v: %d %s, want %d", body, r.status, r.body, want)
		}
	}
	patch(l1, 1, map[string]any{"balance": "1000.00"}, 200)
	v1 := step("payment", "1500.25")
	patch(l1, 1, map[string]any{"balance": "900.00"}, 412) // stale
	patch(l1, 2, map[string]any{"balance": "1600.00"}, 422)
	patch(l1, 2, map[string]any{"status": "CHARGED_OFF"}, 409)
	if v := step("refused patches", "1500.25"); v != v1 {
		t.Fatalf("refused patches moved the customer version %d -> %d", v1, v)
	}
	patch(l1, 2, map[string]any{"status": "DELINQUENT"}, 200)
	if v := step("status only", "1500.25"); v != v1 {
		t.Fatalf("a status change without a balance change moved the customer version %d -> %d", v1, v)
	}
	patch(l1, 3, map[string]any{"status": "ACTIVE", "balance": "1200.00", "ledger": map[string]string{"kind": "FEE"}}, 200) // back up: a fee, with its ledger entry
	step("balance up", "1700.25")
	patch(l2, 1, map[string]any{"status": "PAID"}, 200)
	step("paid off", "1200.00")
	patch(l1, 4, map[string]any{"status": "DEFAULTED"}, 409) // never straight from ACTIVE
	patch(l1, 4, map[string]any{"status": "DELINQUENT"}, 200)
	patch(l1, 5, map[string]any{"status": "DEFAULTED"}, 200)
	patch(l1, 6, map[string]any{"status": "CHARGED_OFF"}, 200)
	step("charged off (still owed)", "1200.00")

	// numeric(18,2) holds 9999999999999999.99 in all.
	e.customerWith(NewCustomer{CustomerID: "c-big", Name: "Big Spender", SSN: "111-22-4444", CreditLimit: "9999999999999999.99", RiskTier: "LOW", Score: 800}, "lender-b")
	if _, r := e.createLoan(a, "big-1", "c-big", "9999999999999999.99"); r.status != 201 {
		t.Fatalf("max loan: %d %s", r.status, r.body)
	}
	_, r = e.createLoan(a, "big-2", "c-big", "0.01")
	if r.status != 422 || !strings.Contains(string(r.body), "balance-overflow") {
		t.Fatalf("overflowing loan: %d %s", r.status, r.body)
	}
	if bal, _, loans := customerBalance(t, e, "c-big"); bal != "9999999999999999.99" || loans != bal {
		t.Fatalf("after the refused loan: current_balance %s, loans %s", bal, loans)
	}
}

// TestCustomerBalanceConcurrent: clients create loans of one customer and
// pay them down at the same time. Every request succeeds (a lock-order
// cycle between the customer's row and the audit chain would end in
// deadlock errors) and the balance is the sum of the loans.
func TestCustomerBalanceConcurrent(t *testing.T) {
	clients, ops := 16, 30
	if testing.Short() {
		clients, ops = 4, 10
	}
	e := newEnv(t, func(c *Config) { c.DBMaxConns = 20 })
	a := e.lender("lender-bc")
	e.customerWith(NewCustomer{CustomerID: "c-busy", Name: "Busy Person", SSN: "111-22-5555", CreditLimit: "1000000.00", RiskTier: "LOW", Score: 800}, "lender-bc")
	var wg sync.WaitGroup
	errs := make(chan string, clients*ops)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			var mine []Loan
			for i := 0; i < ops; i++ {
				if i%3 == 0 || len(mine) == 0 {
					r, err := e.try("POST", "/v1/loans", a, map[string]any{"customer_id": "c-busy", "amount": "100.00", "currency": "USD", "term_months": 6},
						"Idempotency-Key", fmt.Sprintf("busy-%d-%d", c, i))
					if err != nil || r.status != 201 {
						errs <- fmt.Sprintf("create: %v %d %s", err, r.status, r.body)
						continue
					}
					var l Loan
					r.json(t, &l)
					mine = append(mine, l)
					continue
				}
				l := &mine[i%len(mine)]
				bal, _ := money.Parse(l.Balance)
				r, err := e.try("PATCH", "/v1/loans/"+l.LoanID, a, map[string]string{"balance": (bal - 1).String()}, "If-Match", etag(l.Version))
				if err != nil || r.status != 200 {
					errs <- fmt.Sprintf("patch: %v %d %s", err, r.status, r.body)
					continue
				}
				r.json(t, l)
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	if bal, _, loans := customerBalance(t, e, "c-busy"); bal != loans {
		t.Fatalf("current_balance %s, loans sum to %s", bal, loans)
	}
	// The updates queued their audit entries; the server's audit journal links
	// them into the chain by itself, soon.
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var pending, updates, versions int
		if err := e.srv.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM audit_pending),
			(SELECT count(*) FROM audit_log WHERE action = 'loan.update' AND lender_id = 'lender-bc'),
			(SELECT coalesce(sum(version - 1), 0) FROM loans WHERE lender_id = 'lender-bc')`).Scan(&pending, &updates, &versions); err != nil {
			t.Fatal(err)
		}
		if pending == 0 && updates == versions {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d entries pending, %d loan.update entries chained for %d updates", pending, updates, versions)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if rep, err := audit.VerifyKeyed(ctx, e.srv.Pool(), e.srv.AuditKeys()); err != nil || !rep.OK {
		t.Fatalf("audit chain: %+v %v", rep, err)
	}
}

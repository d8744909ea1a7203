package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestLoanLifecycle(t *testing.T) {
	e := newEnv(t)
	a := e.lender("lender-a")
	e.customer("cust-1", "Ada Lovelace", "123-45-6789", "lender-a")

	loan, r := e.createLoan(a, "key-1", "cust-1", "1500.00")
	if r.status != 201 || loan.Amount != "1500.00" || loan.Balance != "1500.00" || loan.Status != "ACTIVE" || loan.LenderID != "lender-a" {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if r.header.Get("ETag") != `"1"` {
		t.Fatalf("ETag = %q", r.header.Get("ETag"))
	}
	// Same key, same body (different formatting): the stored response.
	again := e.do("POST", "/v1/loans", a, `{"amount":"1500.0","customer_id":"cust-1","currency":"USD","term_months":12}`, "Idempotency-Key", "key-1")
	if again.status != 201 || string(again.body) != string(r.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay: %d %s", again.status, again.body)
	}
	// Same key, different body: 422.
	if _, r := e.createLoan(a, "key-1", "cust-1", "1600.00"); r.status != 422 || !strings.Contains(string(r.body), "idempotency-key-reused") {
		t.Fatalf("reuse: %d %s", r.status, r.body)
	}
	if r := e.do("POST", "/v1/loans", a, map[string]any{"customer_id": "cust-1", "amount": "1.00", "currency": "USD", "term_months": 1}); r.status != 400 {
		t.Fatalf("missing key: %d", r.status)
	}
	if _, r := e.createLoan(a, "key-2", "nobody", "10.00"); r.status != 422 {
		t.Fatalf("unknown customer: %d %s", r.status, r.body)
	}
	if _, r := e.createLoan(a, "key-3", "cust-1", "10.001"); r.status != 422 {
		t.Fatalf("3 decimals: %d %s", r.status, r.body)
	}

	path := "/v1/loans/" + loan.LoanID
	if r := e.do("PATCH", path, a, map[string]string{"balance": "1000.00"}); r.status != 428 {
		t.Fatalf("no If-Match: %d", r.status)
	}
	r = e.do("PATCH", path, a, map[string]string{"balance": "1000.00"}, "If-Match", `"1"`)
	if r.status != 200 || r.header.Get("ETag") != `"2"` {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	if r := e.do("PATCH", path, a, map[string]string{"balance": "900.00"}, "If-Match", `"1"`); r.status != 412 || r.header.Get("ETag") != `"2"` {
		t.Fatalf("stale: %d %s", r.status, r.body)
	}
	if r := e.do("PATCH", path, a, map[string]string{"balance": "2000.00"}, "If-Match", `"2"`); r.status != 422 {
		t.Fatalf("balance above amount: %d %s", r.status, r.body)
	}
	if r := e.do("PATCH", path, a, map[string]string{"status": "CHARGED_OFF"}, "If-Match", `"2"`); r.status != 409 ||
		!strings.Contains(string(r.body), "ACTIVE -> CHARGED_OFF") {
		t.Fatalf("illegal transition: %d %s", r.status, r.body)
	}
	if r := e.do("PATCH", path, a, map[string]string{"status": "DEFAULTED"}, "If-Match", `"2"`); r.status != 409 {
		t.Fatalf("ACTIVE -> DEFAULTED in one step: %d %s", r.status, r.body)
	}
	if r := e.do("PATCH", path, a, map[string]string{"balance": "1.00"}, "If-Match", `W/"2"`); r.status != 412 {
		t.Fatalf("weak ETag in If-Match: %d %s", r.status, r.body)
	}
	for i, st := range []string{"DELINQUENT", "DEFAULTED", "CHARGED_OFF"} {
		if r := e.do("PATCH", path, a, map[string]string{"status": st}, "If-Match", fmt.Sprintf(`"%d"`, i+2)); r.status != 200 {
			t.Fatalf("%s: %d %s", st, r.status, r.body)
		}
	}
	if r := e.do("PATCH", path, a, map[string]string{"status": "ACTIVE"}, "If-Match", `"5"`); r.status != 409 {
		t.Fatalf("closed loan: %d %s", r.status, r.body)
	}
	got := e.do("GET", path, a, nil)
	var l Loan
	got.json(t, &l)
	if got.status != 200 || l.Status != "CHARGED_OFF" || l.Version != 5 || got.header.Get("ETag") != `"5"` {
		t.Fatalf("get: %d %s", got.status, got.body)
	}

	for i := 0; i < 5; i++ {
		if _, r := e.createLoan(a, fmt.Sprintf("page-%d", i), "cust-1", "10.00"); r.status != 201 {
			t.Fatal(r.status)
		}
	}
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		r := e.do("GET", "/v1/loans?limit=2&cursor="+cursor, a, nil)
		var p loanPage
		r.json(t, &p)
		for _, it := range p.Items {
			if seen[it.LoanID] {
				t.Fatalf("loan %s twice", it.LoanID)
			}
			seen[it.LoanID] = true
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
		if pages > 10 {
			t.Fatal("paging does not end")
		}
	}
	if len(seen) != 6 {
		t.Fatalf("listed %d loans, want 6", len(seen))
	}
	// Completeness: one audit row per access of loan data, none for the
	// requests refused before touching it.
	checkAuditCounts(t, e, "lender-a", map[string]int{
		"loan.create":        7, // key-1 and the five page-* loans; the unknown-customer probe (denied)
		"oauth.token":        1, // the client's token
		"loan.create.replay": 1, // the replay of key-1 (not the 422 reuse)
		"loan.update":        4, // balance 1000.00, DELINQUENT, DEFAULTED, CHARGED_OFF
		"loan.read":          1,
		"loan.list":          3, // three pages of two
	})
}

// checkAuditCounts compares a lender's audit rows per action with want
// (every action the lender has rows for must be in want).
func checkAuditCounts(t *testing.T, e *env, lender string, want map[string]int) {
	t.Helper()
	if err := e.srv.FlushAudit(t.Context()); err != nil { // loan updates queue their entries
		t.Fatal(err)
	}
	rows, err := e.srv.Pool().Query(t.Context(), "SELECT action, count(*) FROM audit_log WHERE lender_id = $1 GROUP BY action", lender)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]int{}
	for rows.Next() {
		var a string
		var n int
		if err := rows.Scan(&a, &n); err != nil {
			t.Fatal(err)
		}
		got[a] = n
	}
	for a, n := range want {
		if got[a] != n {
			t.Errorf("%s: %d audit rows for %s, want %d", lender, got[a], a, n)
		}
	}
	for a, n := range got {
		if _, ok := want[a]; !ok {
			t.Errorf("%s: %d unexpected audit rows for %s", lender, n, a)
		}
	}
}

func TestProblemJSON(t *testing.T) {
	e := newEnv(t)
	a := e.lender("lender-p")
	r := e.do("POST", "/v1/loans", a, `{"customer_id": 5}`, "Idempotency-Key", "k")
	var p map[string]any
	if err := json.Unmarshal(r.body, &p); err != nil || r.status != 400 || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("%d %s %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	if p["status"].(float64) != 400 || p["type"] == "" || p["title"] == "" {
		t.Fatalf("problem: %v", p)
	}
	big := `{"customer_id":"` + strings.Repeat("x", 70<<10) + `"}`
	if r := e.do("POST", "/v1/loans", a, big, "Idempotency-Key", "k2"); r.status != 413 {
		t.Fatalf("big body: %d", r.status)
	}
	if r := e.do("GET", "/v1/nope", a, nil); r.status != 404 || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("unknown route: %d", r.status)
	}
}

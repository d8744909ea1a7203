package api

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api/auth"
)

// profileAt reads a credit profile under purpose, optionally with PII.
func (e *env) profileAt(tok, id, purpose string, withPII bool) (profileResp, response) {
	e.t.Helper()
	path := "/v1/credit-profiles/" + id + "?purpose=" + purpose
	if withPII {
		path += "&include=pii"
	}
	r := e.do("GET", path, tok, nil)
	var p profileResp
	if r.status == 200 {
		r.json(e.t, &p)
	}
	return p, r
}

// clientToken creates a client of lender (empty: an operator client) with
// exactly scopes and returns its token.
func (e *env) clientToken(id, lender string, scopes ...string) string {
	e.t.Helper()
	r := e.do("POST", "/v1/admin/clients", e.admin, NewClient{ClientID: id, LenderID: lender, Scopes: scopes})
	if r.status != 201 {
		e.t.Fatalf("creating client %s: %d %s", id, r.status, r.body)
	}
	var c ClientCredentials
	r.json(e.t, &c)
	return e.token(c.ClientID, c.ClientSecret)
}

func (e *env) apply(tok, appID, customer, ssn, currency string) response {
	e.t.Helper()
	body := map[string]any{"application_id": appID, "pos_terminal_id": "pos-1", "amount": "100.00", "currency": currency,
		"applicant": map[string]string{"name": "Applicant " + appID, "ssn": ssn}}
	if customer != "" {
		body["customer_id"] = customer
	}
	return e.do("POST", "/v1/loan-applications", tok, body)
}

// TestTenantIsolationOfCreditData (issue 9, High 1): a customer's credit
// profile and PII are reachable only by a lender that knows the customer
// (onboarded it, booked a loan on it, or received an application whose
// applicant's SSN is the customer's), only for the permissible purposes
// that relationship supports; the full SSN needs pii:read granted
// explicitly, admin never implies it; credit data is never cacheable.
// The expected answers are the rules written out per case.
func TestTenantIsolationOfCreditData(t *testing.T) {
	e := newEnv(t)
	a := e.lender("bank-a")
	b := e.lender("bank-b", auth.ScopePIIRead) // every lender scope and pii:read
	e.lender("bank-c")
	c := e.clientToken("bank-c-reader", "bank-c", auth.ScopeCreditRead, auth.ScopeApplicationsWrite)
	aPII := e.clientToken("bank-a-pii", "bank-a", auth.ScopeCreditRead, auth.ScopePIIRead)
	aAdmin := e.clientToken("bank-a-admin", "bank-a", auth.ScopeAdmin) // admin, no pii:read
	e.customer("c-ten-1", "Grace Hopper", "111-22-3333", "bank-a")

	// Another lender, with every scope including pii:read, under every
	// purpose: 404, as for a customer that does not exist.
	for _, purpose := range []string{"CREDIT_TRANSACTION", "ACCOUNT_REVIEW", "COLLECTION", "CONSUMER_REQUEST", "INSURANCE"} {
		for _, withPII := range []bool{false, true} {
			if _, r := e.profileAt(b, "c-ten-1", purpose, withPII); r.status != 404 || strings.Contains(string(r.body), "3333") {
				t.Fatalf("bank-b reads bank-a's customer (%s, pii %v): %d %s", purpose, withPII, r.status, r.body)
			}
		}
	}
	_, unknown := e.profileAt(b, "nobody", "CREDIT_TRANSACTION", false)
	_, other := e.profileAt(b, "c-ten-1", "CREDIT_TRANSACTION", false)
	if unknown.status != other.status || problemType(t, unknown) != problemType(t, other) {
		t.Fatalf("unknown customer %d %s vs another lender's %d %s: distinguishable", unknown.status, unknown.body, other.status, other.body)
	}
	// The operator's admin token (no lender) reads no credit data.
	if _, r := e.profileAt(e.admin, "c-ten-1", "ACCOUNT_REVIEW", true); r.status != 403 {
		t.Fatalf("operator admin reads a profile: %d %s", r.status, r.body)
	}

	// The onboarding lender without pii:read: the SSN's last four only.
	p, r := e.profileAt(a, "c-ten-1", "ACCOUNT_REVIEW", true)
	if r.status != 200 || p.PII == nil || p.PII.SSN != "***-**-3333" || p.PII.Name != "" || p.PII.DateOfBirth != "" || strings.Contains(string(r.body), "111223333") {
		t.Fatalf("bank-a without pii:read: %d %s", r.status, r.body)
	}
	// A lender admin client without pii:read: masked too.
	if p, r := e.profileAt(aAdmin, "c-ten-1", "ACCOUNT_REVIEW", true); r.status != 200 || p.PII == nil || p.PII.SSN != "***-**-3333" || p.PII.Name != "" {
		t.Fatalf("bank-a admin client: %d %s", r.status, r.body)
	}
	// Explicit pii:read: everything.
	if p, r := e.profileAt(aPII, "c-ten-1", "ACCOUNT_REVIEW", true); r.status != 200 || p.PII == nil || p.PII.SSN != "111223333" || p.PII.Name != "Grace Hopper" {
		t.Fatalf("bank-a with pii:read: %d %s", r.status, r.body)
	}
	// Purposes are bound to the relationship: the onboarding lender may not
	// collect on a customer it has no loan with, and nobody underwrites
	// insurance.
	for purpose, want := range map[string]int{"CREDIT_TRANSACTION": 200, "ACCOUNT_REVIEW": 200, "CONSUMER_REQUEST": 200, "COLLECTION": 403, "INSURANCE": 403} {
		if _, r := e.profileAt(a, "c-ten-1", purpose, false); r.status != want {
			t.Fatalf("bank-a (customer relationship) under %s: %d, want %d: %s", purpose, r.status, want, r.body)
		}
	}
	if _, r := e.createLoan(a, "k-1", "c-ten-1", "100.00"); r.status != 201 {
		t.Fatalf("bank-a books a loan on its customer: %d %s", r.status, r.body)
	}
	if _, r := e.profileAt(a, "c-ten-1", "COLLECTION", false); r.status != 200 {
		t.Fatalf("bank-a after booking a loan, COLLECTION: %d %s", r.status, r.body)
	}

	// An application naming the customer with another SSN gives no
	// relationship and is refused; one with the customer's SSN gives an
	// application relationship: underwriting only.
	if r := e.apply(c, "app-c-1", "c-ten-1", "999-88-7777", "USD"); r.status != 422 {
		t.Fatalf("bank-c names c-1 with another SSN: %d %s", r.status, r.body)
	}
	if _, r := e.profileAt(c, "c-ten-1", "CREDIT_TRANSACTION", false); r.status != 404 {
		t.Fatalf("bank-c after a refused application: %d %s", r.status, r.body)
	}
	if r := e.apply(c, "app-c-2", "c-ten-1", "111-22-3333", "USD"); r.status != 202 {
		t.Fatalf("bank-c names c-1 with its SSN: %d %s", r.status, r.body)
	}
	if p, r := e.profileAt(c, "c-ten-1", "CREDIT_TRANSACTION", false); r.status != 200 || p.CustomerID != "c-ten-1" {
		t.Fatalf("bank-c underwriting its application: %d %s", r.status, r.body)
	}
	if _, r := e.profileAt(c, "c-ten-1", "ACCOUNT_REVIEW", false); r.status != 403 {
		t.Fatalf("bank-c account review without an account: %d %s", r.status, r.body)
	}

	// Credit data is never cacheable.
	for _, path := range []string{"/v1/credit-profiles/c-ten-1?purpose=ACCOUNT_REVIEW", "/v1/loans", "/v1/portfolio", "/v1/loan-applications/app-x/decision?timeout=0s"} {
		if r := e.do("GET", path, a, nil); r.header.Get("Cache-Control") != "no-store" {
			t.Fatalf("%s: %d Cache-Control %q", path, r.status, r.header.Get("Cache-Control"))
		}
	}
	// Every denial is audited with the purpose claimed.
	var denied int
	if err := e.srv.Pool().QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE lender_id = 'bank-b'
		AND action = 'credit_profile.read' AND resource = 'customer/c-ten-1' AND result = 'denied'`).Scan(&denied); err != nil {
		t.Fatal(err)
	}
	if denied != 11 { // 10 attempts on c-1 above, 1 for the comparison
		t.Fatalf("bank-b's denied profile reads audited: %d, want 11", denied)
	}
	var masked int
	_ = e.srv.Pool().QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE action = 'pii.read_masked'`).Scan(&masked)
	if masked != 2 {
		t.Fatalf("masked PII reads audited: %d, want 2", masked)
	}
}

func problemType(t *testing.T, r response) string {
	t.Helper()
	var p struct {
		Type string `json:"type"`
	}
	r.json(t, &p)
	return path.Base(p.Type)
}

// TestLoanBookingChecks (issue 9, High 2): only a lender that knows the
// customer books loans on it, within the credit limit, in an ISO 4217
// currency that is the customer's credit currency; the balance is the sum
// of the loans, computed here independently.
func TestLoanBookingChecks(t *testing.T) {
	e := newEnv(t)
	a := e.lender("bank-a")
	b := e.lender("bank-b")
	e.customer("c-book-1", "Grace Hopper", "111-22-3333", "bank-a") // limit 10,000.00 USD
	e.customerWith(NewCustomer{CustomerID: "c-book-yen", Name: "Yen Person", SSN: "222-33-4444", CreditLimit: "1000000", Currency: "JPY",
		RiskTier: "LOW", Score: 800}, "bank-a")

	type attempt struct {
		tok, key, customer, amount, currency string
		status                               int
		kind                                 string
	}
	attempts := []attempt{
		{b, "b-1", "c-book-1", "9999999999999999.99", "USD", 422, "unknown-customer"}, // another lender's customer
		{b, "b-2", "c-book-1", "10.00", "USD", 422, "unknown-customer"},
		{a, "a-1", "c-book-1", "50000.00", "USD", 422, "credit-limit-exceeded"},
		{a, "a-2", "c-book-1", "9999999999999999.99", "USD", 422, "credit-limit-exceeded"},
		{a, "a-3", "c-book-1", "100.00", "ZZZ", 422, "invalid-loan"},
		{a, "a-4", "c-book-1", "100.00", "XXX", 422, "invalid-loan"},
		{a, "a-5", "c-book-1", "100.00", "usd", 422, "invalid-loan"},
		{a, "a-6", "c-book-1", "100.00", "JPY", 422, "currency-mismatch"},
		{a, "a-7", "c-book-1", "6000.00", "USD", 201, ""},
		{a, "a-8", "c-book-1", "4000.01", "USD", 422, "credit-limit-exceeded"},
		{a, "a-9", "c-book-1", "4000.00", "USD", 201, ""}, // exactly the limit
		{a, "a-10", "c-book-1", "0.01", "USD", 422, "credit-limit-exceeded"},
		{a, "a-11", "c-book-yen", "500000", "JPY", 201, ""},
		{a, "a-12", "c-book-yen", "100.00", "USD", 422, "currency-mismatch"},
	}
	for _, at := range attempts {
		r := e.do("POST", "/v1/loans", at.tok, map[string]any{"customer_id": at.customer, "amount": at.amount, "currency": at.currency, "term_months": 12},
			"Idempotency-Key", at.key)
		if r.status != at.status || (at.kind != "" && problemType(t, r) != at.kind) {
			t.Fatalf("%s: %s %s on %s: %d %s, want %d %s", at.key, at.amount, at.currency, at.customer, r.status, r.body, at.status, at.kind)
		}
	}
	// Balances: c-book-1 holds 6,000 + 4,000 USD, c-book-yen 500,000 JPY; nothing
	// refused moved them.
	for id, want := range map[string]string{"c-book-1": "10000.00", "c-book-yen": "500000.00"} {
		bal, _, loans := customerBalance(t, e, id)
		if bal != want || loans != want {
			t.Fatalf("%s: current_balance %s, loans %s, want %s", id, bal, loans, want)
		}
	}
	if p, r := e.profileAt(a, "c-book-1", "ACCOUNT_REVIEW", false); r.status != 200 || p.AvailableCredit != "0.00" {
		t.Fatalf("c-book-1 profile: %d %s", r.status, r.body)
	}
	var currencies int
	_ = e.srv.Pool().QueryRow(context.Background(), "SELECT count(DISTINCT currency) FROM loans WHERE customer_id = 'c-book-1'").Scan(&currencies)
	if currencies != 1 {
		t.Fatalf("c-book-1 has loans in %d currencies", currencies)
	}
	// A customer in an unknown currency is refused at creation.
	r := e.do("POST", "/v1/customers", e.admin, NewCustomer{CustomerID: "c-zzz", Name: "Z", SSN: "333-44-5555", CreditLimit: "1.00",
		Currency: "ZZZ", RiskTier: "LOW", Score: 700, LenderID: "bank-a"})
	if r.status != 422 {
		t.Fatalf("customer in ZZZ: %d %s", r.status, r.body)
	}
}

// TestApplicationIDsPerLender (issue 9, High 3, API side): two lenders
// using the same application id have two applications: distinct record
// keys on loan_applications, each lender's long-poll answered by its own
// decision only, and another lender's decided id answers exactly like an
// unknown id.
func TestApplicationIDsPerLender(t *testing.T) {
	e := newEnv(t)
	a := e.lender("bank-a")
	b := e.lender("bank-b")
	for _, tok := range []string{a, b} {
		if r := e.apply(tok, "pos-0001", "", "123-45-6789", "USD"); r.status != 202 {
			t.Fatalf("submit: %d %s", r.status, r.body)
		}
	}
	if r := e.apply(b, "pos-b-only", "", "123-45-6789", "USD"); r.status != 202 {
		t.Fatalf("submit: %d %s", r.status, r.body)
	}
	keys := applicationKeys(t, e, 3)
	if !keys["bank-a/pos-0001"] || !keys["bank-b/pos-0001"] {
		t.Fatalf("record keys %v, want one per lender", keys)
	}
	dec, _, _ := e.avro()
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "pos-0001", "bank-b", "DECLINED", 500))
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "pos-b-only", "bank-b", "APPROVED", 700))
	waitFor(t, "bank-b's decisions", func() bool {
		return e.do("GET", "/v1/loan-applications/pos-0001/decision?timeout=0s", b, nil).status == 200 &&
			e.do("GET", "/v1/loan-applications/pos-b-only/decision?timeout=0s", b, nil).status == 200
	})
	// bank-a's application is still pending: bank-b's decision is not its.
	ra := e.do("GET", "/v1/loan-applications/pos-0001/decision?timeout=0s", a, nil)
	ru := e.do("GET", "/v1/loan-applications/pos-never/decision?timeout=0s", a, nil)
	if ra.status != 202 || strings.Contains(string(ra.body), "DECLINED") {
		t.Fatalf("bank-a's long-poll after bank-b's decision: %d %s", ra.status, ra.body)
	}
	// An id only another lender used (decided) answers exactly as an id
	// nobody used: 404 unknown-application, no data, so ids cannot be
	// probed.
	ro := e.do("GET", "/v1/loan-applications/pos-b-only/decision?timeout=0s", a, nil)
	if ru.status != 404 || ro.status != ru.status || !sameShape(t, ro.body, ru.body, "pos-b-only", "pos-never") {
		t.Fatalf("another lender's decided id %d %s vs unknown id %d %s", ro.status, ro.body, ru.status, ru.body)
	}
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "pos-0001", "bank-a", "APPROVED", 720))
	var d Decision
	waitFor(t, "bank-a's decision", func() bool {
		r := e.do("GET", "/v1/loan-applications/pos-0001/decision?timeout=0s", a, nil)
		if r.status == 200 {
			r.json(t, &d)
		}
		return r.status == 200
	})
	if d.LenderID != "bank-a" || d.Decision != "APPROVED" {
		t.Fatalf("bank-a got %+v", d)
	}
	var db Decision
	e.do("GET", "/v1/loan-applications/pos-0001/decision?timeout=0s", b, nil).json(t, &db)
	if db.LenderID != "bank-b" || db.Decision != "DECLINED" {
		t.Fatalf("bank-b got %+v", db)
	}
}

// sameShape reports whether two JSON bodies are equal once each one's own
// id is blanked.
func sameShape(t *testing.T, x, y []byte, idX, idY string) bool {
	t.Helper()
	var mx, my map[string]any
	if json.Unmarshal([]byte(strings.ReplaceAll(string(x), idX, "ID")), &mx) != nil ||
		json.Unmarshal([]byte(strings.ReplaceAll(string(y), idY, "ID")), &my) != nil {
		return false
	}
	delete(mx, "request_id") // differs per request by design
	delete(my, "request_id")
	bx, _ := json.Marshal(mx)
	by, _ := json.Marshal(my)
	return string(bx) == string(by)
}

// applicationKeys reads n records of the applications topic and returns
// their keys.
func applicationKeys(t *testing.T, e *env, n int) map[string]bool {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(e.cfg.ApplicationsTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keys := map[string]bool{}
	count := 0
	for count < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d application records", count, n)
		}
		fs.EachRecord(func(r *kgo.Record) { keys[string(r.Key)] = true; count++ })
	}
	return keys
}

// TestConcurrentApplicationsEachCheckTheirOwnCustomer: applications that
// name customers at the same time share the named-customer query's round
// trips (the batcher); each is still judged on its own customer: the
// applicant's SSN must be that customer's and the currency its credit's.
// The relationships recorded are read back from lender_customers and
// compared with the ones the test expects; a second round (relationships
// cached) answers the same and records nothing more.
func TestConcurrentApplicationsEachCheckTheirOwnCustomer(t *testing.T) {
	e := newEnv(t)
	e.lender("bank-own")
	tok := e.lender("bank-names")
	const n = 30
	ssn := func(i int) string { return fmt.Sprintf("321-54-%04d", 2000+i) }
	want := map[string]bool{} // customers bank-names should relate to
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("c-named-%d", i)
		e.customerWith(NewCustomer{CustomerID: id, Name: "Named " + id, SSN: ssn(i), CreditLimit: "1000.00", Currency: "USD", RiskTier: "LOW", Score: 700}, "bank-own")
		if i%3 == 0 {
			want[id] = true
		}
	}
	for round := 0; round < 2; round++ {
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan string, n+1)
		for i := 0; i <= n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				id, s, cur, status := fmt.Sprintf("c-named-%d", i), ssn(i), "USD", 202
				switch {
				case i == n: // no such customer
					status = 422
				case i%3 == 1: // another customer's SSN
					s, status = ssn(i+1), 422
				case i%3 == 2: // the customer's SSN, another currency
					cur, status = "EUR", 422
				}
				if r := e.apply(tok, fmt.Sprintf("app-named-%d-%d", round, i), id, s, cur); r.status != status {
					errs <- fmt.Sprintf("round %d, %s (ssn %s, %s): %d, want %d: %s", round, id, s, cur, r.status, status, r.body)
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for msg := range errs {
			t.Error(msg)
		}
		rows, err := e.srv.Pool().Query(context.Background(),
			"SELECT customer_id, basis FROM lender_customers WHERE lender_id = 'bank-names'")
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for rows.Next() {
			var id, basis string
			if err := rows.Scan(&id, &basis); err != nil {
				t.Fatal(err)
			}
			if basis != "application" || got[id] {
				t.Errorf("round %d: relationship %s %s", round, id, basis)
			}
			got[id] = true
		}
		rows.Close()
		if !maps.Equal(got, want) {
			t.Errorf("round %d: bank-names relates to %v, want %v", round, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
		}
	}
}

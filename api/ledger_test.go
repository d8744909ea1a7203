package api

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// TestBalanceChangesAreLedgered (issue 9, Low): a balance increase without
// a ledger entry is refused (422 ledger-entry) and changes nothing; with a
// FEE entry it is accepted and recorded; a decrease is recorded as PAYMENT
// by default; a decrease claiming to be a FEE, and an entry without a
// change, are refused. The expected ledger is the test's own list of the
// accepted changes; loan_ledger is append-only.
func TestBalanceChangesAreLedgered(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-led")
	e.customer("c-led", "Ledger Person", "111-22-7777", "bank-led")
	l, r := e.createLoan(tok, "led-1", "c-led", "1000.00")
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	ver := l.Version
	patch := func(body string, want int, kind string) {
		t.Helper()
		r := e.do("PATCH", "/v1/loans/"+l.LoanID, tok, body, "If-Match", fmt.Sprintf(`"%d"`, ver))
		if r.status != want || (kind != "" && !strings.Contains(string(r.body), kind)) {
			t.Fatalf("patch %s: %d %s, want %d %s", body, r.status, r.body, want, kind)
		}
		if r.status == 200 {
			ver++
		}
	}
	patch(`{"balance":"600.00"}`, 200, "")                                             // PAYMENT -400
	patch(`{"balance":"700.00"}`, 422, "ledger-entry")                                 // increase, no entry
	patch(`{"balance":"700.00","ledger":{"kind":"PAYMENT"}}`, 422, "ledger-entry")     // increase as a payment
	patch(`{"balance":"700.00","ledger":{"kind":"FEE","reference":"fee-1"}}`, 200, "") // FEE +100
	patch(`{"balance":"650.00","ledger":{"kind":"FEE"}}`, 422, "ledger-entry")         // decrease as a fee
	patch(`{"status":"DELINQUENT","ledger":{"kind":"FEE"}}`, 422, "ledger-entry")      // no change
	patch(`{"balance":"650.00","ledger":{"kind":"WRITE_OFF","reference":"wo-7"}}`, 200, "")
	patch(`{"status":"DELINQUENT"}`, 200, "") // no balance change: no entry
	want := []string{"2 -400.00 600.00 PAYMENT ", "3 100.00 700.00 FEE fee-1", "4 -50.00 650.00 WRITE_OFF wo-7"}
	rows, err := e.srv.Pool().Query(context.Background(),
		"SELECT loan_version || ' ' || delta || ' ' || balance_after || ' ' || kind || ' ' || reference FROM loan_ledger WHERE loan_id = $1 ORDER BY id", l.LoanID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		got = append(got, s)
	}
	rows.Close()
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("ledger:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := e.srv.Pool().Exec(context.Background(), "UPDATE loan_ledger SET delta = 1"); err == nil {
		t.Fatal("loan_ledger accepted an UPDATE")
	}
}

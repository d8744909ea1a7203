package jobs

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/schemas"
)

// TestPortfolioEveryLoanStatus: the portfolio job aggregates every loan
// status the API can set (schemas.LoanStatuses) as intended. A status added
// to the schema without a decision here fails the test, and so does a
// status the job counts wrongly.
func TestPortfolioEveryLoanStatus(t *testing.T) {
	type counts struct{ active, delinquent, defaulted bool }
	want := map[string]counts{
		schemas.LoanStatusActive:     {active: true},
		schemas.LoanStatusDelinquent: {active: true, delinquent: true},
		schemas.LoanStatusDefaulted:  {active: true, defaulted: true},
		schemas.LoanStatusPaid:       {},
		schemas.LoanStatusChargedOff: {},
	}
	lp := newLocalPortfolio(t)
	var active, defaults int64
	var outstanding, delinquent int64 // cents
	for i, st := range schemas.LoanStatuses {
		c, ok := want[st]
		if !ok {
			t.Fatalf("status %s: no expectation; decide how the portfolio counts it", st)
		}
		id, bal := fmt.Sprintf("s%d", i), int64(100*(i+1))
		amount := fmt.Sprintf("%d.00", bal)
		lp.loan(time.Duration(i)*time.Second, int64(10+2*i), id, "S1", "USD", schemas.LoanCreated, true, schemas.LoanStatusActive, amount, amount)
		after := amount
		if st == schemas.LoanStatusPaid {
			after = "0.00"
		}
		lp.loan(time.Duration(i)*time.Second+500*time.Millisecond, int64(11+2*i), id, "S1", "USD", schemas.LoanUpdated, false, st, amount, after)
		if c.active {
			active++
			outstanding += bal * 100
		}
		if c.delinquent {
			delinquent += bal * 100
		}
		if c.defaulted {
			defaults++
		}
	}
	lp.loan(90*time.Second, 100, "x", "S2", "USD", schemas.LoanCreated, true, schemas.LoanStatusActive, "1.00", "1.00")
	lp.decision(90*time.Second, "a", "S2", schemas.DecisionApproved)
	money := func(cents int64) string { return fmt.Sprintf("%d.%02d", cents/100, cents%100) }
	var total int64
	for i := range schemas.LoanStatuses {
		total += int64(100 * (i + 1))
	}
	line := fmt.Sprintf("S1 USD +0m: orig %d %d.00 appr 0 decl 0 ref 0 active %d out %s delinq %s rates %.4f %.4f",
		len(schemas.LoanStatuses), total, active, money(outstanding), money(delinquent),
		float64(delinquent)/float64(outstanding), float64(defaults)/float64(active))
	got := lp.metrics()
	if len(got) == 0 || got[0] != line {
		t.Fatalf("metrics:\n%s\nwant first\n%s", strings.Join(got, "\n"), line)
	}
}

package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/schemas"
)

// TestApplicationIDsPerLenderAndApplicantCheck (issue 9, High 3): two
// lenders' applications with the same id are two applications end to end
// (both decided, both booked, neither dropped as the other's
// resubmission), and an application whose applicant's SSN blind index is
// not the named customer's is referred with APPLICANT_MISMATCH and carries
// nothing of that customer. The control: the same customer named with its
// own index is approved.
func TestApplicationIDsPerLenderAndApplicantCheck(t *testing.T) {
	s := newStack(t)
	s.env.BureauURL = startBureau(t, bureau.Config{LatencyMin: time.Millisecond, LatencyMax: 5 * time.Millisecond, NoFileRate: -1, Seed: 3}).URL()
	s.addLender("L1")
	s.addLender("L2")
	for _, c := range []customer{
		{ID: "c-1", Tier: "LOW", Limit: "10000.00", Balance: "0", Score: 750},
		{ID: "c-2", Tier: "LOW", Limit: "10000.00", Balance: "0", Score: 750},
	} {
		s.addCustomer(c)
	}
	tp := s.env.Topics.WithDefaults()
	createTopic(t, s.env.Brokers, tp.Applications, 2, false)
	createTopic(t, s.env.Brokers, tp.Customer360, 3, false)
	s.startCDC()
	awaitCustomer360(t, s.env, "c-1", "c-2")

	at := time.Now()
	impostor := app("pos-0002", "L2", ptr("c-1"), "100.00", at)
	impostor.SSNIndex = ssnIndex("someone-else")
	prod := appProducer{t: t, brokers: s.env.Brokers, topic: tp.Applications, serde: serde[schemas.LoanApplication](t, s.env, tp.Applications, schemas.LoanApplicationSchema)}
	prod.send(
		app("pos-0001", "L1", ptr("c-1"), "100.00", at),
		app("pos-0001", "L2", ptr("c-2"), "200.00", at),
		impostor,
	)
	w := runWorker(t, s.env.Brokers, buildDecisions(t, testenv.Name(t, "decisions"), s.env), t.TempDir())
	defer w.halt(t)
	dr := newDecisionReader(t, s.env)
	decode := func(rec *kgo.Record) {
		d, err := dr.serde.Decode(rec.Value)
		if err != nil {
			t.Fatalf("decoding decision: %v", err)
		}
		if string(rec.Key) != AppKey(d.LenderID, d.ApplicationID) {
			t.Errorf("decision of %s/%s keyed %q", d.LenderID, d.ApplicationID, rec.Key)
		}
		dr.got[d.ApplicationID] = append(dr.got[d.ApplicationID], d)
	}
	if !dr.c.until(60*time.Second, decode, func() bool { return len(dr.got["pos-0001"]) >= 2 && len(dr.got["pos-0002"]) >= 1 }) {
		t.Fatalf("decisions: %v", dr.got)
	}
	byLender := map[string]schemas.LoanDecision{}
	for _, d := range dr.got["pos-0001"] {
		byLender[d.LenderID] = d
	}
	if len(byLender) != 2 || byLender["L1"].Decision != schemas.DecisionApproved || byLender["L2"].Decision != schemas.DecisionApproved ||
		*byLender["L1"].CustomerID != "c-1" || *byLender["L2"].CustomerID != "c-2" || byLender["L2"].Amount.String() != "200.00" {
		t.Fatalf("pos-0001 of two lenders: %+v", dr.got["pos-0001"])
	}
	m := dr.got["pos-0002"][0]
	if m.Decision != schemas.DecisionRefer || len(m.ReasonCodes) != 1 || m.ReasonCodes[0] != ReasonApplicantMismatch ||
		m.CustomerID != nil || m.Score != 0 || m.AvailableCredit.String() != "0.00" || m.Customer360Version != nil || m.Basis == schemas.BasisCustomer360 {
		t.Fatalf("impostor's decision: %+v", m)
	}
	// Both approvals are booked, one loan each, under lender-scoped ids,
	// and each lender now has a loan relationship with its customer.
	s.awaitLoans(30*time.Second, "pos-0001", "pos-0001")
	for lender, cust := range map[string]string{"L1": "c-1", "L2": "c-2"} {
		var id string
		var rel int
		if err := s.pool.QueryRow(context.Background(), "SELECT loan_id FROM loans WHERE lender_id = $1 AND application_id = 'pos-0001'", lender).Scan(&id); err != nil {
			t.Fatal(err)
		}
		_ = s.pool.QueryRow(context.Background(), "SELECT count(*) FROM lender_customers WHERE lender_id = $1 AND customer_id = $2 AND basis = 'loan'", lender, cust).Scan(&rel)
		if id != LoanID(lender, "pos-0001") || rel != 1 {
			t.Fatalf("%s: loan %q (want %q), relationship rows %d", lender, id, LoanID(lender, "pos-0001"), rel)
		}
	}
	if LoanID("L1", "pos-0001") == LoanID("L2", "pos-0001") {
		t.Fatal("loan ids collide across lenders")
	}
}

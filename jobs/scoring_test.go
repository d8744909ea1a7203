package jobs

import (
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/schemas"
)

func row(status, tier string, score int32, limit, balance string, delinquent bool) schemas.Customer360 {
	return schemas.Customer360{CustomerID: "c1", Status: status, RiskTier: tier, Score: score, Delinquent: delinquent,
		CreditLimit: schemas.MustParseDecimal(limit), CurrentBalance: schemas.MustParseDecimal(balance), Version: 7,
		UpdatedAt: time.Unix(100, 0).UTC()}
}

func TestScoreCustomer(t *testing.T) {
	p := Policy{}.WithDefaults()
	for _, tc := range []struct {
		name     string
		amount   string
		row      schemas.Customer360
		decision schemas.Decision
		reasons  string
		avail    string
	}{
		{"approved", "1000.00", row("ACTIVE", "LOW", 720, "10000.00", "2000.00", false), schemas.DecisionApproved, "", "8000.00"},
		{"exactly the available credit at 90%", "900.00", row("ACTIVE", "LOW", 720, "1000.00", "0.00", false), schemas.DecisionApproved, "", "1000.00"},
		{"one cent over 90% utilization", "900.01", row("ACTIVE", "LOW", 720, "1000.00", "0.00", false), schemas.DecisionRefer, "HIGH_UTILIZATION", "1000.00"},
		{"over the limit", "500.00", row("ACTIVE", "MEDIUM", 700, "1000.00", "900.00", false), schemas.DecisionDeclined, "LIMIT_EXCEEDED", "100.00"},
		{"over the limit by a cent", "100.01", row("ACTIVE", "MEDIUM", 700, "1000.00", "900.00", false), schemas.DecisionDeclined, "LIMIT_EXCEEDED", "100.00"},
		{"frozen", "10.00", row("FROZEN", "LOW", 800, "1000.00", "0.00", false), schemas.DecisionDeclined, "CUSTOMER_NOT_ACTIVE", "1000.00"},
		{"every adverse reason, in order", "2000.00", row("CLOSED", "VERY_HIGH", 500, "1000.00", "0.00", true), schemas.DecisionDeclined,
			"CUSTOMER_NOT_ACTIVE,DELINQUENT,SCORE_BELOW_MIN,LIMIT_EXCEEDED", "1000.00"},
		{"score at the minimum is marginal", "10.00", row("ACTIVE", "LOW", 580, "1000.00", "0.00", false), schemas.DecisionRefer, "SCORE_MARGINAL", "1000.00"},
		{"score below the minimum", "10.00", row("ACTIVE", "LOW", 579, "1000.00", "0.00", false), schemas.DecisionDeclined, "SCORE_BELOW_MIN", "1000.00"},
		{"score at the refer threshold", "10.00", row("ACTIVE", "LOW", 660, "1000.00", "0.00", false), schemas.DecisionApproved, "", "1000.00"},
		{"very high risk", "10.00", row("ACTIVE", "VERY_HIGH", 700, "1000.00", "0.00", false), schemas.DecisionRefer, "RISK_TIER_VERY_HIGH", "1000.00"},
		{"unknown tier and marginal", "10.00", row("ACTIVE", "PLATINUM", 600, "1000.00", "0.00", false), schemas.DecisionRefer,
			"RISK_TIER_UNKNOWN,SCORE_MARGINAL", "1000.00"},
		{"over limit already", "1.00", row("ACTIVE", "LOW", 700, "1000.00", "1200.00", false), schemas.DecisionDeclined, "LIMIT_EXCEEDED", "-200.00"},
		{"zero limit", "1.00", row("ACTIVE", "LOW", 700, "0.00", "0.00", false), schemas.DecisionDeclined, "LIMIT_EXCEEDED", "0.00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := app("a1", "L1", ptr("c1"), tc.amount, time.Unix(200, 0))
			d, err := p.ScoreCustomer(a, tc.row)
			if err != nil {
				t.Fatal(err)
			}
			if d.Decision != tc.decision || strings.Join(d.ReasonCodes, ",") != tc.reasons || d.AvailableCredit.String() != tc.avail {
				t.Fatalf("got %s %v available %s", d.Decision, d.ReasonCodes, d.AvailableCredit)
			}
			if d.Basis != schemas.BasisCustomer360 || d.Customer360Version == nil || *d.Customer360Version != 7 || d.Score != tc.row.Score ||
				*d.CustomerID != "c1" || d.BureauResponseID != nil || !d.EventTime.Equal(a.EventTime) {
				t.Fatalf("decision fields: %+v", d)
			}
		})
	}
}

func TestScoreBureau(t *testing.T) {
	p := Policy{}.WithDefaults()
	a := app("a1", "L1", nil, "100.00", time.Unix(200, 0))
	for _, tc := range []struct {
		rep      bureau.Report
		decision schemas.Decision
		reasons  string
	}{
		{bureau.Report{ResponseID: "br_1", Hit: false}, schemas.DecisionRefer, "NO_BUREAU_FILE"},
		{bureau.Report{ResponseID: "br_1", Hit: true, Score: 579, ReasonCodes: []string{"PUBLIC_RECORD"}}, schemas.DecisionDeclined, "SCORE_BELOW_MIN,PUBLIC_RECORD"},
		{bureau.Report{ResponseID: "br_1", Hit: true, Score: 600, ReasonCodes: []string{"HIGH_UTILIZATION"}}, schemas.DecisionRefer, "NEW_APPLICANT,SCORE_MARGINAL,HIGH_UTILIZATION"},
		{bureau.Report{ResponseID: "br_1", Hit: true, Score: 820, ReasonCodes: []string{}}, schemas.DecisionRefer, "NEW_APPLICANT"},
	} {
		d := p.ScoreBureau(a, tc.rep)
		if d.Decision != tc.decision || strings.Join(d.ReasonCodes, ",") != tc.reasons || d.Basis != schemas.BasisCreditBureau ||
			*d.BureauResponseID != "br_1" || d.Score != tc.rep.Score || d.Customer360Version != nil {
			t.Errorf("%+v: got %+v", tc.rep, d)
		}
	}
	f := p.Fallback(a, ReasonBureauTimeout)
	if f.Decision != schemas.DecisionRefer || strings.Join(f.ReasonCodes, ",") != "BUREAU_TIMEOUT" || f.Basis != schemas.BasisFallback {
		t.Errorf("fallback: %+v", f)
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, p := range []Policy{{MinScore: 700, ReferScore: 650}, {MinScore: 100}, {MaxUtilizationPct: 101}, {LoanTermMonths: -1}} {
		if err := p.WithDefaults().Validate(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if err := (Policy{}).WithDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
}

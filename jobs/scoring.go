package jobs

import (
	"errors"
	"fmt"
	"time"

	"github.com/loanflow/loanflow/connectors/bureau"
	"github.com/loanflow/loanflow/schemas"
)

// Reason codes of decisions, most important first within a decision.
const (
	// Adverse (DECLINED) reasons.
	ReasonCustomerNotActive = "CUSTOMER_NOT_ACTIVE"
	ReasonDelinquent        = "DELINQUENT"
	ReasonScoreBelowMin     = "SCORE_BELOW_MIN"
	ReasonLimitExceeded     = "LIMIT_EXCEEDED"
	// REFER reasons.
	ReasonRiskTierVeryHigh   = "RISK_TIER_VERY_HIGH"
	ReasonRiskTierUnknown    = "RISK_TIER_UNKNOWN"
	ReasonScoreMarginal      = "SCORE_MARGINAL"
	ReasonHighUtilization    = "HIGH_UTILIZATION"
	ReasonNewApplicant       = "NEW_APPLICANT"
	ReasonNoBureauFile       = "NO_BUREAU_FILE"
	ReasonBureauTimeout      = "BUREAU_TIMEOUT"
	ReasonBureauUnavailable  = "BUREAU_UNAVAILABLE"
	ReasonBureauRejected     = "BUREAU_REJECTED"
	ReasonApplicationTooLate = "APPLICATION_TOO_LATE"
	// ReasonApplicantMismatch: the applicant's SSN is not the named
	// customer's (their blind indexes differ).
	ReasonApplicantMismatch = "APPLICANT_MISMATCH"
	// ReasonApplicantUnverified: the applicant could not be compared with
	// the named customer (the database did not answer): refer, never
	// decide on a customer's data unverified.
	ReasonApplicantUnverified = "APPLICANT_UNVERIFIED"
)

// Policy holds the scoring thresholds. The rules (see doc.go) are simple,
// deterministic and the same for every task.
type Policy struct {
	// MinScore: below it an application is DECLINED. Default 580.
	MinScore int32
	// ReferScore: below it (and at least MinScore) it is referred. Default
	// 660.
	ReferScore int32
	// MaxUtilizationPct: a known customer whose balance plus the amount
	// would exceed this percentage of the credit limit is referred.
	// Default 90.
	MaxUtilizationPct int64
	// LoanTermMonths is the term of the loans approvals create. Default 12.
	LoanTermMonths int
}

// WithDefaults returns p with zero fields defaulted.
func (p Policy) WithDefaults() Policy {
	if p.MinScore == 0 {
		p.MinScore = 580
	}
	if p.ReferScore == 0 {
		p.ReferScore = 660
	}
	if p.MaxUtilizationPct == 0 {
		p.MaxUtilizationPct = 90
	}
	if p.LoanTermMonths == 0 {
		p.LoanTermMonths = 12
	}
	return p
}

// Validate reports what is wrong with p (after defaults).
func (p Policy) Validate() error {
	switch {
	case p.MinScore < bureau.MinScore || p.ReferScore > bureau.MaxScore || p.MinScore > p.ReferScore:
		return fmt.Errorf("jobs: policy scores: want %d <= min_score (%d) <= refer_score (%d) <= %d", bureau.MinScore, p.MinScore, p.ReferScore, bureau.MaxScore)
	case p.MaxUtilizationPct <= 0 || p.MaxUtilizationPct > 100:
		return fmt.Errorf("jobs: policy max_utilization_pct %d: want 1..100", p.MaxUtilizationPct)
	case p.LoanTermMonths <= 0:
		return errors.New("jobs: policy loan_term_months must be positive")
	}
	return nil
}

// verdict collects adverse and refer reasons; the decision follows.
type verdict struct {
	decline, refer []string
}

func (v verdict) decision() (schemas.Decision, []string) {
	switch {
	case len(v.decline) > 0:
		return schemas.DecisionDeclined, v.decline
	case len(v.refer) > 0:
		return schemas.DecisionRefer, v.refer
	}
	return schemas.DecisionApproved, []string{}
}

// ScoreCustomer decides an application of a known customer against the
// customer's customer_360 row as of the application's event time.
func (p Policy) ScoreCustomer(app schemas.LoanApplication, row schemas.Customer360) (schemas.LoanDecision, error) {
	avail, err := row.CreditLimit.Sub(row.CurrentBalance)
	if err != nil {
		return schemas.LoanDecision{}, fmt.Errorf("available credit of customer %s: %w", row.CustomerID, err)
	}
	var v verdict
	if row.Status != "ACTIVE" {
		v.decline = append(v.decline, ReasonCustomerNotActive)
	}
	if row.Delinquent {
		v.decline = append(v.decline, ReasonDelinquent)
	}
	if row.Score < p.MinScore {
		v.decline = append(v.decline, ReasonScoreBelowMin)
	}
	if app.Amount.Cmp(avail) > 0 {
		v.decline = append(v.decline, ReasonLimitExceeded)
	}
	switch {
	case row.RiskTier == schemas.RiskTierVeryHigh:
		v.refer = append(v.refer, ReasonRiskTierVeryHigh)
	case !schemas.ValidRiskTier(row.RiskTier):
		v.refer = append(v.refer, ReasonRiskTierUnknown)
	}
	if row.Score >= p.MinScore && row.Score < p.ReferScore {
		v.refer = append(v.refer, ReasonScoreMarginal)
	}
	high, err := p.overUtilized(app.Amount, row)
	if err != nil {
		return schemas.LoanDecision{}, err
	}
	if high {
		v.refer = append(v.refer, ReasonHighUtilization)
	}
	d := baseDecision(app)
	d.Decision, d.ReasonCodes = v.decision()
	d.Score, d.AvailableCredit, d.Basis = row.Score, avail, schemas.BasisCustomer360
	d.CustomerID = &row.CustomerID
	version := row.Version
	d.Customer360Version = &version
	return d, nil
}

// overUtilized: (balance + amount) × 100 > limit × MaxUtilizationPct,
// in exact cents.
func (p Policy) overUtilized(amount schemas.Decimal, row schemas.Customer360) (bool, error) {
	used, err := row.CurrentBalance.Add(amount)
	if err != nil {
		return false, err
	}
	u, err1 := used.Rescale(2)
	l, err2 := row.CreditLimit.Rescale(2)
	if err := errors.Join(err1, err2); err != nil {
		return false, err
	}
	if l.Unscaled() <= 0 {
		return true, nil
	}
	// Cents stay below 10^16 (decimal(18,2)), so ×100 fits in an int64.
	return u.Unscaled()*100 > l.Unscaled()*p.MaxUtilizationPct, nil
}

// ScoreBureau decides an application of an applicant who is not a
// customer (or was not one at the application's time) from a bureau
// report. Such an applicant has no customer record to book a loan
// against, so the best outcome is REFER (NEW_APPLICANT): an underwriter
// onboards the customer; low scores are DECLINED.
func (p Policy) ScoreBureau(app schemas.LoanApplication, rep bureau.Report) schemas.LoanDecision {
	var v verdict
	switch {
	case !rep.Hit:
		v.refer = append(v.refer, ReasonNoBureauFile)
	case rep.Score < p.MinScore:
		v.decline = append(append(v.decline, ReasonScoreBelowMin), rep.ReasonCodes...)
	default:
		v.refer = append(v.refer, ReasonNewApplicant)
		if rep.Score < p.ReferScore {
			v.refer = append(v.refer, ReasonScoreMarginal)
		}
		v.refer = append(v.refer, rep.ReasonCodes...)
	}
	d := baseDecision(app)
	d.Decision, d.ReasonCodes = v.decision()
	d.Score, d.Basis = rep.Score, schemas.BasisCreditBureau
	id := rep.ResponseID
	d.BureauResponseID = &id
	return d
}

// Fallback refers an application the bureau could not answer for.
func (p Policy) Fallback(app schemas.LoanApplication, reason string) schemas.LoanDecision {
	d := baseDecision(app)
	d.Decision, d.ReasonCodes, d.Basis = schemas.DecisionRefer, []string{reason}, schemas.BasisFallback
	return d
}

func baseDecision(app schemas.LoanApplication) schemas.LoanDecision {
	return schemas.LoanDecision{
		ApplicationID: app.ApplicationID, LenderID: app.LenderID, CustomerID: app.CustomerID,
		Amount: app.Amount, Currency: app.Currency, AvailableCredit: schemas.NewDecimal(0, 2),
		EventTime: app.EventTime.UTC().Truncate(time.Millisecond), ReasonCodes: []string{},
	}
}

package schemas

import "slices"

// The vocabularies below are strings in the records (a new value must never
// make a record unreadable), but one fixed set for every producer and
// consumer: the API accepts only these, the jobs decide and aggregate on
// them, and tests check that each side handles every value.

// Loan statuses (loans.status, LoanUpdatedEvent old_status/new_status).
const (
	LoanStatusActive     = "ACTIVE"
	LoanStatusDelinquent = "DELINQUENT"
	LoanStatusDefaulted  = "DEFAULTED"
	LoanStatusPaid       = "PAID"
	LoanStatusChargedOff = "CHARGED_OFF"
)

// LoanStatuses lists every loan status.
var LoanStatuses = []string{LoanStatusActive, LoanStatusDelinquent, LoanStatusDefaulted, LoanStatusPaid, LoanStatusChargedOff}

// LoanStatusOpen reports whether a loan in status s still counts as
// outstanding (portfolio active_loans and outstanding_balance): every
// status but PAID and CHARGED_OFF, which are final.
func LoanStatusOpen(s string) bool {
	return s != LoanStatusPaid && s != LoanStatusChargedOff
}

// Risk tiers (customers.risk_tier, Customer360 risk_tier), lowest risk
// first.
const (
	RiskTierLow      = "LOW"
	RiskTierMedium   = "MEDIUM"
	RiskTierHigh     = "HIGH"
	RiskTierVeryHigh = "VERY_HIGH"
)

// RiskTiers lists every risk tier.
var RiskTiers = []string{RiskTierLow, RiskTierMedium, RiskTierHigh, RiskTierVeryHigh}

// ValidLoanStatus reports whether s is one of LoanStatuses.
func ValidLoanStatus(s string) bool { return slices.Contains(LoanStatuses, s) }

// ValidRiskTier reports whether s is one of RiskTiers.
func ValidRiskTier(s string) bool { return slices.Contains(RiskTiers, s) }

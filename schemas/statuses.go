package schemas

import "slices"

// The vocabularies below are strings in the records (a new value must never
// make a record unreadable), but one fixed set for every producer and
// consumer: the API accepts only these, the jobs decide on them, and tests
// check that each side handles every value.

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

// ValidRiskTier reports whether s is one of RiskTiers.
func ValidRiskTier(s string) bool { return slices.Contains(RiskTiers, s) }

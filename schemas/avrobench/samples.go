package avrobench

import (
	"time"

	"github.com/loanflow/loanflow/schemas"
)

func ptr[T any](v T) *T { return &v }

var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535_000_000, time.UTC)

// SampleLoanApplication is a typical application, every field set.
func SampleLoanApplication() schemas.LoanApplication {
	return schemas.LoanApplication{
		ApplicationID:    "5b1f0c1e-7d7a-4d8e-9a51-2d2f3c0b9e11",
		POSTerminalID:    "pos-0042",
		LenderID:         "lender-7",
		CustomerID:       ptr("cust-1001"),
		Amount:           schemas.MustParseDecimal("2499.99"),
		Currency:         "USD",
		EventTime:        t0,
		ApplicantDetails: make([]byte, 180), // Tink AES-256-GCM ciphertext of ~150 bytes of JSON
		SSNIndex:         make([]byte, 32),  // HMAC-SHA256
	}
}

// SampleCustomer360 is a typical customer_360 row.
func SampleCustomer360() schemas.Customer360 {
	return schemas.Customer360{
		CustomerID: "cust-1001", Status: "ACTIVE", RiskTier: "LOW", Score: 742,
		CreditLimit: schemas.MustParseDecimal("15000.00"), CurrentBalance: schemas.MustParseDecimal("2345.67"),
		Version: 17, UpdatedAt: t0, SourceLSN: ptr(int64(0x16B3748)),
	}
}

// SampleLoanDecision is a typical declined decision with two reasons.
func SampleLoanDecision() schemas.LoanDecision {
	return schemas.LoanDecision{
		ApplicationID: "5b1f0c1e-7d7a-4d8e-9a51-2d2f3c0b9e11", LenderID: "lender-7", CustomerID: ptr("cust-1001"),
		Decision: schemas.DecisionDeclined, ReasonCodes: []string{"SCORE_BELOW_MIN", "LIMIT_EXCEEDED"}, Score: 512,
		Amount: schemas.MustParseDecimal("2499.99"), Currency: "USD", AvailableCredit: schemas.MustParseDecimal("1000.50"),
		Basis: schemas.BasisCustomer360, Customer360Version: ptr(int64(17)),
		EventTime: t0, DecidedAt: t0.Add(42 * time.Millisecond), EngineLatencyMs: 42,
	}
}

// SampleLoanUpdatedEvent is a balance change that made a loan delinquent.
func SampleLoanUpdatedEvent() schemas.LoanUpdatedEvent {
	return schemas.LoanUpdatedEvent{
		LoanID: "loan-77", ApplicationID: ptr("5b1f0c1e-7d7a-4d8e-9a51-2d2f3c0b9e11"), CustomerID: "cust-1001",
		LenderID: "lender-7", Change: schemas.LoanUpdated, OldStatus: ptr("ACTIVE"), NewStatus: ptr("DELINQUENT"),
		Amount: schemas.MustParseDecimal("2499.99"), Currency: "USD", OldBalance: ptr(schemas.MustParseDecimal("2000.00")),
		Balance: schemas.MustParseDecimal("1900.00"), DaysPastDue: 31, EventTime: t0, SourceLSN: 0x16B3748,
	}
}

// SamplePortfolioMetric is one lender's one-minute window.
func SamplePortfolioMetric() schemas.PortfolioMetric {
	return schemas.PortfolioMetric{
		LenderID: "lender-7", WindowStart: t0.Truncate(time.Minute), WindowEnd: t0.Truncate(time.Minute).Add(time.Minute),
		Currency: "USD", Originations: 12, OriginatedAmount: schemas.MustParseDecimal("31000.00"),
		Approvals: 12, Declines: 3, Refers: 1, ActiveLoans: 900,
		OutstandingBalance: schemas.MustParseDecimal("1234567.89"), DelinquentBalance: schemas.MustParseDecimal("23456.78"),
		DelinquencyRate: 0.019, DefaultRate: 0.001, ComputedAt: t0,
	}
}

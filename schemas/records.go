package schemas

import "time"

// The Go types below mirror the .avsc files in schemas/avro field for field
// (TestGoTypesMatchSchemas fails when they drift). Avro field names are in
// the avro tags; the json tags give the same snake_case names for HTTP
// bodies and logs. Money is Decimal, timestamps are UTC time.Time at
// millisecond precision, optional fields are pointers.

// LoanApplication is the value of topic loan_applications
// (schemas/avro/loan_application.avsc).
type LoanApplication struct {
	ApplicationID string    `avro:"application_id" json:"application_id"`
	POSTerminalID string    `avro:"pos_terminal_id" json:"pos_terminal_id"`
	LenderID      string    `avro:"lender_id" json:"lender_id"`
	CustomerID    *string   `avro:"customer_id" json:"customer_id,omitempty"`
	Amount        Decimal   `avro:"amount" json:"amount"`
	Currency      string    `avro:"currency" json:"currency"`
	EventTime     time.Time `avro:"event_time" json:"event_time"`
	// ApplicantDetails is AES-256-GCM ciphertext of the applicant's PII.
	ApplicantDetails []byte `avro:"applicant_details" json:"applicant_details"`
	// SSNIndex is the keyed blind index of the applicant's SSN.
	SSNIndex []byte `avro:"ssn_index" json:"ssn_index"`
}

// Customer360 is the value of the compacted topic customer_360, keyed by
// customer_id (schemas/avro/customer_360.avsc).
type Customer360 struct {
	CustomerID     string    `avro:"customer_id" json:"customer_id"`
	Status         string    `avro:"status" json:"status"`
	RiskTier       string    `avro:"risk_tier" json:"risk_tier"`
	Score          int32     `avro:"score" json:"score"`
	CreditLimit    Decimal   `avro:"credit_limit" json:"credit_limit"`
	CurrentBalance Decimal   `avro:"current_balance" json:"current_balance"`
	Delinquent     bool      `avro:"delinquent" json:"delinquent"`
	Version        int64     `avro:"version" json:"version"`
	UpdatedAt      time.Time `avro:"updated_at" json:"updated_at"`
	SourceLSN      *int64    `avro:"source_lsn" json:"source_lsn,omitempty"`
}

// Decision is the outcome of a loan application (Avro enum
// io.loanflow.lending.Decision).
type Decision string

// Decisions.
const (
	DecisionApproved Decision = "APPROVED"
	DecisionDeclined Decision = "DECLINED"
	DecisionRefer    Decision = "REFER"
)

// DecisionBasis says what data a decision was made against (Avro enum
// io.loanflow.lending.DecisionBasis).
type DecisionBasis string

// Decision bases.
const (
	BasisCustomer360  DecisionBasis = "CUSTOMER_360"
	BasisCreditBureau DecisionBasis = "CREDIT_BUREAU"
	BasisFallback     DecisionBasis = "FALLBACK"
)

// LoanDecision is the value of topic loan_decisions
// (schemas/avro/loan_decision.avsc).
type LoanDecision struct {
	ApplicationID      string        `avro:"application_id" json:"application_id"`
	LenderID           string        `avro:"lender_id" json:"lender_id"`
	CustomerID         *string       `avro:"customer_id" json:"customer_id,omitempty"`
	Decision           Decision      `avro:"decision" json:"decision"`
	ReasonCodes        []string      `avro:"reason_codes" json:"reason_codes"`
	Score              int32         `avro:"score" json:"score"`
	Amount             Decimal       `avro:"amount" json:"amount"`
	Currency           string        `avro:"currency" json:"currency"`
	AvailableCredit    Decimal       `avro:"available_credit" json:"available_credit"`
	Basis              DecisionBasis `avro:"basis" json:"basis"`
	Customer360Version *int64        `avro:"customer_360_version" json:"customer_360_version,omitempty"`
	BureauResponseID   *string       `avro:"bureau_response_id" json:"bureau_response_id,omitempty"`
	EventTime          time.Time     `avro:"event_time" json:"event_time"`
	DecidedAt          time.Time     `avro:"decided_at" json:"decided_at"`
	EngineLatencyMs    int64         `avro:"engine_latency_ms" json:"engine_latency_ms"`
}

// LoanChange is the kind of change to a loan row (Avro enum
// io.loanflow.lending.LoanChange).
type LoanChange string

// Loan changes.
const (
	LoanCreated LoanChange = "CREATED"
	LoanUpdated LoanChange = "UPDATED"
	LoanDeleted LoanChange = "DELETED"
)

// LoanUpdatedEvent is one change of a loan, derived from the CDC stream of
// the loans table (schemas/avro/loan_updated_event.avsc).
type LoanUpdatedEvent struct {
	LoanID        string     `avro:"loan_id" json:"loan_id"`
	ApplicationID *string    `avro:"application_id" json:"application_id,omitempty"`
	CustomerID    string     `avro:"customer_id" json:"customer_id"`
	LenderID      string     `avro:"lender_id" json:"lender_id"`
	Change        LoanChange `avro:"change" json:"change"`
	OldStatus     *string    `avro:"old_status" json:"old_status,omitempty"`
	NewStatus     *string    `avro:"new_status" json:"new_status,omitempty"`
	Amount        Decimal    `avro:"amount" json:"amount"`
	Currency      string     `avro:"currency" json:"currency"`
	OldBalance    *Decimal   `avro:"old_balance" json:"old_balance,omitempty"`
	Balance       Decimal    `avro:"balance" json:"balance"`
	DaysPastDue   int32      `avro:"days_past_due" json:"days_past_due"`
	EventTime     time.Time  `avro:"event_time" json:"event_time"`
	SourceLSN     int64      `avro:"source_lsn" json:"source_lsn"`
}

// PortfolioMetric holds one lender's figures over one event-time window
// (schemas/avro/portfolio_metric.avsc).
type PortfolioMetric struct {
	LenderID           string    `avro:"lender_id" json:"lender_id"`
	WindowStart        time.Time `avro:"window_start" json:"window_start"`
	WindowEnd          time.Time `avro:"window_end" json:"window_end"`
	Currency           string    `avro:"currency" json:"currency"`
	Originations       int64     `avro:"originations" json:"originations"`
	OriginatedAmount   Decimal   `avro:"originated_amount" json:"originated_amount"`
	Approvals          int64     `avro:"approvals" json:"approvals"`
	Declines           int64     `avro:"declines" json:"declines"`
	Refers             int64     `avro:"refers" json:"refers"`
	ActiveLoans        int64     `avro:"active_loans" json:"active_loans"`
	OutstandingBalance Decimal   `avro:"outstanding_balance" json:"outstanding_balance"`
	DelinquentBalance  Decimal   `avro:"delinquent_balance" json:"delinquent_balance"`
	DelinquencyRate    float64   `avro:"delinquency_rate" json:"delinquency_rate"`
	DefaultRate        float64   `avro:"default_rate" json:"default_rate"`
	ComputedAt         time.Time `avro:"computed_at" json:"computed_at"`
}

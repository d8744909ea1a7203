package api

import "time"

// Application is a POS loan application as the API produces it.
type Application struct {
	ApplicationID    string
	POSTerminalID    string
	LenderID         string
	CustomerID       *string
	Amount           string // exact decimal, two places
	Currency         string
	EventTime        time.Time
	ApplicantDetails []byte // AES-256-GCM ciphertext
	SSNIndex         []byte // blind index
}

// Decision is a decision record as the API serves it.
type Decision struct {
	ApplicationID   string    `json:"application_id"`
	LenderID        string    `json:"lender_id"`
	CustomerID      *string   `json:"customer_id,omitempty"`
	Decision        string    `json:"decision"`
	ReasonCodes     []string  `json:"reason_codes"`
	Score           int32     `json:"score"`
	Amount          string    `json:"amount"`
	Currency        string    `json:"currency"`
	AvailableCredit string    `json:"available_credit"`
	Basis           string    `json:"basis"`
	DecidedAt       time.Time `json:"decided_at"`
	EngineLatencyMs int64     `json:"engine_latency_ms"`
}

// Metric is one lender's portfolio figures over one window.
type Metric struct {
	LenderID           string    `json:"lender_id"`
	WindowStart        time.Time `json:"window_start"`
	WindowEnd          time.Time `json:"window_end"`
	Currency           string    `json:"currency"`
	Originations       int64     `json:"originations"`
	OriginatedAmount   string    `json:"originated_amount"`
	Approvals          int64     `json:"approvals"`
	Declines           int64     `json:"declines"`
	Refers             int64     `json:"refers"`
	ActiveLoans        int64     `json:"active_loans"`
	OutstandingBalance string    `json:"outstanding_balance"`
	DelinquentBalance  string    `json:"delinquent_balance"`
	DelinquencyRate    float64   `json:"delinquency_rate"`
	DefaultRate        float64   `json:"default_rate"`
	ComputedAt         time.Time `json:"computed_at"`
}

// Codecs turns the API's records into Kafka record values and back. The
// production implementation is the Avro serde of package schemas with the
// Confluent framing (NewAvroCodecs).
type Codecs interface {
	EncodeApplication(Application) ([]byte, error)
	DecodeDecision([]byte) (Decision, error)
	DecodeMetric([]byte) (Metric, error)
}

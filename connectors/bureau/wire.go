package bureau

import (
	"errors"
	"time"
)

// Request is the body of POST /v1/credit-reports.
type Request struct {
	// ApplicationID is the subscriber's reference for the inquiry.
	ApplicationID string `json:"application_id"`
	// SSNIndex is the applicant's keyed SSN blind index (never the SSN).
	SSNIndex []byte `json:"ssn_index"`
	// PermissiblePurpose is the FCRA permissible-purpose code of the pull,
	// e.g. CREDIT_TRANSACTION. Required.
	PermissiblePurpose string `json:"permissible_purpose"`
	// SubscriberID is the lender pulling the report.
	SubscriberID string `json:"subscriber_id,omitempty"`
}

// Report is a credit report, the 200 response of POST /v1/credit-reports.
type Report struct {
	// ResponseID identifies this response; the same inquiry (applicant and
	// application) always gets the same id.
	ResponseID string `json:"response_id"`
	// Hit is false when the bureau has no credit file for the applicant;
	// Score and ReasonCodes are then empty.
	Hit bool `json:"hit"`
	// Score is the credit score, 300 to 850.
	Score int32 `json:"score,omitempty"`
	// ReasonCodes are the key factors lowering the score, most important
	// first (at most four).
	ReasonCodes []string `json:"reason_codes"`
	// GeneratedAt is when the report was produced.
	GeneratedAt time.Time `json:"generated_at"`
}

// Score bounds.
const (
	MinScore = 300
	MaxScore = 850
)

// Sentinel errors.
var (
	// ErrConfig: the configuration is invalid.
	ErrConfig = errors.New("bureau: invalid config")
	// ErrUnavailable: the bureau could not be reached, timed out or
	// answered 5xx or 429. Retryable.
	ErrUnavailable = errors.New("bureau: unavailable")
	// ErrRejected: the bureau refused the request (4xx other than 429):
	// retrying the same request cannot help.
	ErrRejected = errors.New("bureau: request rejected")
	// ErrBreakerOpen: the client's circuit breaker is open after repeated
	// failures; the call was not sent. Not retryable (the caller falls
	// back at once instead of queueing retries against a failing bureau).
	ErrBreakerOpen = errors.New("bureau: circuit breaker open")
)

// PermissiblePurposes are the FCRA §604-style purposes a pull may carry.
var PermissiblePurposes = map[string]bool{
	"CREDIT_TRANSACTION": true, "ACCOUNT_REVIEW": true, "COLLECTION": true, "CONSUMER_REQUEST": true, "INSURANCE": true,
}

// PurposeList names the permissible purposes for error messages.
func PurposeList() string {
	return "CREDIT_TRANSACTION, ACCOUNT_REVIEW, COLLECTION, CONSUMER_REQUEST, INSURANCE"
}

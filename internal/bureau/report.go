package bureau

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
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

// Bureau reason codes (key factors), in the order they are drawn from.
var reasonCodes = []string{
	"SERIOUS_DELINQUENCY",
	"HIGH_UTILIZATION",
	"TOO_MANY_INQUIRIES",
	"SHORT_CREDIT_HISTORY",
	"RECENT_COLLECTION",
	"FEW_ACCOUNTS_PAID_AS_AGREED",
	"NO_RECENT_INSTALLMENT_LOAN",
	"PUBLIC_RECORD",
}

// fileOf is the bureau's deterministic file for an applicant: whether it
// exists, the score and the reasons depend only on the SSN index.
func fileOf(ssnIndex []byte, noFileRate float64) (hit bool, score int32, reasons []string) {
	h := sha256.Sum256(append([]byte("loanflow-bureau-file-v1:"), ssnIndex...))
	u := float64(binary.BigEndian.Uint64(h[:8])>>11) / float64(1<<53)
	if u < noFileRate {
		return false, 0, []string{}
	}
	score = MinScore + int32(binary.BigEndian.Uint32(h[8:12])%(MaxScore-MinScore+1))
	n := reasonCount(score)
	reasons = make([]string, 0, n)
	used := map[int]bool{}
	for i := 12; len(reasons) < n && i < len(h); i++ {
		k := int(h[i]) % len(reasonCodes)
		if !used[k] {
			used[k] = true
			reasons = append(reasons, reasonCodes[k])
		}
	}
	return true, score, reasons
}

// reasonCount is how many key factors a score gets: lower scores, more.
func reasonCount(score int32) int {
	switch {
	case score < 580:
		return 4
	case score < 670:
		return 3
	case score < 740:
		return 2
	case score < 800:
		return 1
	}
	return 0
}

// responseID is the deterministic id of an inquiry's response.
func responseID(req Request) string {
	h := sha256.New()
	h.Write([]byte("loanflow-bureau-response-v1:"))
	h.Write(req.SSNIndex)
	h.Write([]byte{0})
	h.Write([]byte(req.ApplicationID))
	return "br_" + hex.EncodeToString(h.Sum(nil)[:12])
}

package bureau

import (
	wire "github.com/loanflow/loanflow/connectors/bureau"

	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
)

// Request and Report are the wire types of POST /v1/credit-reports,
// defined with the client (connectors/bureau).
type (
	Request = wire.Request
	Report  = wire.Report
)

// Score bounds.
const (
	MinScore = wire.MinScore
	MaxScore = wire.MaxScore
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

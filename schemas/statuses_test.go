package schemas

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestStatusDocs: the .avsc docs name exactly the loan statuses and risk
// tiers of statuses.go, so a reader of the schema sees the same names the
// API and the jobs use.
func TestStatusDocs(t *testing.T) {
	upper := regexp.MustCompile(`\b[A-Z][A-Z_]+[A-Z]\b`)
	// doc returns the upper-case words of a field's doc after marker.
	doc := func(schema, field, marker string) []string {
		var s struct {
			Fields []struct{ Name, Doc string }
		}
		if err := json.Unmarshal([]byte(schema), &s); err != nil {
			t.Fatal(err)
		}
		for _, f := range s.Fields {
			if f.Name == field {
				_, after, ok := strings.Cut(f.Doc, marker)
				if !ok {
					t.Fatalf("%s doc %q lacks %q", field, f.Doc, marker)
				}
				return upper.FindAllString(after, -1)
			}
		}
		t.Fatalf("no field %s", field)
		return nil
	}
	if got := doc(Customer360Schema, "risk_tier", "Risk tier"); !slices.Equal(got, RiskTiers) {
		t.Errorf("customer_360 risk_tier doc names %v, want %v", got, RiskTiers)
	}
	if got := doc(LoanUpdatedEventSchema, "old_status", "Loan statuses"); !slices.Equal(got, LoanStatuses) {
		t.Errorf("LoanUpdatedEvent old_status doc names %v, want %v", got, LoanStatuses)
	}
	var closed []string
	for _, s := range LoanStatuses {
		if !LoanStatusOpen(s) {
			closed = append(closed, s)
		}
	}
	if got := doc(PortfolioMetricSchema, "active_loans", "Loans"); !slices.Equal(got, closed) {
		t.Errorf("PortfolioMetric active_loans doc names %v, want the closed statuses %v", got, closed)
	}
}

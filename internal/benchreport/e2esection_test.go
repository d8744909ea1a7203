package benchreport

import "testing"

// TestSustainedGoalMet: the 3,000/s goal's verdict, case by case, against
// the words (≥ 3,000/s for 5 minutes, p99 < 1 s, 0 lost, 0
// duplicated).
func TestSustainedGoalMet(t *testing.T) {
	ok := func() loadResult {
		return loadResult{Rate: 2999.9, Accepted: 900000, LatencyMs: map[string]latencyStats{"ALL": {Count: 900000, P50: 200, P99: 667}}}
	}
	for _, c := range []struct {
		name       string
		rate, secs float64
		edit       func(*loadResult)
		want       bool
	}{
		{"schedule kept, last submission a little late", 3000, 300, func(*loadResult) {}, true},
		{"one application short of the schedule", 3000, 300, func(r *loadResult) { r.Accepted-- }, false},
		{"rejected", 3000, 300, func(r *loadResult) { r.Rejected = 1 }, false},
		{"lost", 3000, 300, func(r *loadResult) { r.Missing = 1 }, false},
		{"duplicated", 3000, 300, func(r *loadResult) { r.Duplicated = 1 }, false},
		{"p99 of a second", 3000, 300, func(r *loadResult) { r.LatencyMs["ALL"] = latencyStats{Count: 900000, P99: 1000} }, false},
		{"no decisions", 3000, 300, func(r *loadResult) { r.LatencyMs["ALL"] = latencyStats{} }, false},
		{"a minute only", 3000, 60, func(r *loadResult) { r.Accepted = 180000 }, false},
		{"2,000/s", 2000, 300, func(r *loadResult) { r.Accepted = 600000 }, false},
	} {
		r := ok()
		c.edit(&r)
		if got := sustainedGoalMet(c.rate, c.secs, r); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

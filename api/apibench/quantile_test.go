package apibench

import "testing"

// TestQuantileRanks: the q-th percentile of n observations is the
// ceil(n*q/100)-th, counted in integers (41,000 at p99.9: the 40,959th;
// float arithmetic made it the 40,960th and named the next bucket).
func TestQuantileRanks(t *testing.T) {
	h := hist{bounds: []float64{0.001, 0.002}, counts: []uint64{40959, 41000}, total: 41000}
	if got, want := h.quantile("x", 99.9), "x p99.9 in (0s, 1ms]"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	h = hist{bounds: []float64{0.001, 0.002}, counts: []uint64{98, 100}, total: 100}
	if got, want := h.quantile("x", 99), "x p99 in (1ms, 2ms]"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	h = hist{bounds: []float64{0.001, 0.002}, counts: []uint64{99, 100}, total: 100}
	if got, want := h.quantile("x", 99), "x p99 in (0s, 1ms]"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

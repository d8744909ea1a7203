package bureau

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	cb "github.com/loanflow/loanflow/connectors/bureau"
)

// TestClientBreaker: against a simulator that answers every request 503,
// the client's breaker opens after BreakerFailures calls; the next call
// fails at once with ErrBreakerOpen and never reaches the bureau (the
// simulator's own request count says so); after BreakerOpen one probe
// goes through. A rejection (400) never opens it. The client's metrics
// exist at 0 before any call.
func TestClientBreaker(t *testing.T) {
	cfg := fast()
	cfg.ErrorRate = 1
	s := start(t, cfg)
	reg := prometheus.NewRegistry()
	c, err := cb.NewClient(cb.ClientConfig{URL: s.URL(), Timeout: 5 * time.Second, BreakerFailures: 3, BreakerOpen: 200 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := testutil.CollectAndCount(reg, "loanflow_decisions_bureau_calls_total"); n != 6 {
		t.Fatalf("%d call-result series before any call, want 6 at 0", n)
	}
	ctx := context.Background()
	served := func() float64 { return testutil.ToFloat64(s.metrics.requests.WithLabelValues(outcomeError)) }
	req := cb.Request{ApplicationID: "a1", SSNIndex: index(1)}
	for i := range 3 {
		if _, err := c.CreditReport(ctx, req); !cb.IsRetryable(err) || errors.Is(err, cb.ErrBreakerOpen) {
			t.Fatalf("call %d: %v, want unavailable", i, err)
		}
	}
	if c.BreakerState() != "open" || served() != 3 {
		t.Fatalf("after 3 failures: breaker %s, simulator served %v errors", c.BreakerState(), served())
	}
	if _, err := c.CreditReport(ctx, req); !errors.Is(err, cb.ErrBreakerOpen) || cb.IsRetryable(err) {
		t.Fatalf("call with the breaker open: %v, want ErrBreakerOpen (not retryable)", err)
	}
	if served() != 3 {
		t.Fatalf("a call with the breaker open reached the bureau (%v errors served)", served())
	}
	if v := testutil.ToFloat64(c2g(t, reg, "loanflow_decisions_bureau_breaker_state")); v != 2 {
		t.Fatalf("breaker_state %v, want 2 (open)", v)
	}
	// After BreakerOpen a probe goes through (and fails: open again).
	deadline := time.Now().Add(30 * time.Second)
	for c.BreakerState() == "open" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := c.CreditReport(ctx, req); !cb.IsRetryable(err) || errors.Is(err, cb.ErrBreakerOpen) || served() != 4 {
		t.Fatalf("half-open probe: %v, %v served", err, served())
	}

	// Rejections are the bureau working: no breaker.
	c2, err := cb.NewClient(cb.ClientConfig{URL: s.URL(), BreakerFailures: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	for range 4 {
		if _, err := c2.CreditReport(ctx, cb.Request{ApplicationID: "a2"}); !errors.Is(err, cb.ErrRejected) {
			t.Fatalf("request without an SSN index: %v, want rejected", err)
		}
	}
	if c2.BreakerState() != "closed" {
		t.Fatalf("rejections opened the breaker (%s)", c2.BreakerState())
	}
}

// c2g finds a gauge by name in reg.
func c2g(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "copy"})
			g.Set(mf.GetMetric()[0].GetGauge().GetValue())
			return g
		}
	}
	t.Fatalf("no %s gathered", name)
	return nil
}

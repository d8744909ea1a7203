package jobs

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loanflow/loanflow/schemas"
)

// decisionMetrics are the decisions job's own Prometheus metrics: what it
// decided and how fast, and how its bureau calls fare beyond the client's
// own counters (fallbacks, retries). Every series a dashboard or alert
// uses exists at 0 from the start. They count decisions as the job makes
// them: a task restored from its last checkpoint decides the records
// after it again, so after a failure they can count a decision twice
// (loan_decisions itself has it once).
type decisionMetrics struct {
	decisions     *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	engineLatency *prometheus.HistogramVec
	fallbacks     *prometheus.CounterVec
	retries       prometheus.Counter

	mu       sync.Mutex
	inFlight map[string]bool // applications with a bureau call under way
}

var (
	decisionOutcomes = []schemas.Decision{schemas.DecisionApproved, schemas.DecisionDeclined, schemas.DecisionRefer}
	decisionBases    = []schemas.DecisionBasis{schemas.BasisCustomer360, schemas.BasisCreditBureau, schemas.BasisFallback}
	fallbackReasons  = []string{ReasonBureauTimeout, ReasonBureauUnavailable, ReasonBureauRejected}
)

func newDecisionMetrics(reg prometheus.Registerer) (*decisionMetrics, error) {
	latencyBuckets := []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60}
	m := &decisionMetrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "loanflow_decisions_total",
			Help: "Loan decisions made, by decision (APPROVED, DECLINED, REFER) and basis (CUSTOMER_360, CREDIT_BUREAU, FALLBACK)."},
			[]string{"decision", "basis"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "loanflow_decisions_latency_seconds",
			Help: "From an application's submission (its event time) to its decision, by basis.", Buckets: latencyBuckets}, []string{"basis"}),
		engineLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "loanflow_decisions_engine_latency_seconds",
			Help: "From an application's arrival in the job to its decision (engine_latency_ms), by basis.", Buckets: latencyBuckets}, []string{"basis"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "loanflow_decisions_bureau_fallbacks_total",
			Help: "Applications decided by the fallback policy because the bureau failed, by reason."}, []string{"reason"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "loanflow_decisions_bureau_retries_total",
			Help: "Bureau calls that retried an application's earlier failed call."}),
		inFlight: map[string]bool{},
	}
	for _, d := range decisionOutcomes {
		for _, b := range decisionBases {
			m.decisions.WithLabelValues(string(d), string(b))
		}
	}
	for _, b := range decisionBases {
		m.latency.WithLabelValues(string(b))
		m.engineLatency.WithLabelValues(string(b))
	}
	for _, r := range fallbackReasons {
		m.fallbacks.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.decisions, err = registered(reg, m.decisions); err != nil {
		return nil, err
	}
	if m.latency, err = registered(reg, m.latency); err != nil {
		return nil, err
	}
	if m.engineLatency, err = registered(reg, m.engineLatency); err != nil {
		return nil, err
	}
	if m.fallbacks, err = registered(reg, m.fallbacks); err != nil {
		return nil, err
	}
	if m.retries, err = registered(reg, m.retries); err != nil {
		return nil, err
	}
	return m, nil
}

// observe counts a decision on its way to loan_decisions.
func (m *decisionMetrics) observe(d schemas.LoanDecision) {
	basis := string(d.Basis)
	m.decisions.WithLabelValues(string(d.Decision), basis).Inc()
	if !d.EventTime.IsZero() && !d.DecidedAt.IsZero() {
		m.latency.WithLabelValues(basis).Observe(max(d.DecidedAt.Sub(d.EventTime), 0).Seconds())
	}
	m.engineLatency.WithLabelValues(basis).Observe((time.Duration(d.EngineLatencyMs) * time.Millisecond).Seconds())
}

// calling notes a bureau call for app; a second call while the first
// is not settled is a retry. The set holds at most the async operator's
// capacity of applications.
func (m *decisionMetrics) calling(app string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inFlight[app] {
		m.retries.Inc()
		return
	}
	m.inFlight[app] = true
}

// settled forgets app's calls; fallback is the reason when it fell back.
func (m *decisionMetrics) settled(app, fallback string) {
	m.mu.Lock()
	delete(m.inFlight, app)
	m.mu.Unlock()
	if fallback != "" {
		m.fallbacks.WithLabelValues(fallback).Inc()
	}
}

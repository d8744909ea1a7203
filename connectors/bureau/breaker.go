package bureau

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Call results, the label of loanflow_decisions_bureau_calls_total.
const (
	ResultOK          = "ok"
	ResultTimeout     = "timeout"
	ResultUnavailable = "unavailable"
	ResultRejected    = "rejected"
	ResultBreakerOpen = "breaker_open"
	ResultCancelled   = "cancelled"
)

// clientMetrics are the client's Prometheus metrics.
type clientMetrics struct {
	calls       *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	transitions *prometheus.CounterVec
}

func newClientMetrics(reg prometheus.Registerer, state func() float64) (*clientMetrics, error) {
	m := &clientMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "loanflow_decisions_bureau_calls_total",
			Help: "Credit-report calls by result (ok, timeout, unavailable, rejected, breaker_open, cancelled); each retry is a call."}, []string{"result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "loanflow_decisions_bureau_call_duration_seconds",
			Help: "Duration of credit-report calls sent to the bureau, by result.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 12)}, []string{"result"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "loanflow_decisions_bureau_breaker_transitions_total",
			Help: "Circuit breaker state changes, by the state entered."}, []string{"to"}),
	}
	for _, r := range []string{ResultOK, ResultTimeout, ResultUnavailable, ResultRejected, ResultBreakerOpen, ResultCancelled} {
		m.calls.WithLabelValues(r)
	}
	for _, s := range []string{"closed", "half-open", "open"} {
		m.transitions.WithLabelValues(s)
	}
	if reg == nil {
		return m, nil
	}
	st := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "loanflow_decisions_bureau_breaker_state",
		Help: "State of the bureau client's circuit breaker: 0 closed, 1 half-open, 2 open."}, state)
	for _, c := range []prometheus.Collector{m.calls, m.duration, m.transitions, st} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	return m, nil
}

// result classifies a call's error.
func result(err error) string {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, ErrBreakerOpen):
		return ResultBreakerOpen
	case errors.Is(err, context.Canceled):
		return ResultCancelled
	case IsTimeout(err):
		return ResultTimeout
	case IsRetryable(err):
		return ResultUnavailable
	default:
		return ResultRejected
	}
}

// newBreaker opens after failures consecutive unavailable answers, for
// open; a rejection or a cancellation is not the bureau failing.
func newBreaker(failures int, open time.Duration, log *slog.Logger, m *clientMetrics) *gobreaker.CircuitBreaker[Report] {
	return gobreaker.NewCircuitBreaker[Report](gobreaker.Settings{
		Name:        "bureau",
		MaxRequests: 1,
		Timeout:     open,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= uint32(failures) },
		IsSuccessful: func(err error) bool {
			return err == nil || !IsRetryable(err) || errors.Is(err, context.Canceled)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			m.transitions.WithLabelValues(to.String()).Inc()
			if to == gobreaker.StateOpen {
				log.Warn("bureau circuit breaker opened: credit-report calls fail fast and applicants get fallback decisions",
					"consecutive_failures", failures, "open_for", open.String())
			} else {
				log.Info("bureau circuit breaker state changed", "from", from.String(), "to", to.String())
			}
		},
	})
}

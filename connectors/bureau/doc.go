// Package bureau is the credit-bureau connector the decisions job uses to
// pull credit reports for applicants who are not (yet) customers. The
// simulator that stands in for a bureau locally is internal/bureau.
//
// Client.CreditReport sends one inquiry (POST /v1/credit-reports, the
// Request and Report wire types) with net/http under the caller's context
// and the client's Timeout. Errors wrap ErrUnavailable when another attempt
// may succeed (connection errors, timeouts, 5xx, 429), ErrRejected when it
// cannot (other 4xx, a malformed report) and ErrBreakerOpen when the
// client's circuit breaker refused the call; IsRetryable and IsTimeout
// classify them, StatusError carries an HTTP status.
//
// # Circuit breaker and metrics
//
// With ClientConfig.BreakerFailures > 0 the client opens a circuit breaker
// after that many consecutive unavailable answers: for BreakerOpen it
// refuses calls at once (ErrBreakerOpen, not retryable, so the job falls
// back instead of retrying against a failing bureau), then lets one call
// through to probe (half-open). Rejections are the bureau working and do
// not count. With ClientConfig.Registerer it serves (named after the
// decisions job, the process that serves them: the deploy tests map a
// metric's second name segment to the service scraped for it)
// loanflow_decisions_bureau_calls_total{result}, ..._call_duration_seconds,
// loanflow_decisions_bureau_breaker_state (0 closed, 1 half-open, 2 open) and
// ..._breaker_transitions_total{to}; every series exists at 0 from the
// start.
//
// # Goroutines
//
// The client starts none beyond net/http's connection handling; a call
// costs its caller's goroutine, never a blocked thread.
package bureau

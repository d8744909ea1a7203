// Package bureau is Loanflow's credit-bureau simulator, standing in for a
// bureau locally (loanflow bureau, loanflow dev). The client the decisions
// job uses, and the wire types both share, are connectors/bureau.
//
// # The simulator
//
//	s, err := bureau.New(bureau.Config{Listen: "127.0.0.1:8090"})
//	err = s.Run(ctx) // or s.Serve(ctx, ln); `loanflow bureau` runs it
//
// POST /v1/credit-reports takes {"application_id", "ssn_index" (base64 blind
// index, never an SSN), "permissible_purpose", "subscriber_id"} and answers
// {"response_id", "hit", "score", "reason_codes", "generated_at"}. The
// answer depends only on the inquiry: the score (300 to 850), the reason
// codes (more for lower scores, at most four) and whether the bureau has a
// file at all (NoFileRate of applicants, chosen by hash) come from a hash
// of the SSN index, and the response id from the SSN index and the
// application id, so a retried or replayed inquiry gets the same answer.
//
// What varies is the service, drawn per request from a seeded generator:
// a latency from LatencyMin to LatencyMax (uniform or log-normal; default
// 200ms to 2s), an ErrorRate of 503 answers and a TimeoutRate of requests
// that hang for Hang and then answer 504 (clients give up first). Bad
// requests (no blind index, a blind index of the wrong size, no permissible
// purpose) get a 400 problem+json; more than MaxInFlight requests at once
// get 429. GET /metrics serves Prometheus metrics
// (loanflow_bureau_requests_total and
// loanflow_bureau_request_duration_seconds by outcome,
// loanflow_bureau_in_flight_requests) and GET /healthz a liveness answer.
//
// # Goroutines
//
// Serve runs the HTTP server's goroutines until its context ends, then
// releases hanging requests and drains the rest for at most
// ShutdownTimeout.
package bureau

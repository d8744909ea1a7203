// Package apibench measures the API against its goals with open-loop load
// (requests are sent on a fixed schedule and latency is measured from the
// scheduled time, so a slow server cannot hide queueing), beside baselines
// measured in the same run: raw go-redis GET, a PostgreSQL point select,
// and pgbench's simple-update TPS.
//
// Run seeds its own lender, customers and loans through a running
// api.Server, so the project's `loanflow bench` command and `go test
// -bench` both call it. Durations and rates are configurable so a short
// run works in development. Run owns every goroutine it starts and returns
// when they end.
package apibench

// Package apibench measures the API against its goals with open-loop load
// (requests are sent on a fixed schedule and latency is measured from the
// scheduled time, so a slow server cannot hide queueing), beside baselines
// measured in the same run: raw go-redis GET, a PostgreSQL point select,
// pgbench's simple-update TPS, and an open-loop GET /healthz at the lookup
// rate (what the in-process load generator, net/http and the machine cost
// without any server work). Each open-loop row also reports the p99 the
// server measured itself (handler time, from its histogram), CPU per
// request of this process, PostgreSQL and Redis, and how many cores the
// whole machine was using, including processes that are not the
// benchmark's: the figures of a shared or saturated machine say so.
//
// With Config.LoadCommand the open-loop phases run in a load-generator
// process of their own (`loanflow bench-api-load`, Generate), whose client
// is lean on purpose: a plain HTTP/1.1 client (rawClient) whose request's
// goroutine writes and reads its own keep-alive connection, as wrk's event
// loop does, instead of net/http's Transport and its two goroutines per
// connection. With net/http the generator took 0.36 of the machine's 2
// cores at 5,000 lookups/s and its /healthz floor was p99 1.9 ms; with
// rawClient 0.07 cores and 1.4 ms (docs/design.md).
//
// Run seeds its own lender, customers and loans through a running
// api.Server, so the project's `loanflow bench` command and `go test
// -bench` both call it. Durations and rates are configurable so a short
// run works in development. Run owns every goroutine it starts and returns
// when they end.
package apibench

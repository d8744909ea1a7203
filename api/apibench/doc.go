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
// process of their own (`loanflow bench-api-load`, Generate). Either way
// the requests go through a lean client (rawClient): a plain HTTP/1.1
// client whose request goroutine writes and reads its own kept-alive
// connection, as wrk's event loop does, instead of net/http's Transport
// and its two goroutines per connection; Config.Client = ClientNetHTTP
// (`loanflow bench --api-client net/http`) measures with net/http's for
// comparison (docs/design.md, "The load generator is lean").
//
// Run seeds its own lender, customers and loans through a running
// api.Server, so the project's `loanflow bench` command and `go test
// -bench` both call it. Durations and rates are configurable so a short
// run works in development. Run owns every goroutine it starts and returns
// when they end.
package apibench

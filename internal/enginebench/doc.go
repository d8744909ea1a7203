// Package enginebench measures the dataflow engine against baselines run in
// the same process, for `loanflow bench` and `go test -bench`: the stateless
// chain, a keyed window over 100k keys in Pebble, the temporal join against
// a 1M-key table, async I/O efficiency at 10,000 calls in flight, Kafka
// passthrough against raw franz-go, checkpoint overhead and recovery time.
//
// Each scenario returns a Result with the engine's figure, the baseline's,
// their ratio and the goal. Nothing here asserts timing; the report states
// whether a goal was met.
package enginebench

// Package peerbench runs Loanflow beside its peers on the same machine, the
// same broker and the same input, for `loanflow bench --peers`: Kafka
// Streams and Flink for a keyed tumbling-window count, an event-time
// stream-table join and recovery after SIGKILL, and Debezium embedded for
// PostgreSQL CDC into Kafka.
//
// The peers are small Maven projects under bench/peers (Java 17); Build
// compiles each one and copies its dependencies into its target directory
// (never committed). Every side, Loanflow included, runs as its own process
// started by the harness; a run is timed from that process's start to the
// moment an independent read_committed consumer has seen the last output
// record, and its CPU time is read from /proc/PID/stat at that moment. The
// figures go to BENCHMARKS.md; nothing here asserts a timing.
package peerbench

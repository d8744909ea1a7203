// Package kafka runs Loanflow jobs on Kafka: typed sources and sinks, and
// the worker runtime that executes a job's tasks with exactly-once
// checkpoints and scales out through a consumer group.
//
// # Tasks and scale-out
//
// A job's plan splits into subtopologies at repartitions; a task is one
// partition index of a subtopology's (co-partitioned) input topics. Every
// worker process of a job joins the consumer group loanflow-<job>; the
// group's range assignment gives each worker the same partition indexes of
// every co-partitioned topic, hence whole tasks. Starting a worker
// rebalances; a dead worker's tasks move to the others.
//
// # Checkpoints
//
// With ExactlyOnce, a checkpoint is one Kafka transaction per commit
// interval carrying the tasks' outputs, their state changelog records
// (compacted <job>-<operator>-changelog topics) and their consumed offsets,
// committed with the group's metadata so a fenced zombie cannot commit
// (KIP-447). Each task's Pebble state is updated only after the transaction
// commits and records the changelog offsets it reflects. Restore is local
// Pebble plus the changelog tail, or the whole changelog on a fresh worker;
// a versioned table built from a compacted source topic replays that topic.
// Rebalances are allowed only right after a checkpoint, so a task commits
// before it is revoked. See docs/design.md for the protocol and its lock
// order.
//
// A transaction its coordinator ended without a marker on some partition
// (a single Kafka node restarted after a crash leaves them) is closed the
// way the coordinator's own log, __transaction_state, says it ended
// (hanging.go, txnlog.go): by a starting worker for its own earlier
// incarnations, and by a restore whose changelog stays blocked.
//
// # Goroutines
//
// Worker.Run owns everything: the polling goroutine (which is the caller's)
// owns the franz-go clients and the checkpoint protocol; each task has one
// goroutine that owns the task and its state, fed through a bounded queue
// (backpressure); a task whose async operator is full
// (pipeline.Task.Backpressured) has its input partitions paused until it
// has room, while checkpoints go on; async operators own their call
// goroutines. Each task's TTL sweep starts a pass at most every
// SweepInterval. Run returns after all of them stopped.
//
// # Errors
//
// Undecodable records and records a user function rejects go to
// dlq.<job> with the error, topic, partition and offset in headers, and the
// job goes on. Configuration errors (co-partitioned topics with different
// partition counts, a changelog with the wrong count) stop Run before it
// consumes. A fenced producer, or a task that keeps failing, stops Run with
// an error; a supervisor restarts the worker.
package kafka

// Package operators holds Loanflow's dataflow operators, built on the
// extension point of package pipeline (pipeline.AddOperator): Map, FlatMap,
// Filter, Split, keyed Process functions with state and timers, event-time
// windows (tumbling, sliding, session) with allowed lateness and a late-data
// side output, the temporal join against a versioned table, and async I/O.
//
// Operators that change the element type are functions, since Go methods
// cannot take type parameters:
//
//	scored := operators.Map(apps, "score", func(a App) (Scored, error) { ... })
//
// # Windows and lateness
//
// A record joins each of its windows whose maxTimestamp + AllowedLateness
// is still after the watermark; a record that joins none goes to the Late
// side output (or is counted as dropped). Session windows merge first and
// judge lateness on the merged window, as Flink's MergingWindowSet does: a
// record whose own [t, t+gap) is behind the watermark but that falls into
// a session not yet cleaned up extends it. Every window's state (including
// a window first created by a late record within the allowed lateness) is
// removed at maxTimestamp + AllowedLateness, or when it fires without
// allowed lateness.
//
// # Temporal join: as of event time, or lookup
//
// TemporalJoin answers a probe with the table version valid at the probe's
// event time, holding it until the table side's watermark passes that time
// (FOR SYSTEM_TIME AS OF). With TemporalJoinSpec.Lookup it answers at once
// with the newest version delivered so far and keeps only that version per
// key, as Flink's lookup join does: lower latency, an answer that depends
// on arrival order.
//
// # Ownership
//
// Every operator instance belongs to one task and runs on that task's
// goroutine; the async operator also starts one goroutine per call in
// flight, which it owns and whose results it hands back to the task
// goroutine. Nothing here is shared between tasks but an async Limiter,
// whose slots the operators given it share. A record that finds Capacity
// calls in flight waits in the async operator, which reports backpressure
// (pipeline.Context.SetWaiting) instead of blocking the task: the runtime
// stops feeding the task and goes on checkpointing (an in-process driver,
// pipeline.Local, blocks instead once pipeline.TaskConfig.MaxWaitingRecords
// records wait, running completions meanwhile). The async operator's
// queue of records and watermarks stays within a few times Capacity
// entries (plus the records waiting) however long the stream runs.
//
// # Errors
//
// A user function's error sends the record to the job's dead-letter topic
// (with the error and the record's origin) unless it wraps
// pipeline.ErrRetryable, which fails the task so it restarts from its last
// checkpoint. Failures that happen after the record's own processing carry
// the failed input instead of a source record: an async call that failed
// every attempt (its input by InCodec), a window function that fails when
// the window fires (the window's contents by its accumulator codec) and a
// join of a probe that waited for the table (the probe by ProbeCodec). Bad configuration is reported by the builder's Validate,
// naming the operator.
package operators

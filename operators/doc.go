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
// # Ownership
//
// Every operator instance belongs to one task and runs on that task's
// goroutine; the async operator also starts one goroutine per call in
// flight, which it owns and whose results it hands back to the task
// goroutine. Nothing here is shared between tasks.
//
// # Errors
//
// A user function's error sends the record to the job's dead-letter topic
// (with the error and the record's origin) unless it wraps
// pipeline.ErrRetryable, which fails the task so it restarts from its last
// checkpoint. Bad configuration is reported by the builder's Validate,
// naming the operator.
package operators

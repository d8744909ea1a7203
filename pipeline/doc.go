// Package pipeline is the job API of Loanflow's dataflow engine: typed
// streams, sources, sinks, keying, side outputs, the operator extension
// point, the plan a runtime executes, and the local runtime used by tests
// and in-memory benchmarks.
//
// # Jobs are typed graphs
//
// A job declares its graph on a Builder:
//
//	b := pipeline.NewBuilder("decisions")
//	apps := kafka.Source(b, "applications", kafka.SourceConfig[App]{...})
//	byCustomer := pipeline.KeyBy(apps, "by-customer", func(a App) string { return a.CustomerID })
//	scored := operators.Map(byCustomer.Stream, "score", score)
//	kafka.Sink(scored, "decisions-out", kafka.SinkConfig[Decision]{...})
//
// Operators that change the element type are functions (Go methods cannot
// take type parameters). Builder.Validate reports every problem at once, each
// naming its operator: duplicate names, unconsumed outputs and side outputs
// (consume them, or Discard/DropSide them: records never vanish silently),
// missing codecs, key types without a codec.
//
// # Plans, subtopologies and tasks
//
// Builder.Plan splits the graph at repartitions (KeyBy without
// NoRepartition) into subtopologies. A task is one partition index of a
// subtopology's co-partitioned input topics and runs its whole operator
// chain on one goroutine, calling operators directly (no queue between
// chained operators). Plan.Resolve fixes the task counts from the topics'
// partition counts and rejects co-partitioned inputs that disagree.
//
// # Event time
//
// Sources derive per-partition watermarks with bounded out-of-orderness,
// after every record (so a replay judges lateness exactly as the first run
// did), and mark a partition idle after IdleTimeout without records.
// Multi-input operators take the minimum of their inputs that are not idle.
// Across a repartition, every writing task puts watermark markers (header
// "lf-wm") into every partition, and readers take the minimum over writers.
// Records carrying a heartbeat (see SourceSpec.Heartbeat) only move time.
//
// # Operators
//
// AddOperator and AddOperator2 are the extension point package operators is
// built on. An Operator runs on its task's goroutine and may implement
// TimerHandler (persistent event- and processing-time timers),
// WatermarkHandler (hold watermarks back), InputWatermarkHandler and
// WatermarkOwner (two-input operators that compute their own output
// watermark), Snapshotter (write memory into state at a checkpoint) and
// Drainer (receive work from other goroutines through Context.Wake).
//
// # Errors
//
// Context.HandleError decides what a failed record costs: an error wrapping
// ErrRetryable fails the task (the runtime restores it from its last
// checkpoint); any other sends a DeadLetter to the job's dead-letter topic
// with the error and its origin, and processing goes on. A dead letter names
// the source record being fed (DeadLetter.Source) only when the failure is
// part of processing that record: work set off by a watermark (timers,
// windows firing, held-back async results, waiting join probes) or run in
// Context.Detached carries no source. Operators that know the failed input
// pass its encoding, key and time to Context.HandleErrorValue instead
// (DeadLetter.Value, Key, Timestamp). A task that is restoring (replaying a
// source-backed table, SetRestoring) writes no dead letters and no output:
// the first run did. Validation and planning errors are returned before
// anything runs.
//
// # State expiry and size
//
// Task.ExpireState runs the state's TTL sweep (state.Store.Sweep) with a
// budget per call; the runtime calls it on its tick. Its deletions go out
// with the next checkpoint (NeedsCheckpoint turns true when they fill the
// cache), and each completed pass updates the state_live_entries and
// state_live_bytes gauges per operator and task (PublishMetrics).
//
// # Ownership
//
// A Task is owned by one goroutine of its runtime driver: the Kafka runtime
// (package connectors/kafka) or Local. Tasks own their operators; operators
// that start goroutines (async I/O) stop and wait for them in Close.
package pipeline

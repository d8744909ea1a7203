// Package state is the keyed state of Loanflow's dataflow engine: value,
// list and map state and timer queues, kept in Pebble, with a write cache in
// front so hot keys do not touch Pebble per record, and with processing-time
// TTL.
//
// # Concepts
//
// A Store is one task's state: one Pebble database in its own directory
// (the task's namespace; the job and task are in the path). Each operator
// registers named handles on it (Value, List, Map, Timers); a handle's
// entries are namespaced by a 4-byte id derived from the operator and state
// name, then by the record key (and, for map state, the user key).
//
// # Checkpoints
//
// Writes go to the cache only. Flush turns every dirty entry into a changelog
// mutation (handed to the caller, who writes it into the checkpoint's Kafka
// transaction) and stages the same mutation in a Pebble batch. Commit applies
// that batch, together with the offsets of the logs it reflects, only after
// the caller has made the checkpoint durable; Abort drops it and the cache.
// Pebble therefore never runs ahead of what Kafka committed, and records the
// changelog offsets it reflects (Offsets), so a restore replays only the
// changelog tail (Apply).
//
// Between Flush and Commit or Abort the store must not be read or written;
// the engine's task loop guarantees it and the store asserts it.
//
// # Ownership and errors
//
// A Store is not safe for concurrent use: its task's goroutine owns it.
// Close releases Pebble. Errors wrap ErrClosed, ErrFlushing or Pebble's own;
// all are fatal for the task (the engine restores it from the last
// checkpoint), none are retried in place.
package state

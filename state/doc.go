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
// # TTL and the sweep
//
// A handle with Spec.TTL stores each entry's expiry time (processing time)
// in a header before the value. A read of an expired entry deletes it. For
// entries never read again, Sweep deletes them in the background: each call
// reads up to a budget of committed entries in key order, resuming where the
// last call stopped, and turns expired ones into ordinary deletions (dirty
// entries), which the next checkpoint writes to Pebble and as tombstones to
// the changelog, so a restore from the changelog does not bring them back.
// A pass that deleted entries waits for the checkpoint that commits them
// before the next pass starts. The same passes count every handle's entries
// and bytes (Census, LiveEntries): the state-size figures the engine
// publishes.
//
// # Ownership and errors
//
// A Store is not safe for concurrent use: its task's goroutine owns it, and
// calls Sweep from that goroutine too (the store starts no goroutine).
// Close releases Pebble. Errors wrap ErrClosed, ErrFlushing or Pebble's own;
// all are fatal for the task (the engine restores it from the last
// checkpoint), none are retried in place.
package state

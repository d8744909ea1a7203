// Package audit appends to and verifies Loanflow's hash-chained audit log.
//
// Each row carries the hash of the row before it: hash = SHA-256(prev_hash
// || canonical(row)), where canonical length-prefixes every field (seq, at
// in UTC microseconds, actor, lender, action, resource, purpose, result,
// request id). Rows are numbered 1, 2, 3… without gaps; appenders serialize
// on a transaction-scoped advisory lock, so the chain order is the commit
// order and a rolled-back transaction leaves no row.
//
// Appending is one statement, audit_append (migration 00002), which takes
// the chain lock, reads the head and inserts the rows with their hashes
// inside PostgreSQL, so the lock is held only until the caller's commit and
// never across client round trips. Writes append inside the transaction of
// the write: Append with that pgx.Tx, or AppendSQL to put the call in the
// write's own statement (a data-modifying WITH that audits only the rows it
// changed, in one round trip). Hot write paths may instead queue their
// entries with PendSQL (audit_pending, migration 00003) in the write's
// transaction, without the chain lock; a Chainer moves committed queued
// entries into the chain in batches, one transaction and one lock per
// batch, so the chain order there is the chaining order, and the audit
// trail is audit_log plus the few entries still queued. Reads go through a
// Writer, which group-commits the entries of concurrent requests in one
// statement and returns to each caller only after its entry is committed,
// so a read is audited before its response is sent. The SQL and Go (ComputeHash) forms
// of the canonical row are checked against each other by the tests.
//
// Verify walks the chain in seq order and reports the first row whose
// stored hash, prev_hash or seq does not match.
//
// # Goroutines and errors
//
// Writer owns its flusher goroutines (WriterConfig.Flushers, started by
// NewWriter, ended by Close, which drains the queue first); a Chainer owns
// one goroutine (NewChainer to Close, which chains what is queued first). Append and Writer.Append return errors wrapped
// with "audit:"; a full Writer queue returns ErrBusy (retryable); a closed
// Writer returns ErrClosed.
package audit

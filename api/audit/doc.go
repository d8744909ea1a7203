// Package audit appends to and verifies Loanflow's hash-chained audit log.
//
// Each row carries the hash of the row before it: hash = SHA-256(prev_hash
// || canonical(row)), where canonical length-prefixes every field (seq, at
// in UTC microseconds, actor, lender, action, resource, purpose, result,
// request id). Rows are numbered 1, 2, 3… without gaps; appenders serialize
// on a transaction-scoped advisory lock, so the chain order is the commit
// order and a rolled-back transaction leaves no row.
//
// Writes append inside the transaction of the write (Append with that
// pgx.Tx). Reads go through a Writer, which group-commits the entries of
// concurrent requests in one transaction and returns to each caller only
// after its entry is durable, so a read is audited before its response is
// sent.
//
// Verify walks the chain in seq order and reports the first row whose
// stored hash, prev_hash or seq does not match.
//
// # Goroutines and errors
//
// Writer owns one goroutine (started by NewWriter, ended by Close, which
// drains the queue first). Append and Writer.Append return errors wrapped
// with "audit:"; a full Writer queue returns ErrBusy (retryable); a closed
// Writer returns ErrClosed.
package audit

// Package audit appends to and verifies Loanflow's keyed, hash-chained
// audit log.
//
// Each row carries the hash of the row before it: hash = HMAC-SHA-256(key,
// prev_hash || canonical(row)), where canonical length-prefixes every field
// (seq, at in UTC microseconds, actor, lender, action, resource, purpose,
// result, request id; ChainMessage) and the key is the primary key of the
// PII index keyset (KMS-wrapped; PostgreSQL never holds it), with the
// domain ChainDomain; key_id names the key. Whoever owns the database can
// edit a row and recompute every hash after it, but not the MACs:
// VerifyKeyed finds the edit. Rows written before migration 00006 keep
// their SHA-256 hashes (ComputeHash) and key_id NULL; the first keyed row
// (the cut-over, "audit.chain_keyed") covers the last of them, so the
// unkeyed prefix is fixed too, and VerifyKeyed refuses an unkeyed row after
// a keyed one or a chain without any keyed row. Rows are numbered 1, 2, 3…
// without gaps. A dropped tail is found against the signed heads anchored
// outside PostgreSQL (Anchor, VerifyAnchored).
//
// Only the Journal writes the chain (one per API server): a durable group
// commit. Journal.Append queues an entry and returns once the transaction
// holding its row has committed (or with the error when it did not): a
// read is audited before its response is sent. Its goroutine takes every
// entry queued during the previous commit, adds the write entries committed
// to audit_pending, computes their MACs from the chain's head (cached
// between batches) and appends the batch with one statement,
// audit_append_keyed (migration 00006): one round trip and one commit per
// batch. The statement takes the chain lock and checks the head; when
// another server moved it, it appends nothing and returns the head, and the
// batch is recomputed. It removes the queued entries it chains, and only if
// each is still queued exactly as given.
//
// Writes record their entries inside their own transaction, so a change is
// never committed without its entry: Append with the pgx.Tx, AppendSQL in
// the write's statement, or PendSQL; all three queue in audit_pending
// (audit_append queues since migration 00006). The audit trail is audit_log
// plus the few entries still queued (normally milliseconds; Journal.Flush
// chains them at once).
//
// # Goroutines and errors
//
// A Journal owns one goroutine (NewJournal to Close, which commits what is
// queued first). Errors are wrapped with "audit:"; a full Journal queue
// returns ErrBusy (retryable); a closed Journal returns ErrClosed.
package audit

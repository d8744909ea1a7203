// Package redis is Loanflow's Redis sink for cache invalidation: it applies
// batches of DEL and SET-with-TTL operations (e.g. DEL profile:{id} when a
// credit profile changes) with go-redis v9.
//
//	s, err := redis.New(redis.Config{URL: "redis://127.0.0.1:6379/0"})
//	err = s.Write(ctx, []redis.Op{{Key: "profile:42", Delete: true, Version: lsn}})
//
// The engine's sink interface wraps Write: a batch is one pipelined round
// trip; Write returns only after every operation was applied (or the first
// error).
//
// # Idempotency
//
// Replaying a batch, as a restarted job does after its last checkpoint,
// never leaves an older value in place of a newer one:
//
//   - An Op with a Version (for CDC: the change's LSN or commit LSN; any
//     number that grows with each write to the key) is applied by a Lua
//     script only if it is newer than the version last applied to that key,
//     which is stored beside it (<key>#v, expiring after VersionTTL). A
//     replayed or reordered older op is skipped; applying the same op twice
//     is a no-op.
//   - An Op without a Version is applied as is: DEL and SET of the same value
//     are idempotent by themselves, and a replay in order converges to the
//     last write.
//
// # Errors
//
// Connection errors and timeouts are returned wrapped in ErrUnavailable
// (retryable: the caller retries the batch, which is safe because it is
// idempotent). Invalid operations (empty key, SET without a value, a
// non-positive TTL) fail the whole batch with ErrInvalidOp before anything
// is sent; they are the caller's bug or bad data and are not retryable.
//
// # Goroutines
//
// Sink starts none of its own; go-redis owns its connection pool. Close
// releases it.
package redis

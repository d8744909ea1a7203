// Package batch shares round trips among concurrent callers: a Batcher's
// few workers each take the first queued call and every call queued
// behind it, and run them as one round trip (one PostgreSQL query with
// `= ANY($1)`, one Redis MGET or pipeline). Nothing waits for a batch to
// fill: a call alone runs at once, and under load the calls that queued
// while the workers were busy go together. The API's credit-profile path
// and application check, and the decisions job's applicant check, use it.
package batch

// Package migrations holds Loanflow's PostgreSQL schema as goose migrations
// embedded in the binary, and applies them with goose's Provider API.
//
// Tables: lenders, api_clients (OAuth2 clients of the dev issuer),
// customers (PII as Tink ciphertext, SSN blind index and its key version,
// credit limit, current balance, risk tier, status, version),
// credit_profiles (current score, score history, updated_at), loans (unique
// application_id), idempotency_keys, audit_log (append-only, hash-chained;
// a trigger refuses UPDATE and DELETE; keyed from migration 00006 on: each
// row's hash is an HMAC computed by the API, key_id names its key),
// audit_pending (entries queued in a write's transaction until the API's
// audit journal moves them into audit_log), loan_ledger (one append-only
// entry per balance change, 00007) and portfolio_metrics (the analytics
// table of the portfolio job). Money columns are numeric(18,2). UpTo
// applies the migrations up to a version (tests of a migration).
//
// The CDC reader streams customers and credit_profiles into customer_360,
// so their columns are part of the contract: change them only with a new
// migration and a note to the CDC owner.
//
// Up opens no goroutines of its own; it returns errors wrapped with
// "migrations:" and is safe to run at every start (it is a no-op when the
// schema is current; goose takes a session advisory lock so concurrent
// starters do not race).
package migrations

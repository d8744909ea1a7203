// Package localsvc starts the servers Loanflow needs on one machine: a
// PostgreSQL cluster with wal_level=logical from the installed server
// binaries, a redis-server, and an embedded Kafka-protocol broker (franz-go's
// kfake). The local stack (`loanflow dev`) and the integration-test harness
// (internal/testenv) both use it; a user's own servers are used instead by
// configuration alone and never go through this package.
//
// # Ownership
//
// Each Start function returns a handle that owns the server process (or the
// in-process broker) and the goroutine waiting on it. Stop ends the server
// and waits for it; it is safe to call more than once. External processes
// are started with a parent-death signal, so a killed parent does not leave
// orphaned servers behind.
//
// # Errors
//
// ErrNotInstalled (wrapped, with an install hint) when a server binary is
// missing; callers decide whether that is a skip (local tests) or a failure
// (CI, `loanflow dev`). Other errors carry the server's log tail.
package localsvc

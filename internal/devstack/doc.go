// Package devstack runs the whole of Loanflow on one machine, in one
// process: `loanflow dev`.
//
// It starts the servers (a PostgreSQL cluster with wal_level=logical, a
// redis-server and the embedded Kafka-protocol broker, each in a child
// process, through internal/localsvc) unless the configuration points at
// the user's own, then Loanflow's parts in dependency order: the schema
// registry, the API (which applies the migrations and bootstraps an admin
// client), the credit-bureau simulator, the CDC reader and one worker of
// each job (decisions, cache-invalidation, portfolio). Each part gets its own
// Prometheus registry and listen address, as in production, so the
// dashboards, `loanflow job status` and `loanflow job stop` work against
// the local stack unchanged.
//
// Everything lives in one data directory (Config.Dir): the PostgreSQL
// cluster, the Redis append-only file, the broker's log, the PII keys, the
// workers' Pebble state, the admin client's credentials and the log file.
// Run it again with the same directory and it resumes where it stopped;
// delete the directory to start over.
//
// # Ownership
//
// Run owns every goroutine and server it starts. Cancelling its context
// stops the Loanflow parts first (workers take a final checkpoint, the API
// drains its requests) and the servers last; Run returns when all have
// stopped. The first part to fail stops the others, and Run returns its
// error; so does the broker child exiting on its own.
//
// When the process dies instead (SIGKILL), the servers get their
// parent-death signals: PostgreSQL and Redis SIGKILL (they recover), the
// broker child SIGTERM, so it saves its state and exits cleanly (see
// localsvc.StartBrokerProcess and docs/design.md, "The local stack"). A
// new Run on the same directory waits for that save and for the killed
// PostgreSQL's processes to be gone.
package devstack

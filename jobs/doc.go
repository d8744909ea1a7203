// Package jobs holds Loanflow's jobs and their registry: each job
// registers itself (Register, from an init function) with a name, a summary
// and a Build function that declares its graph for an Env. The CLI
// (`loanflow job run NAME`) and the local stack (`loanflow dev`) find jobs
// here; tests build them with BuildDecisions, BuildCacheInvalidation and
// BuildPortfolio and a tuned config.
//
// # Environment
//
// Env carries the servers (brokers, schema registry, PostgreSQL, Redis, the
// credit bureau), an optional Prometheus Registerer and Topics, which
// renames topics (the zero value keeps DESIGN.md §4's names:
// loan_applications, customer_360, loan_decisions, portfolio_metrics and
// cdc.public.<table>). Building a job checks that Env has what the job needs
// and registers the job's Avro schemas with the registry (so Build needs
// the registry reachable); a missing server is an error naming the flag
// that sets it.
//
// # decisions
//
//	loanflow job run decisions   (needs brokers, registry, database, bureau)
//
// Reads loan_applications (Avro LoanApplication, event time event_time)
// and customer_360 (the CDC reader's compacted view, event time
// updated_at, moved by CDC heartbeats); writes loan_decisions (Avro
// LoanDecision keyed by application_id) and, for approvals, a row in the
// API's loans table.
//
//	applications ─admit─dedupe─route─┬─ KNOWN (customer_id) ─keyBy customer─▶ temporal join customer_360 AS OF event_time
//	                                 │                                          ├─ found ─────▶ score against the row
//	                                 │                                          ├─ not found ─┐
//	                                 │                                          └─ too old ───┼▶ REFER APPLICATION_TOO_LATE
//	                                 └─ UNKNOWN ─keyBy application──────────────────────────▶ async bureau ─▶ score / fallback
//	decisions ─▶ loan_decisions;  APPROVED ─▶ loans (idempotent sink)
//
// admit dead-letters invalid applications (non-positive amount, no lender,
// no SSN blind index, bad currency) to dlq.decisions and drops the PII
// ciphertext, which the job never needs. dedupe drops resubmissions of an
// application id for DedupeTTL (loan_applications is keyed by
// application_id, as the API writes it, so resubmissions share a
// partition). A customer not found in customer_360 as of the application's
// time is treated as UNKNOWN and decided through the bureau, as the
// LoanApplication schema says.
//
// Co-partitioning. The CDC reader keys customer_360 by the customer id as
// an Avro string with the Confluent framing (subject customer_360-key).
// The job keys its repartition of KNOWN applications with AvroStringKeys,
// which registers the same schema under the same subject and writes the
// same bytes, so Kafka's default partitioner (murmur2) puts an application
// and its customer's rows in the same partition; the customer_360 source
// checks every record's key against those bytes and dead-letters a
// mismatch rather than join it in the wrong task. The join's subtopology
// has customer_360's partition count; loan_applications may have any.
//
// The temporal join answers "the customer's row as of the application's
// event time": an application waits until customer_360's watermark (CDC
// heartbeats) passes its time, so a version committed just after the
// application is never used for it, whatever the arrival order. A
// heartbeat of time H moves its partition's event time to H: the CDC reader
// writes the customer_360 rows of every change committed before H ahead
// of the heartbeat in each partition (see connectors/postgres, Heartbeats).
// Heartbeats are exact (a heartbeat of time H follows every row stamped
// before H, whether rows carry their change's commit time or the time
// their query ran), so the table side needs no out-of-orderness bound (TableOutOfOrderness,
// default 0): a KNOWN application waits up to one heartbeat interval (50ms
// by default) plus the CDC reader's Kafka commit. When
// customer_360 is idle (no heartbeats for IdleTimeout) applications are
// answered against the table as it stands. History is kept for
// JoinRetention. A compacted customer_360 keeps only each customer's
// newest version: a job started from scratch (or a task restored without
// local state) decides old applications against what survived
// compaction.
//
// Lookup mode (DecisionsConfig.JoinMode = JoinLookup; loanflow dev and
// loanflow job run --decisions-join lookup, env LOANFLOW_DECISIONS_JOIN)
// trades that guarantee for latency, like Flink's lookup join: a KNOWN
// application is decided at once against the newest customer_360 version
// the task has read, without waiting for the table's watermark. A change
// committed before the application but not yet read is missed, and one
// committed after it but read first is used; the decision's
// customer_360_version names the version used either way (TestJoinModes
// shows both against a plain model). Both modes keep the same join state,
// so a job can switch mode on restart.
//
// Scoring (Policy, deterministic; reasons most important first):
//
//	KNOWN, against customer_360:
//	  DECLINED  status not ACTIVE (CUSTOMER_NOT_ACTIVE); delinquent (DELINQUENT);
//	            score < MinScore 580 (SCORE_BELOW_MIN);
//	            amount > credit_limit − current_balance (LIMIT_EXCEEDED)
//	  REFER     risk tier VERY_HIGH (RISK_TIER_VERY_HIGH) or unknown (RISK_TIER_UNKNOWN);
//	            score < ReferScore 660 (SCORE_MARGINAL);
//	            (balance + amount) > MaxUtilizationPct 90% of the limit (HIGH_UTILIZATION)
//	  APPROVED  otherwise (no reasons); available_credit, customer_360_version set
//	UNKNOWN, from the bureau report (bureau_response_id set):
//	  DECLINED  score < 580 (SCORE_BELOW_MIN + the bureau's reasons)
//	  REFER     no credit file (NO_BUREAU_FILE); otherwise NEW_APPLICANT
//	            (+ SCORE_MARGINAL below 660, + the bureau's reasons)
//	FALLBACK: every bureau attempt failed: REFER with BUREAU_TIMEOUT,
//	  BUREAU_UNAVAILABLE or BUREAU_REJECTED (basis FALLBACK, score 0)
//
// Applicants who are not customers are never approved automatically: there
// is no customer record to book a loan against (a loan needs a customer,
// and only the API holds the PII keys to create one), so the best outcome
// is REFER NEW_APPLICANT for an underwriter to onboard them.
//
// The bureau stage is operators.Async, unordered, BureauCapacity calls in
// flight per task (each a goroutine and a pooled connection; beyond it
// applications wait in the operator and the task's input pauses, while
// checkpoints go on). There are two: unknown applicants are asked where
// they were routed, keyed by application as they arrived (no repartition,
// whose Kafka hop would cost a commit interval), customers not found after
// the join where the join runs. Each has a
// BureauTimeout per attempt, BureauAttempts attempts with exponential
// backoff on retryable errors (timeouts, 5xx, 429); 4xx answers are not
// retried. In-flight applications are part of every checkpoint and are
// asked again after a restore (bureau calls are at-least-once; the
// simulator answers a repeated inquiry identically).
//
// The loans sink books each APPROVED decision in one PostgreSQL
// transaction: INSERT INTO loans ... ON CONFLICT (application_id) DO
// NOTHING (loan_id "ln_" + application_id, the amount as balance, status
// ACTIVE, term Policy.LoanTermMonths), and only if the row is new, adds
// the amount to customers.current_balance (version + 1) and appends a
// loan.create row to the audit log (actor job:<job>). A replay finds the
// loan and changes nothing. The CDC reader then carries the new balance
// into customer_360 and the customer's next application is decided against
// it: the loop closes. Transient database errors are retried for
// LoansRetryFor, then fail the task (it restarts from its checkpoint);
// constraint violations (a lender missing from lenders) dead-letter the
// decision. The loan is booked when the decision is processed, before the
// checkpoint that publishes the decision commits; a crash in between
// replays the decision, which finds the loan.
//
// Results of async calls re-issued after a restore are emitted as soon as
// the task starts; the Kafka runtime begins the checkpoint's transaction
// before it starts tasks, so they are produced inside it.
//
// Guarantees: exactly one decision per application id on loan_decisions
// (exactly-once checkpoints, dedupe), at most one loan per application
// (the unique application_id), bureau calls at-least-once. decided_at is
// wall-clock; engine_latency_ms runs from the application's arrival at the
// job (admit) to its decision, join wait and bureau calls included.
//
// Known limit: two applications of one customer closer together than the
// loop (decision → loan → CDC → customer_360) are both decided against the
// balance before either loan (with the view's stamp: query, until the CDC
// reader has read the loan; see connectors/postgres, customer_360 stamps).
//
// # cache-invalidation
//
//	loanflow job run cache-invalidation   (needs brokers, registry, redis)
//
// Reads cdc.public.customers and cdc.public.credit_profiles (Debezium
// envelopes, decoded with their writer schemas) and deletes the API's
// cached profile profile:{customer_id} (api/profiles.go) through
// connectors/redis, versioned by the change's LSN: a replayed older change
// is skipped, applying one twice is harmless. Snapshot reads (no LSN)
// delete unversioned. A TRUNCATE deletes every profile:* key (SCAN +
// UNLINK). Tombstones are skipped (their delete was already applied). Each
// table is its own subtopology, so the two topics need not be
// co-partitioned. An invalidation is applied before the checkpoint that
// covers its offset commits: at-least-once, which deletes make exactly
// right. Redis down: retried for RetryFor, then the task fails and
// restarts. The API's cache-aside can still race (read PostgreSQL, then
// DEL, then SET of the old value); its TTL bounds that.
//
// # portfolio
//
//	loanflow job run portfolio   (needs brokers, registry, database; Prometheus through Env.Registerer)
//
// Reads cdc.public.loans (each change becomes a LoanUpdatedEvent with
// schemas.LoanUpdatedEventFromChange; event time the commit time) and
// loan_decisions (approvals, declines and refers are counted from the
// decisions, event time the application's), keys both by lender and
// currency (two repartitions, so the topics need not be co-partitioned)
// and computes, per one-minute tumbling event-time window, a
// PortfolioMetric: the window's originations (streamed inserts; snapshot
// reads of existing loans are not originations) and originated amount,
// approvals, declines, refers and defaults (loans moving to DEFAULTED), and
// the running totals at window end: active loans (not PAID or CHARGED_OFF;
// the statuses are schemas.LoanStatuses, the API's), outstanding balance,
// delinquent balance (DELINQUENT loans), delinquency_rate and
// default_rate. The state keeps each active loan's contribution (status,
// balance), so changes are applied as deltas in commit order (event time,
// then LSN) and need no before-images. An open window keeps its decisions
// as three counters and each loan change as its own map entry, applied in
// that order when it closes: no state value grows with a lender's traffic
// (a changelog record is bounded by the broker's 1 MB). A window fires when the watermark
// passes its end; an event for a window that already fired goes into the
// window still open, so totals stay right and its counts land one window
// late (windows are emitted once). Windows without any event are not emitted.
//
// Outputs: portfolio_metrics (Avro PortfolioMetric keyed by lender_id, read
// by the API's hub and dashboard), the analytics table portfolio_metrics
// (upsert keyed by lender and window start, idempotent under replay; the
// table has no currency column, so it holds TableCurrency figures and
// metrics in other currencies are dead-lettered by its sink with that
// explanation, the topic has them) and, with Env.Registerer, the gauges
// loanflow_portfolio_{active_loans, outstanding_balance,
// delinquent_balance, delinquency_rate, default_rate,
// originations}{lender,currency} of the latest closed window (at most
// MaxSeries series).
//
// # Goroutines and errors
//
// Jobs start no goroutines of their own: the runtime owns the tasks, the
// async operator its calls, pgx and go-redis their pools (opened in a
// sink's Open, closed in Close). Records a job cannot use go to
// dlq.<job> with the error; errors a retry may cure (a database or Redis
// that does not answer, a registry outage) fail the task, which restarts
// from its last checkpoint.
package jobs

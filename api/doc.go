// Package api is Loanflow's HTTP API and live dashboard: credit-profile
// lookups, the loan lifecycle, POS ingest, decision delivery, portfolio
// metrics, and the OAuth2 dev issuer, on the standard library's ServeMux
// with method and path patterns. Errors are RFC 9457 problem+json.
//
// # Routes
//
//	GET   /v1/credit-profiles/{id}             credit:read, a relationship with the customer and a ?purpose= it supports;
//	                                           ?include=pii: full with pii:read granted explicitly, else the SSN's last four
//	POST  /v1/loans                            loans:write; Idempotency-Key required
//	PATCH /v1/loans/{id}                       loans:write; If-Match: "<version>" required; a balance increase needs "ledger": {"kind", "reference"}
//	GET   /v1/loans, /v1/loans/{id}            loans:write; cursor paging
//	POST  /v1/loan-applications                applications:write; 202, Avro to loan_applications
//	GET   /v1/loan-applications/{id}/decision  applications:write; long-poll (?timeout=)
//	GET   /v1/decisions/stream                 applications:write; server-sent events
//	GET   /v1/portfolio                        portfolio:read
//	POST  /v1/customers, /v1/admin/lenders, /v1/admin/clients, GET /v1/admin/pipeline-health   admin
//	POST  /v1/admin/clients/{id}/disable       admin; the client's tokens stop working within RevocationStaleness
//	GET   /dashboard, /dashboard/events, POST /dashboard/login   live lender dashboard (cookie session, portfolio:read)
//	GET   /operator, /operator/events          pipeline health page (admin): a card per job (lag net of transaction
//	                                           markers, checkpoint age and duration, backpressure, dead letters, bureau
//	                                           breaker) and per CDC reader, streamed every OperatorRefreshInterval
//	GET   /session, POST /logout               who the page session is (401 once expired); end it
//	POST  /oauth/token, GET /.well-known/jwks.json   dev issuer (client credentials, ES256)
//	GET   /healthz, /readyz, /metrics            (/metrics on AdminAddr only when set, behind MetricsToken when set)
//
// Security (docs/security.md): a lender reaches a customer only through a
// relationship (lender_customers: it onboarded the customer, booked a
// loan on it, or sent an application whose applicant's SSN is the
// customer's), and each permissible purpose needs a matching one; loans
// stay within the credit limit in the customer's credit currency;
// application ids are per lender (AppKey); every authenticated answer is
// Cache-Control: no-store; tokens are checked for revocation and a
// lifetime cap; the credential endpoints are throttled and audited; the
// audit chain's head is signed and anchored on a Kafka topic (AnchorAudit).
//
// # Concepts
//
// The lender of a request comes only from the verified lender_id claim;
// a lender's loans, decisions and portfolio are invisible to every other
// lender (404, audited). Every read and write of credit or loan data is
// audited (package audit): writes in their own transaction, reads before
// the response is sent. Writes queue their entry (audit.Append,
// audit.PendSQL) in their own transaction, and the server's audit.Journal,
// the keyed chain's only writer, links queued entries into the chain within
// milliseconds (FlushAudit forces it); reads wait in the Journal until the
// group commit holding their row has committed. Credit profiles are cached in Redis as profile:{id}
// (no PII, TTL with jitter), misses are coalesced with singleflight, and a
// circuit breaker sends lookups straight to PostgreSQL while Redis is
// down. Idempotency keys are claimed in the transaction that creates the
// loan, so concurrent requests with one key execute once and the others
// replay the stored response. Updates are optimistic: the If-Match version
// is the row's version and the UPDATE is conditional on it. A customer's
// current_balance (customer_360's, which the decisions job decides known
// customers on) follows its loans in the transaction that changes them:
// a new loan adds its amount, a balance change the difference; lock order
// loan row, customer row, audit chain. Loan statuses and risk tiers are
// the sets of package schemas (LoanStatuses, RiskTiers). PII is encrypted
// with package pii before it is stored or produced.
//
// # Pages
//
// The dashboard and the operator page are static pages (web/, embedded)
// that render their event streams; no page reloads itself. They share a
// session: an HttpOnly, SameSite=Strict cookie holding a token narrowed to
// the page's one scope (portfolio:read or admin). A page request without a
// session gets the sign-in page; one whose token expired or was revoked is
// sent back to it with a note; a session of the wrong kind (a lender on
// the operator page, an operator on a lender's dashboard) gets a 403 page
// naming it. When a stream is refused, the page asks /session whether the
// session ended and says so instead of reconnecting forever. Pipeline
// health (Health, JobHealth) merges the jobs' consumer groups, named
// "loanflow-JOB" (other groups are only counted), with the metrics their
// workers serve at OperatorMetricsURLs.
//
// # Goroutines
//
// New starts background loops (the decision/metric consumer, the PII
// keyset reloader, the signing-key rotator, the audit anchorer, the
// idempotency-key janitor) and the audit journal; Serve runs the HTTP
// server; Close, after Serve returned, stops and waits for all of them (the
// journal commits what is queued first). Streams and long-polls end when shutdown begins; other
// requests finish within ShutdownTimeout.
//
// # Errors
//
// New returns configuration and connection errors prefixed "api:";
// handlers never panic on bad input (fuzz tests) and answer 4xx problems
// that say what to fix. ErrInvalid and ErrConflict come from the admin
// functions (CreateLender, CreateClient, CreateCustomer).
package api

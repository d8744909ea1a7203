package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
	"github.com/loanflow/loanflow/api/internal/money"
	"github.com/loanflow/loanflow/schemas"
)

// Loan statuses (schemas.LoanStatuses, the names the portfolio job
// aggregates on) and the transitions allowed between them.
const (
	StatusActive     = schemas.LoanStatusActive
	StatusDelinquent = schemas.LoanStatusDelinquent
	StatusDefaulted  = schemas.LoanStatusDefaulted
	StatusPaid       = schemas.LoanStatusPaid
	StatusChargedOff = schemas.LoanStatusChargedOff
)

var transitions = map[string][]string{
	StatusActive:     {StatusPaid, StatusDelinquent}, // default only after delinquency
	StatusDelinquent: {StatusActive, StatusPaid, StatusDefaulted},
	StatusDefaulted:  {StatusChargedOff},
}

func legalTransition(from, to string) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

func knownStatus(s string) bool { return schemas.ValidLoanStatus(s) }

// validIdemKey: 1-255 printable ASCII characters (it is stored and echoed).
func validIdemKey(k string) bool {
	if len(k) == 0 || len(k) > 255 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// decodeBody decodes one strict JSON object, writing the problem itself.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		if isTooLarge(err) {
			writeProblem(w, r, http.StatusRequestEntityTooLarge, "body-too-large", "request body exceeds the size limit")
		} else {
			writeProblem(w, r, http.StatusBadRequest, "malformed-body", "request body could not be read")
		}
		return false
	}
	// Go matches object keys to fields case-insensitively, the last one
	// winning: {"amount":"1","AMOUNT":"9"} would be 9.00 here and 1 to
	// whatever checked the body before. Keys that differ only in case are
	// refused.
	if k, dup := duplicateKey(raw); dup {
		writeProblem(w, r, http.StatusBadRequest, "duplicate-key", fmt.Sprintf("the body repeats the key %q (keys are compared case-insensitively)", k))
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	if err == nil {
		if _, extra := dec.Token(); extra != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	switch {
	case err == nil:
		return true
	default:
		writeProblem(w, r, http.StatusBadRequest, "malformed-body", "request body is not valid JSON for this route: "+sanitizeJSONErr(err))
	}
	return false
}

// duplicateKey walks a JSON document and reports the first object key
// that repeats (case-insensitively) within its object. Invalid JSON is
// left to the decoder.
func duplicateKey(b []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	type frame struct {
		obj  bool
		keys map[string]bool
		key  bool // the next string token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		var top *frame
		if n := len(stack); n > 0 {
			top = stack[n-1]
		}
		if top != nil && top.obj && top.key {
			k, _ := tok.(string)
			lk := strings.ToLower(k)
			if top.keys[lk] {
				return k, true
			}
			top.keys[lk] = true
			top.key = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if n := len(stack); n > 0 && stack[n-1].obj {
			stack[n-1].key = true // a value ended: a key comes next
		}
	}
}

// sanitizeJSONErr keeps decoder errors free of request values.
func sanitizeJSONErr(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at offset %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q has the wrong type", te.Field)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return err.Error()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "body is empty or truncated"
	}
	return "invalid JSON"
}

type createLoanReq struct {
	CustomerID string `json:"customer_id"`
	Amount     string `json:"amount"`
	Currency   string `json:"currency"`
	TermMonths int    `json:"term_months"`
}

func (q *createLoanReq) validate() (money.Amount, error) {
	if !validID(q.CustomerID) {
		return 0, errors.New("customer_id is required: 1-64 of [A-Za-z0-9_.:-]")
	}
	a, err := money.Parse(q.Amount)
	if err != nil || a <= 0 {
		return 0, errors.New(`amount must be a positive decimal string with at most 2 decimals, e.g. "1500.00"`)
	}
	if !validCurrency(q.Currency) {
		return 0, errors.New("currency must be an ISO 4217 currency code, e.g. USD")
	}
	if q.TermMonths < 1 || q.TermMonths > 480 {
		return 0, errors.New("term_months must be within 1..480")
	}
	return a, nil
}

// storedResponse is what an idempotency key replays.
type storedResponse struct {
	hash   []byte
	status int
	body   []byte
	etag   string
}

func (s *Server) createLoan(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	if p.Lender == "" {
		writeProblem(w, r, http.StatusForbidden, "no-lender", "only a lender's client can create loans")
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if !validIdemKey(key) {
		writeProblem(w, r, http.StatusBadRequest, "idempotency-key-required", "send an Idempotency-Key header (1-255 printable ASCII characters)")
		return
	}
	var req createLoanReq
	if !decodeBody(w, r, &req) {
		return
	}
	amount, err := req.validate()
	if err != nil {
		writeProblem(w, r, http.StatusUnprocessableEntity, "invalid-loan", err.Error())
		return
	}
	req.Amount = amount.String()
	canon, _ := json.Marshal(req)
	sum := sha256.Sum256(canon)
	resp, replayed, err := s.createLoanTx(r.Context(), p, key, sum[:], req, amount)
	if err != nil {
		// The transaction rolled back with its audit row: record the
		// refused or failed write on its own (unknown-customer probes
		// included).
		result := audit.ResultDenied
		if !errors.Is(err, errNoCustomer) && !errors.Is(err, errCreditLimit) && !errors.Is(err, errCurrency) && !errors.Is(err, errBalanceOverflow) {
			result = audit.ResultError
		}
		if aerr := s.audit.Append(context.WithoutCancel(r.Context()), s.auditEntry(r.Context(), p, "loan.create", "customer/"+req.CustomerID, "", result)); aerr != nil {
			s.log.Error("audit append", "request_id", requestID(r.Context()), "err", aerr)
		}
	}
	s.finishIdempotent(w, r, resp, replayed, sum[:], err)
}

func (s *Server) finishIdempotent(w http.ResponseWriter, r *http.Request, resp storedResponse, replayed bool, hash []byte, err error) {
	switch {
	case errors.Is(err, errNoCustomer):
		writeProblem(w, r, http.StatusUnprocessableEntity, "unknown-customer", "customer_id does not name a customer of this lender")
		return
	case errors.Is(err, errCreditLimit):
		writeProblem(w, r, http.StatusUnprocessableEntity, "credit-limit-exceeded", "the loan would take the customer's balance over its credit limit")
		return
	case errors.Is(err, errCurrency):
		writeProblem(w, r, http.StatusUnprocessableEntity, "currency-mismatch", strings.TrimPrefix(err.Error(), "api: "))
		return
	case errors.Is(err, errBalanceOverflow):
		writeProblem(w, r, http.StatusUnprocessableEntity, "balance-overflow", strings.TrimPrefix(err.Error(), "api: "))
		return
	case err != nil:
		s.log.Error("creating loan", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not create the loan")
		return
	case replayed && !bytes.Equal(resp.hash, hash):
		writeProblem(w, r, http.StatusUnprocessableEntity, "idempotency-key-reused",
			"this Idempotency-Key was used with a different request body")
		return
	}
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	if resp.etag != "" {
		w.Header().Set("ETag", resp.etag)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(resp.status)
	_, _ = w.Write(resp.body)
}

var errNoCustomer = errors.New("api: unknown customer")

// createLoanTx creates the loan and records the idempotency key in one
// transaction. A concurrent request with the same key blocks on the key's
// unique index until this one commits, then replays its stored response.
func (s *Server) createLoanTx(ctx context.Context, p auth.Principal, key string, hash []byte, req createLoanReq, amount money.Amount) (storedResponse, bool, error) {
	var out storedResponse
	replayed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// A key older than IdempotencyTTL is forgotten (the cleanup loop
		// deletes them in bulk; this covers the time in between).
		if _, err := tx.Exec(ctx, `DELETE FROM idempotency_keys WHERE lender_id = $1 AND idem_key = $2 AND created_at < now() - $3 * interval '1 second'`,
			p.Lender, key, s.cfg.IdempotencyTTL.Seconds()); err != nil {
			return fmt.Errorf("expiring idempotency key: %w", err)
		}
		tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (lender_id, idem_key, request_hash, response_status, response_body)
			VALUES ($1, $2, $3, 0, '') ON CONFLICT DO NOTHING`, p.Lender, key, hash)
		if err != nil {
			return fmt.Errorf("claiming idempotency key: %w", err)
		}
		if tag.RowsAffected() == 0 {
			replayed = true
			var resource string
			err := tx.QueryRow(ctx, `SELECT request_hash, response_status, response_body, response_etag, resource_id
				FROM idempotency_keys WHERE lender_id = $1 AND idem_key = $2`, p.Lender, key).
				Scan(&out.hash, &out.status, &out.body, &out.etag, &resource)
			if err != nil || !bytes.Equal(out.hash, hash) {
				return err // a different body (422) sends no loan data
			}
			// The replay returns the stored loan: a read, audited here.
			return audit.Append(ctx, tx, s.auditEntry(ctx, p, "loan.create.replay", "loan/"+resource, "", audit.ResultOK))
		}
		loan, err := insertLoan(ctx, tx, p.Lender, req, amount)
		if err != nil {
			return err
		}
		out = storedResponse{hash: hash, status: http.StatusCreated, etag: etag(loan.Version)}
		out.body, _ = json.Marshal(loan)
		if _, err := tx.Exec(ctx, `UPDATE idempotency_keys SET response_status = $3, response_body = $4, response_etag = $5, resource_id = $6
			WHERE lender_id = $1 AND idem_key = $2`, p.Lender, key, out.status, out.body, out.etag, loan.LoanID); err != nil {
			return fmt.Errorf("storing idempotent response: %w", err)
		}
		return audit.Append(ctx, tx, s.auditEntry(ctx, p, "loan.create", "loan/"+loan.LoanID, "", audit.ResultOK))
	})
	return out, replayed, err
}

// addToBalance keeps customers.current_balance (customer_360's, which the
// decisions job decides known customers on) equal to its starting value
// plus the sum of the customer's loan balances: creating a loan adds its
// amount, a balance change adds the difference, in the transaction that
// changes the loan. It locks the customer's row, so concurrent changes of
// one customer's loans add up; it runs before the audit append, which takes
// the audit chain lock last. Never below zero: a database written before
// the API kept the balance (loans created without adding their amount)
// must still accept payments.
const addToBalance = `UPDATE customers SET current_balance = GREATEST(current_balance + $2::numeric, 0), version = version + 1, updated_at = now()
	WHERE customer_id = $1`

// errBalanceOverflow: the customer's total balance would not fit numeric(18,2).
var errBalanceOverflow = errors.New("api: the customer's total balance would exceed " + money.Amount(money.MaxUnits).String())

// bookOnCustomer adds a new loan's amount to the customer's balance, only
// if the lender has a relationship with the customer; it returns whether
// the new balance is within the credit limit and the limit's currency.
// One statement, which locks the customer's row.
const bookOnCustomer = `UPDATE customers c SET current_balance = c.current_balance + $2::numeric, version = c.version + 1, updated_at = now()
	WHERE c.customer_id = $1 AND EXISTS (SELECT 1 FROM lender_customers r WHERE r.lender_id = $3 AND r.customer_id = $1)
	RETURNING c.current_balance <= c.credit_limit, c.credit_currency, c.credit_limit::text`

var (
	errCreditLimit = errors.New("api: the loan would exceed the customer's credit limit")
	errCurrency    = errors.New("api: the loan's currency is not the customer's credit currency")
)

func insertLoan(ctx context.Context, tx pgx.Tx, lender string, req createLoanReq, amount money.Amount) (Loan, error) {
	var within bool
	var cur, limit string
	err := tx.QueryRow(ctx, bookOnCustomer, req.CustomerID, amount.String(), lender).Scan(&within, &cur, &limit)
	if errors.Is(err, pgx.ErrNoRows) {
		return Loan{}, errNoCustomer // unknown, or not this lender's customer: answered alike
	}
	if err != nil {
		return Loan{}, balanceErr(err, "adding the loan to the customer's balance")
	}
	if cur != req.Currency {
		return Loan{}, fmt.Errorf("%w: the customer's credit is in %s; loans in %s cannot be weighed against it", errCurrency, cur, req.Currency)
	}
	if !within {
		return Loan{}, errCreditLimit
	}
	row := tx.QueryRow(ctx, `INSERT INTO loans (loan_id, customer_id, lender_id, amount, balance, currency, term_months, status)
		VALUES ($1, $2, $3, $4::numeric, $4::numeric, $5, $6, 'ACTIVE') RETURNING `+loanCols,
		"ln_"+newRequestID(), req.CustomerID, lender, amount.String(), req.Currency, req.TermMonths)
	l, err := scanLoan(row)
	if err != nil {
		return l, fmt.Errorf("inserting loan: %w", err)
	}
	if err := relate(ctx, tx, lender, req.CustomerID, basisLoan); err != nil {
		return l, err
	}
	return l, nil
}

// balanceErr turns a numeric overflow of current_balance into
// errBalanceOverflow.
func balanceErr(err error, what string) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "22003" {
		return errBalanceOverflow
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (s *Server) auditEntry(ctx context.Context, p auth.Principal, action, resource, purpose, result string) audit.Entry {
	return audit.Entry{Actor: p.Subject, Lender: p.Lender, Action: action, Resource: resource,
		Purpose: purpose, Result: result, RequestID: requestID(ctx), At: time.Now()}
}

// auditRead appends a read's audit row before its response is sent.
func (s *Server) auditRead(w http.ResponseWriter, r *http.Request, e audit.Entry) bool {
	start := time.Now()
	err := s.audit.Append(r.Context(), e)
	s.metrics.auditWait.Observe(time.Since(start).Seconds())
	if err != nil {
		s.log.Error("audit append", "request_id", requestID(r.Context()), "err", err)
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, http.StatusServiceUnavailable, "audit-unavailable", "the audit log could not be written; retry")
		return false
	}
	return true
}

// notFoundAudited answers 404 for a resource the caller may not see (or
// that does not exist) and audits the denied access.
func (s *Server) notFoundAudited(w http.ResponseWriter, r *http.Request, action, resource string) {
	p, _ := principalOf(r.Context())
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, action, resource, "", audit.ResultDenied)) {
		return
	}
	writeProblem(w, r, http.StatusNotFound, "not-found", "no such "+strings.Split(resource, "/")[0])
}

type patchLoanReq struct {
	Status  *string    `json:"status"`
	Balance *string    `json:"balance"`
	Ledger  *ledgerReq `json:"ledger"`
}

// ledgerReq explains a balance change: its loan_ledger entry's kind and an
// optional reference (e.g. the fee's or the payment's id).
type ledgerReq struct {
	Kind      string `json:"kind"`
	Reference string `json:"reference"`
}

// Ledger kinds: what may raise a balance, and what may lower it.
var (
	increaseKinds = []string{"DISBURSEMENT", "FEE", "INTEREST", "ADJUSTMENT"}
	decreaseKinds = []string{"PAYMENT", "WRITE_OFF", "ADJUSTMENT"}
)

// ledgerEntry checks the entry explaining a balance change of delta and
// returns its kind and reference (decreases default to PAYMENT).
func ledgerEntry(delta money.Amount, led *ledgerReq) (string, string, error) {
	bad := func(detail string) error {
		return &patchError{status: http.StatusUnprocessableEntity, kind: "ledger-entry", detail: detail}
	}
	if led != nil && (len(led.Reference) > 128 || !validIdemKey(led.Reference) && led.Reference != "") {
		return "", "", bad("ledger.reference must be at most 128 printable ASCII characters")
	}
	switch {
	case delta == 0 && led != nil:
		return "", "", bad("a ledger entry needs a balance change")
	case delta == 0:
		return "", "", nil
	case delta > 0 && led == nil:
		return "", "", bad(fmt.Sprintf(`raising the balance by %s needs a ledger entry: add "ledger": {"kind": %s, "reference": "..."}`, delta, oneOf(increaseKinds)))
	case delta > 0 && !slices.Contains(increaseKinds, led.Kind):
		return "", "", bad("a balance increase's ledger.kind must be " + oneOf(increaseKinds))
	case delta < 0 && led == nil:
		return "PAYMENT", "", nil
	case delta < 0 && !slices.Contains(decreaseKinds, led.Kind):
		return "", "", bad("a balance decrease's ledger.kind must be " + oneOf(decreaseKinds))
	}
	return led.Kind, led.Reference, nil
}

// errWeakETag: If-Match compares strongly (RFC 9110 §13.1.1), so a weak
// validator never matches.
func parseIfMatch(h string) (int64, bool) {
	h = strings.TrimSpace(h)
	if len(h) < 3 || h[0] != '"' || h[len(h)-1] != '"' {
		return 0, false
	}
	v, err := strconv.ParseInt(h[1:len(h)-1], 10, 64)
	return v, err == nil && v > 0
}

func (s *Server) patchLoan(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	id := r.PathValue("id")
	if !validID(id) {
		s.notFoundAudited(w, r, "loan.update", resourceOf("loan/", id))
		return
	}
	im := r.Header.Get("If-Match")
	if im == "" {
		writeProblem(w, r, http.StatusPreconditionRequired, "if-match-required", `send If-Match: "<version>" from the loan's ETag`)
		return
	}
	if strings.HasPrefix(strings.TrimSpace(im), "W/") {
		writeProblem(w, r, http.StatusPreconditionFailed, "weak-etag", `If-Match uses strong comparison: a weak ETag (W/"...") never matches; send the ETag as returned`)
		return
	}
	ver, ok := parseIfMatch(im)
	if !ok {
		writeProblem(w, r, http.StatusBadRequest, "bad-if-match", `If-Match must be a quoted version, e.g. "3"`)
		return
	}
	var req patchLoanReq
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Status == nil && req.Balance == nil {
		writeProblem(w, r, http.StatusUnprocessableEntity, "empty-patch", "send status and/or balance")
		return
	}
	var bal *money.Amount
	if req.Balance != nil {
		a, err := money.Parse(*req.Balance)
		if err != nil || a < 0 {
			writeProblem(w, r, http.StatusUnprocessableEntity, "invalid-balance", `balance must be a non-negative decimal string, e.g. "120.50"`)
			return
		}
		bal = &a
	}
	if req.Status != nil && !knownStatus(*req.Status) {
		writeProblem(w, r, http.StatusUnprocessableEntity, "invalid-status", "status must be "+oneOf(schemas.LoanStatuses))
		return
	}
	s.applyPatch(w, r, p, id, ver, req.Status, bal, req.Ledger)
}

// patchError is a client-facing outcome of a patch.
type patchError struct {
	status int
	kind   string
	detail string
	etag   string
}

func (e *patchError) Error() string { return e.detail }

// applyPatch validates the change against the loan as read, then writes
// it with one statement (patchSQL) that updates the row only if it is
// still at the If-Match version and, in the same (implicit) transaction,
// moves the customer's balance and queues the audit entry of the update it
// made. Two round trips, and no audit chain lock.
func (s *Server) applyPatch(w http.ResponseWriter, r *http.Request, p auth.Principal, id string, ver int64, status *string, bal *money.Amount, led *ledgerReq) {
	out, err := s.patchOnce(r.Context(), p, id, ver, status, bal, led)
	s.finishPatch(w, r, out, err)
}

func (s *Server) patchOnce(ctx context.Context, p auth.Principal, id string, ver int64, status *string, bal *money.Amount, led *ledgerReq) (Loan, error) {
	cur, err := s.readLoan(ctx, p.Lender, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return Loan{}, &patchError{status: http.StatusNotFound}
	}
	if err != nil {
		return Loan{}, err
	}
	if cur.Version != ver {
		return Loan{}, &patchError{status: http.StatusPreconditionFailed, kind: "stale-version", etag: etag(cur.Version),
			detail: fmt.Sprintf("If-Match version %d is stale; the loan is at version %d", ver, cur.Version)}
	}
	next, err := nextState(cur, status, bal)
	if err != nil {
		return Loan{}, err
	}
	oldBal, _ := money.Parse(cur.Balance)
	newBal, _ := money.Parse(next.Balance)
	kind, ref, err := ledgerEntry(newBal-oldBal, led)
	if err != nil {
		return Loan{}, err
	}
	auditExpr, auditArgs := audit.PendSQL(9, s.auditEntry(ctx, p, "loan.update", "loan/"+id, "", audit.ResultOK))
	args := append([]any{id, p.Lender, ver, next.Status, next.Balance, (newBal - oldBal).String(), kind, ref}, auditArgs...)
	var seq *int64
	var customers int64
	out, err := scanLoanExtra(s.pool.QueryRow(ctx, patchSQL(auditExpr), args...), &customers, &seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return Loan{}, &patchError{status: http.StatusPreconditionFailed, kind: "stale-version", detail: "the loan changed concurrently; re-read it"}
	}
	if err != nil {
		if err = balanceErr(err, "updating loan"); errors.Is(err, errBalanceOverflow) {
			return Loan{}, &patchError{status: http.StatusUnprocessableEntity, kind: "balance-overflow", detail: strings.TrimPrefix(err.Error(), "api: ")}
		}
		return Loan{}, err
	}
	s.audit.Kick()
	return out, nil
}

// patchSQL is the one statement of a patch: u updates the loan if it is
// still at the If-Match version ($3), c adds the balance change ($6, the
// new balance minus the one read at that version) to the customer's
// current_balance (addToBalance), lg writes the change's loan_ledger entry
// ($7 kind, $8 reference; migration 00007), and the audit entry is queued
// (audit.PendSQL) for an update that happened. The entry commits with the
// update; the server's audit journal links it into the keyed chain within
// milliseconds, so no loan update holds the audit chain lock (with the
// chain lock in every update's transaction, updates queued behind each
// other's commits: the benchmark's largest cause of update latency). The
// join with c's count makes PostgreSQL finish c before it evaluates the
// queueing.
func patchSQL(auditExpr string) string {
	return `WITH u AS (UPDATE loans SET status = $4, balance = $5::numeric, version = version + 1, updated_at = now()
		WHERE loan_id = $1 AND lender_id = $2 AND version = $3 RETURNING ` + loanCols + `),
	c AS (UPDATE customers SET current_balance = GREATEST(customers.current_balance + $6::numeric, 0), version = customers.version + 1, updated_at = now()
		FROM u WHERE customers.customer_id = u.customer_id AND $6::numeric <> 0 RETURNING 1),
	lg AS (INSERT INTO loan_ledger (loan_id, lender_id, loan_version, delta, balance_after, kind, reference)
		SELECT u.loan_id, u.lender_id, u.version, $6::numeric, u.balance::numeric, $7::text, $8::text FROM u WHERE $6::numeric <> 0),
	cn AS (SELECT count(*) AS n FROM c)
	SELECT u.*, cn.n, ` + auditExpr + ` FROM u CROSS JOIN cn`
}

func (s *Server) finishPatch(w http.ResponseWriter, r *http.Request, out Loan, err error) {
	var pe *patchError
	switch {
	case errors.As(err, &pe) && pe.status == http.StatusNotFound:
		s.notFoundAudited(w, r, "loan.update", "loan/"+r.PathValue("id"))
	case errors.As(err, &pe):
		if pe.etag != "" {
			w.Header().Set("ETag", pe.etag)
		}
		writeProblem(w, r, pe.status, pe.kind, pe.detail)
	case err != nil:
		s.log.Error("updating loan", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not update the loan")
	default:
		w.Header().Set("ETag", etag(out.Version))
		writeJSON(w, http.StatusOK, out)
	}
}

// nextState validates a status and/or balance change against cur.
func nextState(cur Loan, status *string, bal *money.Amount) (Loan, error) {
	next := cur
	if !schemas.LoanStatusOpen(cur.Status) {
		return next, &patchError{status: http.StatusConflict, kind: "loan-closed",
			detail: fmt.Sprintf("loan is %s; no further changes are allowed", cur.Status)}
	}
	if status != nil && *status != cur.Status {
		if !legalTransition(cur.Status, *status) {
			return next, &patchError{status: http.StatusConflict, kind: "illegal-transition",
				detail: fmt.Sprintf("illegal status transition %s -> %s", cur.Status, *status)}
		}
		next.Status = *status
	}
	amount, _ := money.Parse(cur.Amount)
	if bal != nil {
		if *bal > amount {
			return next, &patchError{status: http.StatusUnprocessableEntity, kind: "invalid-balance",
				detail: fmt.Sprintf("balance %s exceeds the loan amount %s", bal, amount)}
		}
		next.Balance = bal.String()
	}
	if next.Status == StatusPaid {
		if bal != nil && *bal != 0 {
			return next, &patchError{status: http.StatusUnprocessableEntity, kind: "invalid-balance", detail: "a PAID loan has balance 0.00"}
		}
		next.Balance = money.Amount(0).String()
	}
	return next, nil
}

func (s *Server) getLoan(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	id := r.PathValue("id")
	if !validID(id) {
		s.notFoundAudited(w, r, "loan.read", resourceOf("loan/", id))
		return
	}
	l, err := s.readLoan(r.Context(), p.Lender, id)
	if errors.Is(err, pgx.ErrNoRows) {
		s.notFoundAudited(w, r, "loan.read", "loan/"+id)
		return
	}
	if err != nil {
		s.log.Error("reading loan", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not read the loan")
		return
	}
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "loan.read", "loan/"+id, "", audit.ResultOK)) {
		return
	}
	w.Header().Set("ETag", etag(l.Version))
	writeJSON(w, http.StatusOK, l)
}

func (s *Server) readLoan(ctx context.Context, lender, id string) (Loan, error) {
	row := s.pool.QueryRow(ctx, "SELECT "+loanCols+" FROM loans WHERE loan_id = $1 AND lender_id = $2", id, lender)
	return scanLoan(row)
}

type loanPage struct {
	Items      []Loan `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

func (s *Server) listLoans(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	q := r.URL.Query()
	lender := p.Lender
	if l := q.Get("lender"); l != "" && l != p.Lender {
		if !p.Scopes[auth.ScopeAdmin] || !validID(l) {
			s.notFoundAudited(w, r, "loan.list", resourceOf("loans/lender=", l))
			return
		}
		lender = l
	}
	limit := 50
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 200 {
			writeProblem(w, r, http.StatusBadRequest, "bad-limit", "limit must be within 1..200")
			return
		}
		limit = n
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || !validID(string(b)) {
			writeProblem(w, r, http.StatusBadRequest, "bad-cursor", "cursor is not one this API returned")
			return
		}
		after = string(b)
	}
	page, err := s.pageLoans(r.Context(), lender, after, limit)
	if err != nil {
		s.log.Error("listing loans", "request_id", requestID(r.Context()), "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not list loans")
		return
	}
	if !s.auditRead(w, r, s.auditEntry(r.Context(), p, "loan.list", "loans/lender="+lender, "", audit.ResultOK)) {
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) pageLoans(ctx context.Context, lender, after string, limit int) (loanPage, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+loanCols+" FROM loans WHERE lender_id = $1 AND loan_id > $2 ORDER BY loan_id LIMIT $3",
		lender, after, limit+1)
	if err != nil {
		return loanPage{}, err
	}
	defer rows.Close()
	page := loanPage{Items: []Loan{}}
	for rows.Next() {
		l, err := scanLoan(rows)
		if err != nil {
			return page, err
		}
		page.Items = append(page.Items, l)
	}
	if err := rows.Err(); err != nil {
		return page, err
	}
	if len(page.Items) > limit {
		page.Items = page.Items[:limit]
		page.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(page.Items[limit-1].LoanID))
	}
	return page, nil
}

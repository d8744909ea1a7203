package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// LoanID is the id of the loan an approved application creates: derived
// from the lender and the application id (application ids are unique per
// lender only), so a replay names the same loan. A hash keeps it a valid
// API id (at most 64 characters) whatever the lengths of the two ids.
func LoanID(lender, applicationID string) string {
	h := sha256.Sum256([]byte(AppKey(lender, applicationID)))
	return "ln_" + hex.EncodeToString(h[:16])
}

// insertLoan creates the loan unless its application already has one.
const insertLoan = `INSERT INTO loans (loan_id, application_id, customer_id, lender_id, amount, balance, currency, term_months, status)
VALUES ($1, $2, $3, $4, $5::numeric, $5::numeric, $6, $7, 'ACTIVE')
ON CONFLICT (lender_id, application_id) DO NOTHING
RETURNING loan_id`

// addBalance closes the loop: the customer's balance grows by the loan, so
// CDC carries it into customer_360 and the next application sees it.
const addBalance = `UPDATE customers SET current_balance = current_balance + $2::numeric, version = version + 1, updated_at = now()
WHERE customer_id = $1`

// loansSink books approved decisions as loans in the API's loans table,
// idempotently: a replayed decision finds its application's loan and
// changes nothing. Each write is one transaction (loan, balance, audit
// row); transient database errors are retried for retryFor, then fail the
// task (it restarts from its checkpoint and writes again); constraint
// violations (unknown lender or customer) dead-letter the decision.
type loansSink struct {
	dsn      string
	job      string
	term     int
	retryFor time.Duration
	pctx     *pipeline.Context
	pool     *pgxpool.Pool
}

func newLoansSink(dsn, job string, term int, retryFor time.Duration) *loansSink {
	return &loansSink{dsn: dsn, job: job, term: term, retryFor: retryFor}
}

func (s *loansSink) Open(ctx *pipeline.Context) error {
	cfg, err := pgxpool.ParseConfig(s.dsn)
	if err != nil {
		return fmt.Errorf("loans sink: parsing the database URL: %w", err)
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg) // connects lazily
	if err != nil {
		return fmt.Errorf("loans sink: %w", err)
	}
	s.pctx, s.pool = ctx, pool
	return nil
}

func (s *loansSink) Close() error {
	if s.pool != nil {
		s.pool.Close()
	}
	return nil
}

func (s *loansSink) Write(r pipeline.Record[schemas.LoanDecision]) error {
	err := retryTransient(s.retryFor, func(ctx context.Context) error { return s.book(ctx, r.Value) })
	if err == nil {
		return nil
	}
	if transient(err) {
		return s.pctx.HandleError(pipeline.Retryable(fmt.Errorf("booking loan of application %s: %w", r.Value.ApplicationID, err)))
	}
	return s.pctx.HandleError(fmt.Errorf("booking loan of application %s: %w", r.Value.ApplicationID, err))
}

// book writes one approved decision's loan in one transaction.
func (s *loansSink) book(ctx context.Context, d schemas.LoanDecision) error {
	if d.CustomerID == nil {
		return fmt.Errorf("%w: an approved decision without a customer cannot be booked", errNotTransient)
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var id string
		err := tx.QueryRow(ctx, insertLoan, LoanID(d.LenderID, d.ApplicationID), d.ApplicationID, *d.CustomerID, d.LenderID,
			d.Amount.String(), d.Currency, s.term).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // booked before: a replay
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, addBalance, *d.CustomerID, d.Amount.String()); err != nil {
			return err
		}
		// The lender now has a loan with the customer (see the API's
		// lender_customers).
		if _, err := tx.Exec(ctx, `INSERT INTO lender_customers (lender_id, customer_id, basis) VALUES ($1, $2, 'loan')
			ON CONFLICT DO NOTHING`, d.LenderID, *d.CustomerID); err != nil {
			return err
		}
		return audit.Append(ctx, tx, audit.Entry{Actor: "job:" + s.job, Lender: d.LenderID, Action: "loan.create",
			Resource: "loan/" + id, Purpose: "CREDIT_TRANSACTION", Result: audit.ResultOK, RequestID: d.ApplicationID})
	})
}

// transient reports whether a database error may go away on its own:
// anything but a definite answer from the server about the data (class 22
// data exception, 23 integrity violation, 42 syntax or missing object).
func transient(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "22", "23", "42":
			return false
		}
		return true
	}
	return !errors.Is(err, errNotTransient)
}

var errNotTransient = errors.New("jobs: permanent failure")

// retryTransient runs fn until it succeeds, fails permanently or retryFor
// passed, backing off from 50ms to 1s; each attempt gets 5s.
func retryTransient(retryFor time.Duration, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(retryFor)
	wait := 50 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil || !transient(err) || time.Now().Add(wait).After(deadline) {
			return err
		}
		time.Sleep(wait)
		wait = min(2*wait, time.Second)
	}
}

package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/internal/money"
)

// store is the PostgreSQL access of the API.
type store struct{ pool *pgxpool.Pool }

var errNoOverride = errors.New("api: no per-lender limit")

func (st *store) lenderLimits(ctx context.Context, lender string) (float64, int, error) {
	var rps *float64
	var burst *int32
	err := st.pool.QueryRow(ctx, "SELECT rate_limit_rps, rate_burst FROM lenders WHERE lender_id = $1", lender).Scan(&rps, &burst)
	if err != nil {
		return 0, 0, err
	}
	if rps == nil || burst == nil {
		return 0, 0, errNoOverride
	}
	return *rps, int(*burst), nil
}

// Loan is the API representation of a loan.
type Loan struct {
	LoanID        string    `json:"loan_id"`
	ApplicationID *string   `json:"application_id,omitempty"`
	CustomerID    string    `json:"customer_id"`
	LenderID      string    `json:"lender_id"`
	Amount        string    `json:"amount"`
	Balance       string    `json:"balance"`
	Currency      string    `json:"currency"`
	TermMonths    int       `json:"term_months"`
	Status        string    `json:"status"`
	DaysPastDue   int       `json:"days_past_due"`
	Version       int64     `json:"version"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

const loanCols = `loan_id, application_id, customer_id, lender_id, amount::text, balance::text, currency, term_months, status, days_past_due, version, created_at, updated_at`

func scanLoan(row pgx.Row) (Loan, error) { return scanLoanExtra(row) }

// scanLoanExtra scans loanCols followed by extra columns.
func scanLoanExtra(row pgx.Row, extra ...any) (Loan, error) {
	var l Loan
	dst := append([]any{&l.LoanID, &l.ApplicationID, &l.CustomerID, &l.LenderID, &l.Amount, &l.Balance, &l.Currency,
		&l.TermMonths, &l.Status, &l.DaysPastDue, &l.Version, &l.CreatedAt, &l.UpdatedAt}, extra...)
	err := row.Scan(dst...)
	if err != nil {
		return l, err
	}
	return l, normalizeMoney(&l)
}

func normalizeMoney(l *Loan) error {
	for _, p := range []*string{&l.Amount, &l.Balance} {
		a, err := money.Parse(*p)
		if err != nil {
			return fmt.Errorf("api: stored amount %q: %w", *p, err)
		}
		*p = a.String()
	}
	return nil
}

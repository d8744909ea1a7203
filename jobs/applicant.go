package jobs

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

// customerIndexes reads customers' SSN blind indexes from PostgreSQL (the
// blind index never travels through customer_360: the CDC allow-list
// keeps it out of Kafka). The pool is made on first use and shared by the
// job's tasks in this process; idle connections close after a second.
type customerIndexes struct {
	dsn  string
	once sync.Once
	pool *pgxpool.Pool
	err  error
}

func (c *customerIndexes) open() (*pgxpool.Pool, error) {
	c.once.Do(func() {
		cfg, err := pgxpool.ParseConfig(c.dsn)
		if err != nil {
			c.err = fmt.Errorf("applicant check: parsing the database URL: %w", err)
			return
		}
		cfg.MaxConns = 4
		cfg.MaxConnIdleTime = time.Second
		cfg.HealthCheckPeriod = time.Second
		c.pool, c.err = pgxpool.NewWithConfig(context.Background(), cfg) // connects lazily
	})
	return c.pool, c.err
}

var errNoSuchCustomer = errors.New("jobs: no such customer")

// index returns the customer's blind index (errNoSuchCustomer when there
// is no such row).
func (c *customerIndexes) index(ctx context.Context, customer string) ([]byte, error) {
	pool, err := c.open()
	if err != nil {
		return nil, err
	}
	var idx []byte
	err = pool.QueryRow(ctx, "SELECT ssn_index FROM customers WHERE customer_id = $1", customer).Scan(&idx)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNoSuchCustomer
	}
	return idx, err
}

// applicantCheck compares the SSN blind index of each application found
// in customer_360 with the named customer's and marks a mismatch
// (ReasonApplicantMismatch) or a comparison that failed every attempt
// (ReasonApplicantUnverified). A customer with no customers row (deleted
// since) passes unmarked. Both
// indexes come from the same PII index keyset; after a rotation of that
// keyset, customers must be re-indexed (loanflow keys rotate) or their
// applicants are referred.
func applicantCheck(in pipeline.Stream[knownApp], d decisionsDeps) pipeline.Stream[knownApp] {
	return operators.Async(in, "applicant-check", operators.AsyncSpec[knownApp, knownApp]{
		Call: func(ctx context.Context, p knownApp) (knownApp, error) {
			idx, err := d.customers.index(ctx, *p.App.CustomerID)
			switch {
			case errors.Is(err, errNoSuchCustomer):
				return p, nil
			case err != nil:
				return p, err
			}
			if subtle.ConstantTimeCompare(idx, p.App.SSNIndex) != 1 {
				p.Mismatch = ReasonApplicantMismatch
			}
			return p, nil
		},
		Capacity: d.cfg.BureauCapacity,
		Timeout:  2 * time.Second,
		Retry: operators.RetryPolicy{MaxAttempts: 5, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
			Retryable: func(error) bool { return true }},
		OnFailure: func(p knownApp, _ error) (knownApp, bool) {
			p.Mismatch = ReasonApplicantUnverified
			return p, true
		},
		InCodec: pipeline.JSONCodec[knownApp](),
	})
}

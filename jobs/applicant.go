package jobs

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/internal/batch"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

// customerIndexes reads customers' SSN blind indexes from PostgreSQL (the
// blind index never travels through customer_360: the CDC allow-list
// keeps it out of Kafka). The pool is made on first use and shared by the
// job's tasks in this process; idle connections close after a second.
// Concurrent look-ups share queries: the applications in flight when a
// query is sent go together in the next (batch.Batcher).
type customerIndexes struct {
	dsn   string
	once  sync.Once
	pool  *pgxpool.Pool
	reads *batch.Batcher[string, []byte]
	err   error
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
		if c.pool, c.err = pgxpool.NewWithConfig(context.Background(), cfg); c.err == nil { // connects lazily
			c.reads = batch.New(2, 64, 5*time.Second, c.readIndexes)
		}
	})
	return c.pool, c.err
}

// readIndexes reads a batch of customers' blind indexes in one query.
func (c *customerIndexes) readIndexes(ctx context.Context, calls []*batch.Call[string, []byte]) {
	found := make(map[string][]byte, len(calls))
	rows, err := c.pool.Query(ctx, "SELECT customer_id, ssn_index FROM customers WHERE customer_id = ANY($1)", batch.Keys(calls))
	if err == nil {
		for rows.Next() {
			var id string
			var idx []byte
			if err = rows.Scan(&id, &idx); err != nil {
				break
			}
			found[id] = idx
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err != nil {
		err = fmt.Errorf("applicant check: reading the blind index: %w", err)
	}
	batch.Answer(calls, found, err, errNoSuchCustomer)
}

var errNoSuchCustomer = errors.New("jobs: no such customer")

// index returns the customer's blind index (errNoSuchCustomer when there
// is no such row).
func (c *customerIndexes) index(ctx context.Context, customer string) ([]byte, error) {
	if _, err := c.open(); err != nil {
		return nil, err
	}
	return c.reads.Do(ctx, customer)
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

package jobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/internal/testenv"
)

// TestCustomerIndexesConcurrentReads: the applicant check's look-ups,
// made at once, share queries (batch.Batcher) and each still gets its own
// customer's blind index, the one the test stored (ssnIndex of the id);
// a customer with no row gets errNoSuchCustomer.
func TestCustomerIndexesConcurrentReads(t *testing.T) {
	dsn := testenv.NewDatabase(t)
	ctx := context.Background()
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	const n = 40
	for i := range n {
		id := fmt.Sprintf("c-idx-%d", i)
		if _, err := pool.Exec(ctx, `INSERT INTO customers (customer_id, name_ct, ssn_ct, ssn_index, ssn_index_key_version, credit_limit,
			current_balance, risk_tier, status) VALUES ($1, '\x00', '\x00', $2, 1, 100, 0, 'LOW', 'ACTIVE')`, id, ssnIndex(id)); err != nil {
			t.Fatal(err)
		}
	}
	c := &customerIndexes{dsn: dsn}
	for round := range 3 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan string, n+1)
		for i := 0; i <= n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				id := fmt.Sprintf("c-idx-%d", i)
				idx, err := c.index(ctx, id)
				switch {
				case i == n:
					if !errors.Is(err, errNoSuchCustomer) {
						errs <- fmt.Sprintf("round %d, %s (no row): %x, %v", round, id, idx, err)
					}
				case err != nil || !bytes.Equal(idx, ssnIndex(id)):
					errs <- fmt.Sprintf("round %d, %s: %x, %v; want %x", round, id, idx, err, ssnIndex(id))
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for msg := range errs {
			t.Error(msg)
		}
	}
}

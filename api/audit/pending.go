package audit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PendSQL is AppendSQL for hot write paths: the expression queues entries
// in audit_pending (migration 00003) inside the caller's transaction,
// without the chain lock, and returns the first entry's queue id. A
// Chainer links queued entries into the chain shortly after they commit.
func PendSQL(first int, entries ...Entry) (string, []any) {
	expr, args := AppendSQL(first, entries...)
	return "audit_pend" + expr[len("audit_append"):], args
}

// ChainPending moves up to max committed entries of audit_pending into
// the chain, oldest first, in one transaction, and returns how many: one
// statement, audit_chain_pending (migration 00005), a SECURITY DEFINER
// function that takes the chain lock, removes the entries and appends
// them through audit_append. The API's database role may call it but may
// not delete queued entries itself.
func ChainPending(ctx context.Context, pool *pgxpool.Pool, max int) (int, error) {
	var n int
	if err := pool.QueryRow(ctx, "SELECT audit_chain_pending($1)", max).Scan(&n); err != nil {
		return 0, fmt.Errorf("audit: chaining pending entries: %w", err)
	}
	return n, nil
}

// ChainerConfig configures a Chainer.
type ChainerConfig struct {
	// Interval between chaining runs when nobody calls Kick. Default 100ms.
	Interval time.Duration
	// Gap is the least time between the end of a run and the start of the
	// next, so that under load each run chains a batch. Default 5ms.
	Gap time.Duration
	// MaxBatch bounds entries per chaining transaction. Default 1000.
	MaxBatch int
	// OnError receives errors of background runs (they are retried at the
	// next run). Default: ignored.
	OnError func(error)
}

// Chainer links the entries queued with PendSQL into the chain in the
// background: after a Kick, or every Interval. One chaining transaction
// holds the chain lock for a whole batch, where appending in each write's
// transaction would hold it from every write's append to its commit.
type Chainer struct {
	pool *pgxpool.Pool
	cfg  ChainerConfig
	kick chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// NewChainer starts the chaining goroutine; Close stops it.
func NewChainer(pool *pgxpool.Pool, cfg ChainerConfig) *Chainer {
	if cfg.Interval <= 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1000
	}
	if cfg.Gap <= 0 {
		cfg.Gap = 5 * time.Millisecond
	}
	if cfg.OnError == nil {
		cfg.OnError = func(error) {}
	}
	c := &Chainer{pool: pool, cfg: cfg, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

// Kick asks for a chaining run soon (it never blocks; kicks during a run
// coalesce into one more run).
func (c *Chainer) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Flush chains every entry committed to audit_pending before it was
// called (and any committed meanwhile).
func (c *Chainer) Flush(ctx context.Context) error {
	for {
		n, err := ChainPending(ctx, c.pool, c.cfg.MaxBatch)
		if err != nil || n < c.cfg.MaxBatch {
			return err
		}
	}
}

// Close stops the goroutine after a last Flush (bounded by 5s).
func (c *Chainer) Close() {
	c.once.Do(func() { close(c.stop) })
	<-c.done
}

func (c *Chainer) run() {
	defer close(c.done)
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			c.flushLogged()
			return
		case <-c.kick:
		case <-t.C:
		}
		c.flushLogged()
		select {
		case <-time.After(c.cfg.Gap):
		case <-c.stop:
			c.flushLogged()
			return
		}
	}
}

func (c *Chainer) flushLogged() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		c.cfg.OnError(err)
	}
}

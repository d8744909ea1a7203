package audit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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
// the chain, oldest first, in one transaction, and returns how many. It
// takes the chain lock, reads the head, computes the hashes here
// (ComputeHash, the same canonical form as audit_append) and inserts the
// rows in one statement: the per-row cost is that of an INSERT, not of a
// hash computed by PL/pgSQL.
func ChainPending(ctx context.Context, pool *pgxpool.Pool, max int) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var err error
		n, err = chainLocked(ctx, tx, max)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("audit: chaining pending entries: %w", err)
	}
	return n, nil
}

func chainLocked(ctx context.Context, tx pgx.Tx, max int) (int, error) {
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(LockKey)); err != nil {
		return 0, err
	}
	rows, err := tx.Query(ctx, `DELETE FROM audit_pending WHERE id IN (SELECT id FROM audit_pending ORDER BY id LIMIT $1)
		RETURNING id, at, actor, lender_id, action, resource, purpose, result, request_id`, max)
	if err != nil {
		return 0, err
	}
	type queued struct {
		id int64
		e  Entry
	}
	var q []queued
	for rows.Next() {
		var r queued
		if err := rows.Scan(&r.id, &r.e.At, &r.e.Actor, &r.e.Lender, &r.e.Action, &r.e.Resource, &r.e.Purpose, &r.e.Result, &r.e.RequestID); err != nil {
			rows.Close()
			return 0, err
		}
		q = append(q, r)
	}
	if err := rows.Err(); err != nil || len(q) == 0 {
		return 0, err
	}
	slices.SortFunc(q, func(a, b queued) int { return cmp.Compare(a.id, b.id) })
	var seq int64
	prev := []byte{}
	err = tx.QueryRow(ctx, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").Scan(&seq, &prev)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return 0, err
	}
	n := len(q)
	seqs, prevs, hashes := make([]int64, n), make([][]byte, n), make([][]byte, n)
	entries := make([]Entry, n)
	for i, r := range q {
		seq++
		seqs[i], prevs[i], entries[i] = seq, prev, r.e
		prev = ComputeHash(prev, seq, r.e)
		hashes[i] = prev
	}
	cols := columns(entries)
	_, err = tx.Exec(ctx, `INSERT INTO audit_log (seq, at, actor, lender_id, action, resource, purpose, result, request_id, prev_hash, hash)
		SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[], $11::bytea[])`,
		append(append([]any{seqs}, cols...), prevs, hashes)...)
	return n, err
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

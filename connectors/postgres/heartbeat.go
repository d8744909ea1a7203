package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// An exact heartbeat vouches for every transaction committed before its
// time H: it is written to the WAL only once no transaction that may carry
// a commit time below H can still commit after it. (docs/design.md, Exact
// heartbeats.)
//
// PostgreSQL stamps a commit (xactStopTimestamp) before it inserts the
// commit record, and clears the backend's xid from the proc array only
// after. So pg_stat_activity, read after H was read from the clock, shows
// as backend_xid every transaction that took its commit time before H and
// has not finished; only those can put a commit record with a time below H
// after the heartbeat. (A snapshot's xip would not do: it lists only xids
// below its xmax, the newest finished xid + 1, and misses running
// transactions with later xids.) A backend seen idle in transaction after
// H (pg_stat_activity reads a backend's state before its xid) has not begun
// to commit and will be stamped later than H; every other transaction with
// an xid in this database, and every prepared transaction of it, is waited
// for until it has finished or is seen idle. Then the message is emitted.
// A long transaction that sits idle between statements does not hold
// heartbeats back; one running a long statement (or a prepared
// transaction) does, until it ends. Transactions of other databases never
// reach this slot and are ignored.

// heartbeatSQL selects the transactions that may still commit with a time
// before the one in loanflow.heartbeat_ms (read by an earlier statement),
// among the xids in $1 (NULL: all); when there are none it emits the
// heartbeat message with that time. It returns the blocking xids and the
// message's LSN (NULL when not emitted).
const heartbeatSQL = `WITH b AS MATERIALIZED (
	SELECT a.backend_xid::text AS xid FROM pg_stat_activity a
	WHERE a.backend_xid IS NOT NULL AND a.datname = current_database()
	AND a.state IS DISTINCT FROM 'idle in transaction' AND a.state IS DISTINCT FROM 'idle in transaction (aborted)'
	AND ($1::text[] IS NULL OR a.backend_xid::text = ANY($1::text[]))
	UNION
	SELECT p.transaction::text FROM pg_prepared_xacts p
	WHERE p.database = current_database() AND ($1::text[] IS NULL OR p.transaction::text = ANY($1::text[]))
)
SELECT coalesce((SELECT array_agg(xid) FROM b), '{}'),
	CASE WHEN NOT EXISTS (SELECT 1 FROM b)
		THEN pg_logical_emit_message(false, $2, current_setting('loanflow.heartbeat_ms'))::text END`

// heartbeatClockSQL reads H (milliseconds, floored, so every commit
// stamped before the millisecond H is stamped before the instant read).
const heartbeatClockSQL = `SELECT set_config('loanflow.heartbeat_ms', (floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1::bigint)::text, false)`

// hbMetrics count heartbeats that waited for a commit in progress.
type hbMetrics struct {
	waited prometheus.Counter
	wait   prometheus.Observer
}

func newHBMetrics(reg prometheus.Registerer, name string) *hbMetrics {
	l := prometheus.Labels{"reader": name}
	return &hbMetrics{
		waited: registerCollector(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loanflow_cdc_heartbeat_waits_total", Help: "Heartbeats that waited for transactions committing when their time was read.", ConstLabels: l,
		})).(prometheus.Counter),
		wait: registerCollector(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "loanflow_cdc_heartbeat_emit_seconds", Help: "From reading a heartbeat's time to writing its message (exactness wait included).",
			ConstLabels: l, Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		})).(prometheus.Histogram),
	}
}

// heartbeats emits an exact heartbeat every interval until ctx ends: a
// non-transactional logical message, decoded even when no published table
// changes, so the slot moves and every CDC partition receives a heartbeat
// record.
func (r *Reader) heartbeats(ctx context.Context) error {
	hm := newHBMetrics(r.cfg.Registerer, r.cfg.Name)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	t := time.NewTicker(r.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		var err error
		if conn == nil {
			if conn, err = connect(ctx, r.cfg.DatabaseURL); err != nil {
				r.cfg.Logger.Warn("cdc: heartbeat connection failed", "error", err)
				continue
			}
		}
		if err = r.beat(ctx, conn, hm); err != nil && ctx.Err() == nil {
			r.cfg.Logger.Warn("cdc: heartbeat failed", "error", err)
			conn.Close(context.WithoutCancel(ctx))
			conn = nil
		}
	}
}

// beat emits one exact heartbeat (see heartbeatSQL).
func (r *Reader) beat(ctx context.Context, conn *pgx.Conn, hm *hbMetrics) error {
	start := time.Now()
	b := &pgx.Batch{}
	b.Queue(heartbeatClockSQL, r.hbShift.Milliseconds())
	b.Queue(heartbeatSQL, nil, heartbeatPrefix)
	res := conn.SendBatch(ctx, b)
	_, err := res.Exec()
	var blockers []string
	var lsn *string
	if err == nil {
		err = res.QueryRow().Scan(&blockers, &lsn)
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	pause, warnAt := time.Millisecond, start.Add(max(10*r.cfg.HeartbeatInterval, 5*time.Second))
	if lsn == nil {
		hm.waited.Inc()
	}
	for lsn == nil {
		if time.Now().After(warnAt) {
			r.cfg.Logger.Warn("cdc: heartbeat waits for transactions that were committing when its time was read (a long statement or a prepared transaction)",
				"xids", strings.Join(blockers, ","), "waited", time.Since(start).Round(time.Millisecond))
			warnAt = time.Now().Add(max(10*r.cfg.HeartbeatInterval, 5*time.Second))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pause):
		}
		pause = min(2*pause, max(r.cfg.HeartbeatInterval/5, time.Millisecond))
		if err := conn.QueryRow(ctx, heartbeatSQL, blockers, heartbeatPrefix).Scan(&blockers, &lsn); err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
	}
	hm.wait.Observe(time.Since(start).Seconds())
	return nil
}

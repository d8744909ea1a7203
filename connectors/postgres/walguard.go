package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrWALGuard: the slot retained more WAL than wal_guard allows (or
// PostgreSQL invalidated it); the reader stopped, and with action
// drop_slot dropped the slot. Not retryable.
var ErrWALGuard = errors.New("postgres: WAL guard tripped")

// Guard actions (WALGuardConfig.Action).
const (
	// GuardStop stops the reader; the slot keeps its WAL.
	GuardStop = "stop"
	// GuardDropSlot stops the reader and drops the slot, so PostgreSQL can
	// remove the WAL; the next start must re-snapshot (`loanflow cdc reset`).
	GuardDropSlot = "drop_slot"
)

// WALGuardConfig configures the side connection that watches the slot in
// pg_replication_slots for the whole life of Run, across session restarts
// (see doc.go, Retained WAL).
type WALGuardConfig struct {
	// PollInterval is how often the slot is read. Default 10s.
	PollInterval time.Duration `yaml:"poll_interval"`
	// MaxRetainedBytes: past this much retained WAL (pg_current_wal_lsn()
	// minus the slot's restart_lsn) the guard acts. 0 (default) never acts;
	// the metrics are exported either way.
	MaxRetainedBytes int64 `yaml:"max_retained_bytes"`
	// MinSafeWALBytes: when safe_wal_size (the WAL PostgreSQL may still
	// write before it invalidates the slot under max_slot_wal_keep_size)
	// falls below this, the guard acts. 0 (default) never acts.
	MinSafeWALBytes int64 `yaml:"min_safe_wal_bytes"`
	// Action is stop (default) or drop_slot.
	Action string `yaml:"action"`
}

func (g WALGuardConfig) withDefaults() WALGuardConfig {
	if g.PollInterval == 0 {
		g.PollInterval = 10 * time.Second
	}
	if g.Action == "" {
		g.Action = GuardStop
	}
	return g
}

func (g WALGuardConfig) validate() error {
	var errs []error
	if g.PollInterval <= 0 {
		errs = append(errs, fmt.Errorf("%w: wal_guard.poll_interval must be positive, got %v", ErrConfig, g.PollInterval))
	}
	if g.MaxRetainedBytes < 0 || g.MinSafeWALBytes < 0 {
		errs = append(errs, fmt.Errorf("%w: wal_guard limits must not be negative", ErrConfig))
	}
	if g.Action != GuardStop && g.Action != GuardDropSlot {
		errs = append(errs, fmt.Errorf("%w: wal_guard.action %q: use %s or %s", ErrConfig, g.Action, GuardStop, GuardDropSlot))
	}
	return errors.Join(errs...)
}

// slotStatuses are the values of pg_replication_slots.wal_status.
var slotStatuses = []string{"reserved", "extended", "unreserved", "lost"}

// slotMetrics are the side connection's gauges.
type slotMetrics struct {
	retained  prometheus.Gauge
	safe      prometheus.Gauge
	lagBytes  prometheus.Gauge
	active    prometheus.Gauge
	status    *prometheus.GaugeVec
	lastPoll  prometheus.Gauge
	pollErrs  prometheus.Counter
	guardTrip prometheus.Counter
}

func newSlotMetrics(reg prometheus.Registerer, name string, lag prometheus.Gauge) *slotMetrics {
	l := prometheus.Labels{"reader": name}
	g := func(n, help string) prometheus.Gauge {
		return registerCollector(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: n, Help: help, ConstLabels: l})).(prometheus.Gauge)
	}
	c := func(n, help string) prometheus.Counter {
		return registerCollector(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: n, Help: help, ConstLabels: l})).(prometheus.Counter)
	}
	m := &slotMetrics{
		retained: g("loanflow_cdc_slot_retained_wal_bytes", "WAL the slot holds back: pg_current_wal_lsn() minus its restart_lsn (side connection)."),
		safe:     g("loanflow_cdc_slot_safe_wal_bytes", "pg_replication_slots.safe_wal_size: WAL that may still be written before the slot is invalidated; +Inf without max_slot_wal_keep_size."),
		lagBytes: lag,
		active:   g("loanflow_cdc_slot_active", "1 while a walsender streams the slot."),
		status: registerCollector(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loanflow_cdc_slot_wal_status", Help: "1 for the slot's pg_replication_slots.wal_status (reserved, extended, unreserved, lost), 0 for the others.", ConstLabels: l,
		}, []string{"status"})).(*prometheus.GaugeVec),
		lastPoll:  g("loanflow_cdc_slot_last_poll_timestamp_seconds", "Unix time of the last successful read of pg_replication_slots."),
		pollErrs:  c("loanflow_cdc_slot_poll_errors_total", "Failed reads of pg_replication_slots."),
		guardTrip: c("loanflow_cdc_wal_guard_trips_total", "Times the WAL guard stopped the reader (or dropped its slot)."),
	}
	for _, s := range slotStatuses {
		m.status.WithLabelValues(s)
	}
	m.safe.Set(math.Inf(1))
	return m
}

// SlotState is a row of pg_replication_slots as the guard and `loanflow
// cdc status` read it.
type SlotState struct {
	Exists bool `json:"exists"`
	Active bool `json:"active"`
	// ActivePID is the walsender's pid (0 when inactive).
	ActivePID  int32  `json:"active_pid,omitempty"`
	WALStatus  string `json:"wal_status,omitempty"`
	RestartLSN string `json:"restart_lsn,omitempty"`
	// ConfirmedFlushLSN is what the reader last confirmed.
	ConfirmedFlushLSN string `json:"confirmed_flush_lsn,omitempty"`
	// CurrentWALLSN is pg_current_wal_lsn() when the row was read.
	CurrentWALLSN string `json:"current_wal_lsn"`
	// RetainedBytes is CurrentWALLSN - RestartLSN.
	RetainedBytes int64 `json:"retained_wal_bytes"`
	// LagBytes is CurrentWALLSN - ConfirmedFlushLSN.
	LagBytes int64 `json:"lag_bytes"`
	// SafeWALBytes is safe_wal_size; nil when max_slot_wal_keep_size is
	// unlimited (-1).
	SafeWALBytes *int64 `json:"safe_wal_bytes"`
}

// readSlotState reads the slot's row of pg_replication_slots (Exists false
// when there is none).
func readSlotState(ctx context.Context, conn *pgx.Conn, slot string) (SlotState, error) {
	var (
		s                      SlotState
		active                 *bool
		pid                    *int32
		status, restart, flush *string
		retained, lag, safe    *int64
	)
	err := conn.QueryRow(ctx, `SELECT s.active, s.active_pid, s.wal_status, s.restart_lsn::text, s.confirmed_flush_lsn::text,
			w.lsn::text, (w.lsn - s.restart_lsn)::bigint, (w.lsn - s.confirmed_flush_lsn)::bigint, s.safe_wal_size
		FROM (SELECT pg_current_wal_lsn() AS lsn) w
		LEFT JOIN pg_replication_slots s ON s.slot_name = $1 AND s.database = current_database()`, slot).
		Scan(&active, &pid, &status, &restart, &flush, &s.CurrentWALLSN, &retained, &lag, &safe)
	if err != nil {
		return s, fmt.Errorf("reading slot %s from pg_replication_slots: %w", slot, err)
	}
	if active == nil {
		return s, nil // no such slot
	}
	deref := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	s.Exists, s.Active = true, *active
	s.WALStatus, s.RestartLSN, s.ConfirmedFlushLSN = deref(status), deref(restart), deref(flush)
	if pid != nil {
		s.ActivePID = *pid
	}
	if retained != nil {
		s.RetainedBytes = max(*retained, 0)
	}
	if lag != nil {
		s.LagBytes = max(*lag, 0)
	}
	s.SafeWALBytes = safe
	return s, nil
}

// guardTrip is why the guard stopped the reader.
type guardTrip struct{ err error }

// watchSlot polls the slot every PollInterval until ctx ends, exporting
// its state; when a limit is passed (or the slot is lost) it logs an error
// and calls trip with an ErrWALGuard error, then returns.
func (r *Reader) watchSlot(ctx context.Context, trip func(error)) {
	g := r.cfg.WALGuard
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	t := time.NewTicker(g.PollInterval)
	defer t.Stop()
	for {
		if conn == nil {
			c, err := connect(ctx, r.cfg.DatabaseURL)
			if err != nil && ctx.Err() == nil {
				r.sm.pollErrs.Inc()
				r.cfg.Logger.Warn("cdc: slot watch connection failed", "slot", r.cfg.Slot, "error", err)
			}
			conn = c
		}
		if conn != nil {
			s, err := readSlotState(ctx, conn, r.cfg.Slot)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				r.sm.pollErrs.Inc()
				r.cfg.Logger.Warn("cdc: reading the slot failed", "slot", r.cfg.Slot, "error", err)
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
			default:
				r.sm.export(s)
				if err := r.guardCheck(s); err != nil {
					r.sm.guardTrip.Inc()
					r.cfg.Logger.Error("cdc: WAL guard tripped; stopping the reader", "slot", r.cfg.Slot, "action", g.Action,
						"retained_wal_bytes", s.RetainedBytes, "wal_status", s.WALStatus, "error", err)
					trip(err)
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *slotMetrics) export(s SlotState) {
	m.lastPoll.Set(float64(time.Now().UnixNano()) / 1e9)
	if !s.Exists {
		m.active.Set(0)
		return
	}
	m.retained.Set(float64(s.RetainedBytes))
	m.lagBytes.Set(float64(s.LagBytes))
	if s.SafeWALBytes != nil {
		m.safe.Set(float64(*s.SafeWALBytes))
	} else {
		m.safe.Set(math.Inf(1))
	}
	if s.Active {
		m.active.Set(1)
	} else {
		m.active.Set(0)
	}
	for _, st := range slotStatuses {
		v := 0.0
		if st == s.WALStatus {
			v = 1
		}
		m.status.WithLabelValues(st).Set(v)
	}
}

// guardCheck returns the error the guard stops with, or nil.
func (r *Reader) guardCheck(s SlotState) error {
	g := r.cfg.WALGuard
	what := "stopped the reader; the slot keeps its WAL: free disk or raise wal_guard.max_retained_bytes, find why the reader fell behind (`loanflow cdc status`), then start it again"
	if g.Action == GuardDropSlot {
		what = "stopped the reader and dropped the slot so PostgreSQL can remove the WAL; the changes since the reader's position are lost to Kafka: run `loanflow cdc reset` and start the reader again for a new snapshot"
	}
	switch {
	case !s.Exists:
		return nil // the session reports a missing slot with its own error
	case s.WALStatus == "lost":
		return fmt.Errorf("%w: slot %s was invalidated by PostgreSQL (wal_status lost: max_slot_wal_keep_size exceeded); the reader cannot resume from it: run `loanflow cdc reset` and start again for a new snapshot", ErrWALGuard, r.cfg.Slot)
	case g.MaxRetainedBytes > 0 && s.RetainedBytes > g.MaxRetainedBytes:
		return fmt.Errorf("%w: slot %s retains %d bytes of WAL, over wal_guard.max_retained_bytes %d (wal_status %s); the guard %s",
			ErrWALGuard, r.cfg.Slot, s.RetainedBytes, g.MaxRetainedBytes, s.WALStatus, what)
	case g.MinSafeWALBytes > 0 && s.SafeWALBytes != nil && *s.SafeWALBytes < g.MinSafeWALBytes:
		return fmt.Errorf("%w: slot %s: PostgreSQL invalidates it after %d more bytes of WAL (safe_wal_size), under wal_guard.min_safe_wal_bytes %d; the guard %s",
			ErrWALGuard, r.cfg.Slot, *s.SafeWALBytes, g.MinSafeWALBytes, what)
	}
	return nil
}

// Run runs sessions until ctx ends (returning nil) or a fatal error (see
// errors.go); retryable errors (lost connections, Kafka errors) start a new
// session after a backoff, which resumes from the position in Kafka. The
// slot is watched from a side connection all along (WALGuardConfig); when
// the guard trips, Run ends the session, drops the slot if so configured,
// and returns an ErrWALGuard error.
func (r *Reader) Run(ctx context.Context) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.watchSlot(sctx, func(err error) { cancel(guardTrip{err}) })
	}()
	err := r.runSessions(sctx)
	var gt guardTrip
	tripped := errors.As(context.Cause(sctx), &gt)
	cancel(nil)
	<-done
	if !tripped {
		return err
	}
	if r.cfg.WALGuard.Action == GuardDropSlot && ctx.Err() == nil {
		if derr := r.guardDrop(ctx); derr != nil {
			return fmt.Errorf("%w (and dropping the slot failed: %v)", gt.err, derr)
		}
		r.cfg.Logger.Error("cdc: WAL guard dropped the slot", "slot", r.cfg.Slot)
	}
	return gt.err
}

func (gt guardTrip) Error() string { return gt.err.Error() }
func (gt guardTrip) Unwrap() error { return gt.err }

func (r *Reader) guardDrop(ctx context.Context) error {
	conn, err := connect(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return dropSlot(ctx, conn, r.cfg.Slot)
}

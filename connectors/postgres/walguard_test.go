package postgres

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// gather reads a registry into name{label=value} → value.
func gather(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() != "reader" {
					name += "{" + l.GetName() + "=" + l.GetValue() + "}"
				}
			}
			switch {
			case m.GetGauge() != nil:
				out[name] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[name] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// slotRow is the slot as the test reads it itself from
// pg_replication_slots.
type slotRow struct {
	exists              bool
	retained, lag, safe int64
	status              string
}

func readSlotIndependently(t testing.TB, c *pgx.Conn, slot string) slotRow {
	t.Helper()
	var r slotRow
	err := c.QueryRow(context.Background(), `SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint,
		coalesce(safe_wal_size, -1), wal_status FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&r.retained, &r.lag, &r.safe, &r.status)
	if errors.Is(err, pgx.ErrNoRows) {
		return r
	}
	if err != nil {
		t.Fatal(err)
	}
	r.exists = true
	return r
}

// TestWALGuard: the side connection exports the slot's retained WAL,
// lag and safe_wal_size while every session fails (the reader points at a
// broker that does not listen, so it restarts sessions and never
// streams), checked against pg_replication_slots read by the test between
// two reads of its own; below the limit the guard does not act (the
// negative control), above it the reader stops with ErrWALGuard, and with
// action drop_slot the slot is gone. The WAL comes from a table outside
// the publication.
func TestWALGuard(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'")
	e.exec(c, "SELECT pg_reload_conf()")
	t.Cleanup(func() {
		e.exec(c, "ALTER SYSTEM RESET max_slot_wal_keep_size")
		e.exec(c, "SELECT pg_reload_conf()")
	})
	e.exec(c, "CREATE TABLE t (id int PRIMARY KEY)")
	e.exec(c, "CREATE TABLE churn (id int, pad text)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "t"}}
	cfg.WALGuard.PollInterval = 100 * time.Millisecond
	stop := e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Sessions cannot start: the broker does not listen.
	dead := cfg
	dead.Brokers = []string{"127.0.0.1:1"}
	dead.ReconnectBackoffMax = 200 * time.Millisecond
	run := func(g WALGuardConfig) (*prometheus.Registry, chan error, context.CancelFunc) {
		cfg := dead
		cfg.WALGuard = g
		cfg.Registerer = prometheus.NewRegistry()
		r, err := NewReader(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		t.Cleanup(func() { cancel(); <-done; done <- nil })
		return cfg.Registerer.(*prometheus.Registry), done, cancel
	}

	reg, done, cancel := run(WALGuardConfig{PollInterval: 100 * time.Millisecond, MaxRetainedBytes: 1 << 30})
	base := readSlotIndependently(t, c, cfg.Name).retained
	for i := 0; i < 4; i++ {
		e.exec(c, "INSERT INTO churn SELECT g, repeat('x', 200) FROM generate_series(1, 10000) g")
		e.exec(c, "DELETE FROM churn")
	}
	// The metric lies between two independent reads around it once a poll
	// ran after the first read: the slot does not move (nothing streams).
	deadline := time.Now().Add(time.Minute)
	var m map[string]float64
	var a, b slotRow
	for {
		a = readSlotIndependently(t, c, cfg.Name)
		time.Sleep(150 * time.Millisecond) // lets a poll run; the check below waits for one
		m = gather(t, reg)
		b = readSlotIndependently(t, c, cfg.Name)
		ret, lag, safe := int64(m["loanflow_cdc_slot_retained_wal_bytes"]), int64(m["loanflow_cdc_replication_lag_bytes"]), m["loanflow_cdc_slot_safe_wal_bytes"]
		ok := a.retained <= ret && ret <= b.retained && a.lag <= lag && lag <= b.lag &&
			float64(b.safe) <= safe && safe <= float64(a.safe)
		if ok && a.retained > base+4<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot metrics %v never between independent reads %+v and %+v (base %d)", m, a, b, base)
		}
	}
	t.Logf("retained %v bytes (independently %d..%d), lag %v, safe_wal_size %v", m["loanflow_cdc_slot_retained_wal_bytes"], a.retained, b.retained,
		m["loanflow_cdc_replication_lag_bytes"], m["loanflow_cdc_slot_safe_wal_bytes"])
	if m["loanflow_cdc_slot_wal_status{status=reserved}"] != 1 || m["loanflow_cdc_slot_wal_status{status=lost}"] != 0 || m["loanflow_cdc_slot_active"] != 0 {
		t.Errorf("wal_status/active metrics %v, want reserved and inactive (independently %s)", m, b.status)
	}
	if math.IsInf(m["loanflow_cdc_slot_safe_wal_bytes"], 1) {
		t.Errorf("safe_wal_size exported as unlimited with max_slot_wal_keep_size set")
	}
	if m["loanflow_cdc_session_restarts_total"] == 0 {
		t.Errorf("no session restarted: the test wants the guard to poll while sessions fail")
	}
	// Negative control: below the limit the guard does not act.
	select {
	case err := <-done:
		t.Fatalf("reader stopped below the guard's limit: %v", err)
	default:
	}
	if m["loanflow_cdc_wal_guard_trips_total"] != 0 {
		t.Fatalf("guard tripped below its limit")
	}
	cancel()

	for _, action := range []string{GuardStop, GuardDropSlot} {
		limit := a.retained / 2
		reg, done, _ := run(WALGuardConfig{PollInterval: 100 * time.Millisecond, MaxRetainedBytes: limit, Action: action})
		var err error
		select {
		case err = <-done:
		case <-time.After(time.Minute):
			t.Fatalf("%s: the guard did not stop the reader with %d bytes retained over a limit of %d", action, a.retained, limit)
		}
		if !errors.Is(err, ErrWALGuard) || !strings.Contains(err.Error(), "max_retained_bytes") || !strings.Contains(err.Error(), cfg.Name) {
			t.Fatalf("%s: Run returned %v, want ErrWALGuard naming the slot and the limit", action, err)
		}
		if n := gather(t, reg)["loanflow_cdc_wal_guard_trips_total"]; n != 1 {
			t.Errorf("%s: loanflow_cdc_wal_guard_trips_total %v, want 1", action, n)
		}
		exists := readSlotIndependently(t, c, cfg.Name).exists
		if exists != (action == GuardStop) {
			t.Errorf("%s: slot exists %v after the guard tripped", action, exists)
		}
		t.Logf("%s: %v", action, err)
		done <- nil
	}
}

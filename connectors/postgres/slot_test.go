package postgres

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/loanflow/loanflow/internal/testenv"
)

// TestIdleDatabaseSlotLagBounded: WAL written by another database is never
// decoded into the slot's stream, yet keepalives and heartbeats keep the
// slot's confirmed position close to the server's WAL end.
func TestIdleDatabaseSlotLagBounded(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE idle (id int PRIMARY KEY)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "idle"}}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	cfg.WALGuard.PollInterval = 200 * time.Millisecond // lag_bytes comes from the slot watch
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)

	other, err := pgx.Connect(ctx, testenv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	e.exec(other, "CREATE TABLE churn (id int, pad text)")
	start := e.currentLSN(c)
	var maxLag uint64
	for i := 0; i < 20; i++ {
		e.exec(other, "INSERT INTO churn SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
		e.exec(other, "DELETE FROM churn")
		if lag := uint64(e.currentLSN(c) - e.confirmedFlush(c, cfg.Name)); lag > maxLag {
			maxLag = lag
		}
		time.Sleep(100 * time.Millisecond)
	}
	written := uint64(e.currentLSN(c) - start)
	// Once the other database stops, the slot must catch up to (almost)
	// the WAL end: what is left is at most the last few records.
	deadline := time.Now().Add(15 * time.Second)
	var lag uint64
	for time.Now().Before(deadline) {
		if lag = uint64(e.currentLSN(c) - e.confirmedFlush(c, cfg.Name)); lag < 64<<10 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("other database wrote %d bytes of WAL; max slot lag while writing %d, after %d", written, maxLag, lag)
	if written < 10<<20 {
		t.Fatalf("only %d bytes of WAL written; the test needs more", written)
	}
	if lag >= 64<<10 {
		t.Fatalf("slot lag stayed at %d bytes after %d bytes of foreign WAL", lag, written)
	}
	if maxLag > written/2 {
		t.Fatalf("slot lag reached %d of %d bytes written: not bounded", maxLag, written)
	}
	time.Sleep(1500 * time.Millisecond) // a heartbeat and a status update
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				got[mf.GetName()] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				got[mf.GetName()] = m.GetCounter().GetValue()
			}
		}
	}
	if got["loanflow_cdc_committed_lsn"] < float64(start) || got["loanflow_cdc_heartbeats_total"] == 0 || got["loanflow_cdc_snapshot_progress_ratio"] != 1 {
		t.Errorf("metrics: %v", got)
	}
	if lagBytes := got["loanflow_cdc_replication_lag_bytes"]; lagBytes > 1<<20 {
		t.Errorf("replication lag metric %v bytes while idle", lagBytes)
	}
	// Heartbeats commit on an idle database, so the last commit is recent.
	if age := time.Since(time.Unix(0, int64(got["loanflow_cdc_last_commit_timestamp_seconds"]*1e9))); age > 5*time.Second {
		t.Errorf("last Kafka commit %v ago on an idle database with heartbeats", age)
	}
}

// TestSlotRecreatedStopsReader: a slot dropped and recreated behind the
// reader's back makes it stop with an error naming the slot, not resume
// from the new slot (which would skip WAL).
func TestSlotRecreatedStopsReader(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE r (id int PRIMARY KEY)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "r"}}
	r, err := NewReader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { done <- r.Run(rctx) }()
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO r SELECT generate_series(1, 100)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	dropped := false
	for i := 0; i < 200 && !dropped; i++ {
		_, _ = c.Exec(ctx, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", cfg.Name)
		_, err := c.Exec(ctx, "SELECT pg_drop_replication_slot($1)", cfg.Name)
		dropped = err == nil
		time.Sleep(10 * time.Millisecond)
	}
	if !dropped {
		t.Fatal("could not drop the slot")
	}
	e.exec(c, "INSERT INTO r SELECT generate_series(101, 200)") // WAL the new slot never sees
	e.exec(c, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", cfg.Name)
	e.exec(c, "INSERT INTO r SELECT generate_series(201, 300)")
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("reader kept running on a recreated slot")
	}
	if !errors.Is(err, ErrSlotGap) && !errors.Is(err, ErrSlotGone) {
		t.Fatalf("Run returned %v, want ErrSlotGap or ErrSlotGone", err)
	}
	if !strings.Contains(err.Error(), cfg.Name) {
		t.Fatalf("error does not name the slot: %v", err)
	}
	t.Logf("reader stopped: %v", err)
}

// TestMissingTableIsFatal: a configured table that does not exist stops
// the reader with the database's error instead of retrying forever.
func TestMissingTableIsFatal(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "no_such_table"}}
	r, err := NewReader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "no_such_table") {
		t.Fatalf("Run = %v, want an error naming the missing table", err)
	}
}

package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/loanflow/loanflow/connectors/postgres"
	"github.com/loanflow/loanflow/internal/testenv"
)

// TestCDCStatus runs a reader on a real PostgreSQL and broker, holds WAL
// back with a second slot-less burst of writes, and checks `cdc status
// --output json` against pg_replication_slots read by the test between two
// reads of its own, and against the reader's config (name, slot, the one
// snapshotted table); the table output names every field; a reader that
// does not exist shows a missing slot and no position; no config and no
// URL is a clear error. The reader keeps running through all of it.
func TestCDCStatus(t *testing.T) {
	ctx := context.Background()
	brokers := testenv.Broker(t).Addrs()
	regURL := startRegistry(t, brokers)
	dsn := testenv.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{"CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 10)"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	name := strings.ReplaceAll(testenv.Name(t, "st"), "-", "_")
	cfgFile := filepath.Join(t.TempDir(), "cdc.yaml")
	yaml := "name: " + name + "\ndatabase_url: " + dsn + "\nbrokers: [" + strings.Join(brokers, ", ") + "]\nschema_registry_url: " + regURL +
		"\ntopic_prefix: " + name + "\npositions_topic: " + name + "_positions\ntables:\n  - table: public.t\n"
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := postgres.LoadConfig(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.HeartbeatInterval = 200 * time.Millisecond
	r, err := postgres.NewReader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()

	status := func(args ...string) postgres.Status {
		t.Helper()
		out, err := run(t, newCDCCmd, append([]string{"status", "--output", "json"}, args...)...)
		if err != nil {
			t.Fatalf("cdc status: %v\n%s", err, out)
		}
		var st postgres.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("cdc status --output json: %v\n%s", err, out)
		}
		return st
	}
	lsn := func(s string) pglogrepl.LSN {
		l, err := pglogrepl.ParseLSN(s)
		if err != nil {
			t.Fatalf("LSN %q: %v", s, err)
		}
		return l
	}
	type indep struct {
		current, restart, flush pglogrepl.LSN
		active                  bool
		status                  string
	}
	read := func() indep {
		var cur, restart, flush string
		var i indep
		err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, restart_lsn::text, confirmed_flush_lsn::text, active, wal_status
			FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&cur, &restart, &flush, &i.active, &i.status)
		if err != nil {
			t.Fatal(err)
		}
		i.current, i.restart, i.flush = lsn(cur), lsn(restart), lsn(flush)
		return i
	}

	// Wait until the reader streams with the snapshot committed.
	deadline := time.Now().Add(time.Minute)
	var st postgres.Status
	for {
		st = status("--config", cfgFile)
		if st.Position != nil && st.Position.Snapshot == nil && st.SlotState.Active && len(st.Position.Tables) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reader never showed as streaming with its snapshot done: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Compare with pg_replication_slots read before and after.
	for {
		a := read()
		st = status("--config", cfgFile)
		b := read()
		s := st.SlotState
		cur := lsn(s.CurrentWALLSN)
		ok := a.restart == b.restart && a.flush == b.flush && // the slot did not move in between
			lsn(s.RestartLSN) == a.restart && lsn(s.ConfirmedFlushLSN) == a.flush &&
			a.current <= cur && cur <= b.current &&
			s.RetainedBytes == int64(cur-a.restart) && s.LagBytes == int64(cur-a.flush) &&
			s.Active == a.active && s.WALStatus == a.status && s.SafeWALBytes == nil
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %+v never matched pg_replication_slots (%+v .. %+v)", s, a, b)
		}
	}
	p := st.Position
	// The position is read after the slot, so it may be ahead of the
	// slot's current_wal_lsn; not of the WAL written since.
	var after string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if st.Reader != name || st.Slot != name || p.Slot != name || p.Tables[0] != "public.t" || p.FlushLSN == 0 ||
		p.FlushLSN > lsn(after) || st.LastCommit == nil || st.LastCommit.Before(time.Now().Add(-10*time.Minute)) {
		t.Errorf("status %+v, position %+v", st, *p)
	}
	t.Logf("status: %+v", st.SlotState)

	out, err := run(t, newCDCCmd, "status", "--config", cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SLOT", name, "ACTIVE", "yes", "WAL STATUS", "reserved", "LAG", "RETAINED WAL", "SAFE WAL SIZE", "unlimited", "POSITION", "LAST COMMIT", "SNAPSHOT", "complete (1 tables)"} {
		if !strings.Contains(out, want) {
			t.Errorf("table output lacks %q:\n%s", want, out)
		}
	}

	// Another reader name: no slot, no position.
	other := status("--config", cfgFile, "--name", name+"_none")
	if other.SlotState.Exists || other.Position != nil || !strings.Contains(other.PositionError, "no position") {
		t.Errorf("status of a reader that never ran: %+v", other)
	}
	other = status("--database-url", dsn, "--brokers", strings.Join(brokers, ","), "--name", name+"_none")
	if other.SlotState.Exists || other.Position != nil || !strings.Contains(other.PositionError, "does not exist") {
		t.Errorf("status of a reader that never ran, default positions topic: %+v", other)
	}
	if _, err := run(t, newCDCCmd, "status"); err == nil || !strings.Contains(err.Error(), "--config FILE or --database-url URL is required") {
		t.Errorf("status without a config: %v", err)
	}
	if _, err := run(t, newCDCCmd, "status", "--config", cfgFile, "--output", "yaml"); err == nil || !strings.Contains(err.Error(), "use table or json") {
		t.Errorf("status --output yaml: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("the reader stopped during cdc status: %v", err)
	default:
	}
}

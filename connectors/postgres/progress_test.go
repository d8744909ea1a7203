package postgres

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gaugeOf is the value of the gauge name{table} in reg (-1: absent).
func gaugeOf(t *testing.T, reg *prometheus.Registry, name, table string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelOf(m, "table") == table {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// TestIncrementalSnapshotProgress: a requested incremental snapshot
// reports its progress in the position (Read, Chunks, Estimate while it
// runs; Completed with the request's LSN at the end) and in the
// loanflow_cdc_incremental_snapshot_* gauges. The expected figures come
// from PostgreSQL: count(*) of the table, and the chunk count that
// count makes with the configured chunk size. Two tables: one never
// analyzed (the reader estimates it with count(*)) and one analyzed (the
// reader takes pg_class.reltuples). A signal for a table the reader does
// not publish completes with an error rather than never.
func TestIncrementalSnapshotProgress(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE p1 (id int PRIMARY KEY, v int NOT NULL)")
	e.exec(c, "INSERT INTO p1 SELECT g, g * 2 FROM generate_series(1, 2345) g")
	e.exec(c, "CREATE TABLE p2 (id int PRIMARY KEY, v int NOT NULL)")
	e.exec(c, "INSERT INTO p2 SELECT g, g * 3 FROM generate_series(1, 1017) g")
	e.exec(c, "DELETE FROM p2 WHERE id % 10 = 0")
	e.exec(c, "ANALYZE p2")
	e.exec(c, "CREATE TABLE unpublished (id int PRIMARY KEY)")
	reg := prometheus.NewRegistry()
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "p1"}, {Table: "p2"}}
	cfg.SnapshotTxnMaxRows = 200
	cfg.Registerer = reg
	var pw posWatch
	cfg.OnCommit = pw.on
	stop := e.runReader(cfg)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("reader: %v", err)
		}
	}()
	pw.wait(t, "the initial snapshot", func(p Position) bool { return p.Snapshot == nil && p.FlushLSN > 0 && len(p.Tables) == 2 })

	count := func(table string) int64 {
		var n int64
		if err := c.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	n1, n2 := count("p1"), count("p2")
	var est2 float64
	if err := c.QueryRow(ctx, "SELECT reltuples FROM pg_class WHERE oid = 'p2'::regclass").Scan(&est2); err != nil {
		t.Fatal(err)
	}
	req, err := RequestSnapshot(ctx, e.dsn, []string{"p1", "public.p2", "unpublished"})
	if err != nil {
		t.Fatal(err)
	}
	// While p1 runs, its progress is in the position and never above the count.
	sawRunning := false
	pw.wait(t, "the requested snapshots", func(p Position) bool {
		if inc := p.Incremental; inc != nil && inc.Table == "public.p1" && inc.Requested["public.p1"] == req {
			if inc.Read > n1 || (inc.Chunks > 0 && inc.Estimate != n1) || inc.Chunks*200 < inc.Read {
				t.Errorf("p1 in progress: read %d, chunks %d, estimate %d; the table has %d rows", inc.Read, inc.Chunks, inc.Estimate, n1)
			}
			sawRunning = true
		}
		return p.Completed["public.p1"].Request == req && p.Completed["public.p2"].Request == req && p.Completed["public.unpublished"].Request == req
	})
	pw.mu.Lock()
	done := pw.last.Completed
	pw.mu.Unlock()
	chunks := func(n int64) int64 { return n/200 + 1 } // the last chunk is short (or empty)
	for table, n := range map[string]int64{"public.p1": n1, "public.p2": n2} {
		d := done[table]
		if d.Error != "" || d.Read != n || d.Rows != n || d.Chunks != chunks(n) || d.Finished.Before(d.Started) {
			t.Errorf("%s: completed %+v; the table has %d rows (%d chunks of 200)", table, d, n, chunks(n))
		}
		if got := gaugeOf(t, reg, "loanflow_cdc_incremental_snapshot_rows", table); got != float64(n) {
			t.Errorf("%s: rows gauge %v, want %d", table, got, n)
		}
		if got := gaugeOf(t, reg, "loanflow_cdc_incremental_snapshot_rows_estimated", table); got != float64(n) {
			t.Errorf("%s: rows_estimated gauge %v at the end, want %d", table, got, n)
		}
		if got := gaugeOf(t, reg, "loanflow_cdc_incremental_snapshot_chunks", table); got != float64(chunks(n)) {
			t.Errorf("%s: chunks gauge %v, want %d", table, got, chunks(n))
		}
		if got := gaugeOf(t, reg, "loanflow_cdc_incremental_snapshot_chunks_estimated", table); got != float64(chunks(n)) {
			t.Errorf("%s: chunks_estimated gauge %v, want %d", table, got, chunks(n))
		}
	}
	if int64(est2) != n2 {
		t.Logf("p2's reltuples %v differs from its count %d (the estimate is only an estimate)", est2, n2)
	}
	if u := done["public.unpublished"]; u.Error == "" || u.Rows != 0 {
		t.Errorf("unpublished table: completed %+v, want an error", u)
	}
	t.Logf("p1: %d rows, p2: %d rows (reltuples %v); saw p1 running: %v", n1, n2, est2, sawRunning)
}

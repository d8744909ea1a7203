package postgres

import (
	"time"

	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestChangesCounterByTableAndOp: loanflow_cdc_changes_total has a series
// per published table and op at 0 before the first change (so increase()
// sees the first one), and counts what the test's statements did, per
// table and op: the counts come from the test's own tally of statements,
// and the untouched table stays at 0.
func TestChangesCounterByTableAndOp(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE a (id int PRIMARY KEY, v int)")
	e.exec(c, "CREATE TABLE b (id int PRIMARY KEY, v int)")
	e.exec(c, "INSERT INTO a VALUES (100, 0), (101, 0)") // read by the snapshot
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "a"}, {Table: "b"}}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	m := gather(t, reg)
	for _, tbl := range []string{"public.a", "public.b"} {
		for _, op := range []string{"c", "u", "d"} {
			k := "loanflow_cdc_changes_total{op=" + op + "}{table=" + tbl + "}"
			if v, ok := m[k]; !ok || v != 0 {
				t.Errorf("%s = %v (present %v) before any change, want 0", k, v, ok)
			}
		}
	}
	want := map[string]float64{"public.a r": 2, "public.b r": 0}
	for i := 0; i < 5; i++ {
		e.exec(c, "INSERT INTO a VALUES ($1, 0)", i)
		want["public.a c"]++
	}
	e.exec(c, "UPDATE a SET v = 1 WHERE id < 3")
	want["public.a u"] += 3
	e.exec(c, "DELETE FROM a WHERE id = 4")
	want["public.a d"]++
	e.exec(c, "BEGIN")
	e.exec(c, "INSERT INTO a VALUES (50, 0)")
	e.exec(c, "ROLLBACK")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	m = gather(t, reg)
	for _, tbl := range []string{"public.a", "public.b"} {
		for _, op := range []string{"c", "u", "d", "r"} {
			k := "loanflow_cdc_changes_total{op=" + op + "}{table=" + tbl + "}"
			if m[k] != want[tbl+" "+op] {
				t.Errorf("%s = %v, want %v", k, m[k], want[tbl+" "+op])
			}
		}
	}
}

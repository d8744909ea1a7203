package postgres

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// TestExactHeartbeats is a model check of the heartbeat's promise: in
// every partition, no change whose commit time is below a heartbeat's
// time comes after that heartbeat. Concurrent writers (single inserts and
// two-statement transactions) commit while heartbeats run every 50ms, and
// one transaction stays open, idle, across at least five heartbeats before
// it commits: heartbeats must keep coming while it is open (it has not
// begun to commit), and its change, stamped at its commit, must follow
// them. The negative control runs the same load with heartbeats that
// claim a time an hour ahead: the checker must find violations.
func TestExactHeartbeats(t *testing.T) {
	for _, tc := range []struct {
		name  string
		shift time.Duration
	}{{"exact", 0}, {"claims_the_future", time.Hour}} {
		t.Run(tc.name, func(t *testing.T) {
			violations, beats, longAfter := exactHeartbeatRun(t, tc.shift)
			t.Logf("%d heartbeats between changes; %d violations; %d heartbeats from after the long transaction began precede its change", beats, len(violations), longAfter)
			if beats < 5 {
				t.Fatalf("only %d heartbeats landed between changes: the check saw too few", beats)
			}
			if tc.shift == 0 {
				for _, v := range violations[:min(len(violations), 10)] {
					t.Error(v)
				}
				if longAfter < 3 {
					t.Errorf("only %d heartbeats taken after the long transaction began precede its change: the open transaction held heartbeats back", longAfter)
				}
			} else if len(violations) == 0 {
				t.Fatal("negative control: heartbeats an hour ahead produced no violation; the checker cannot fail")
			}
		})
	}
}

// exactHeartbeatRun runs the load and returns the violations found, the
// heartbeats seen between changes, and how many heartbeats whose time is
// after the long transaction's start precede its change.
func exactHeartbeatRun(t *testing.T, shift time.Duration) ([]string, int, int) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE w (id int PRIMARY KEY, writer int NOT NULL)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "w"}}
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.HeartbeatTopic = cfg.TopicPrefix + "_heartbeat"
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	r, err := NewReader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.hbShift = shift
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()
	e.waitSnapshot(c, cfg.Name)
	beats := func() float64 { return gather(t, reg)["loanflow_cdc_heartbeats_total"] }

	// The long transaction: open, one insert, idle across heartbeats.
	long := e.conn()
	tx, err := long.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var longStart time.Time
	if err := tx.QueryRow(ctx, "SELECT now()").Scan(&longStart); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO w VALUES (-1, -1)"); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	stopWriters := make(chan struct{})
	for wr := 0; wr < 4; wr++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wc, err := pgx.Connect(ctx, e.dsn)
			if err != nil {
				errs <- err
				return
			}
			defer wc.Close(ctx)
			for i := 0; i < 400; i++ {
				select {
				case <-stopWriters:
					return
				default:
				}
				id := wr*100000 + 2*i
				if wr%2 == 0 {
					_, err = wc.Exec(ctx, "INSERT INTO w VALUES ($1, $2)", id, wr)
				} else {
					_, err = wc.Exec(ctx, fmt.Sprintf("BEGIN; INSERT INTO w VALUES (%d, %d); INSERT INTO w VALUES (%d, %d); COMMIT", id, wr, id+1, wr))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// Hold the long transaction open until five heartbeats whose time is
	// after its start are in Kafka, written while the writers run. Counting
	// heartbeats written (the metric) is not enough: on a loaded machine the
	// writer trails the heartbeats' times by more than a few intervals, so
	// the next five written may have been taken before the transaction
	// began (CI, 2026-12-05: two of them after its start).
	deadline := time.Now().Add(time.Minute)
	for {
		after := 0
		for _, rec := range e.readRaw(cfg.HeartbeatTopic) {
			// (the negative control's heartbeats claim shift more than
			// the time they were taken)
			if rec.heartbeat() && rec.rec.Timestamp.Add(-shift).UnixMilli() > longStart.UnixMilli() {
				after++
			}
		}
		if after >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heartbeats stopped while a transaction was open and idle (%d taken after it began, %v written in all)", after, beats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO w VALUES (-2, -1)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	close(stopWriters)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A few heartbeats after the last change, then read everything.
	last := beats()
	for beats() < last+3 {
		if time.Now().After(deadline) {
			t.Fatal("no heartbeats after the load")
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	recs := e.readAll(cfg.TopicPrefix + ".public.w")
	var violations []string
	between := 0
	maxH := map[int32]int64{}
	changesSeen, pendingBeat := map[int32]bool{}, map[int32]bool{}
	beatsAfterStart := map[int32]int{} // heartbeats with a time after the long transaction began, per partition
	longAfter := -1
	for _, rec := range recs {
		p := rec.rec.Partition
		if rec.heartbeat() {
			h, err := strconv.ParseInt(string(rec.rec.Headers[0].Value), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			maxH[p] = max(maxH[p], h)
			pendingBeat[p] = changesSeen[p]
			if h > longStart.UnixMilli() {
				beatsAfterStart[p]++
			}
			continue
		}
		if rec.value == nil {
			continue // a tombstone
		}
		ts := rec.rec.Timestamp.UnixMilli()
		if pendingBeat[p] {
			between++
			pendingBeat[p] = false
		}
		changesSeen[p] = true
		if ts < maxH[p] {
			violations = append(violations, fmt.Sprintf("partition %d offset %d: change committed at %d ms after a heartbeat of %d ms", p, rec.rec.Offset, ts, maxH[p]))
		}
		if after, _ := rec.value["after"].(map[string]any); after != nil && after["id"] == int32(-2) {
			longAfter = beatsAfterStart[p]
		}
	}
	if longAfter < 0 {
		t.Fatal("the long transaction's change is not in the topic")
	}
	return violations, between, longAfter
}

// TestHeartbeatWaitsForCommittingTransactions: a transaction that holds
// an xid and sits idle between statements does not hold heartbeats back
// (it has not begun to commit, so it will be stamped later); one running
// a statement might be committing, so the heartbeat taken meanwhile waits
// (loanflow_cdc_heartbeat_waits_total) until that transaction is seen idle
// (here: its statement is cancelled, leaving it aborted), then heartbeats
// go on.
func TestHeartbeatWaitsForCommittingTransactions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE w (id int PRIMARY KEY)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "w"}}
	cfg.HeartbeatInterval = 50 * time.Millisecond
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	metric := func(n string) float64 { return gather(t, reg)[n] }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	txc := e.conn()
	var pid int
	if err := txc.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	e.exec(txc, "BEGIN")
	e.exec(txc, "INSERT INTO w VALUES (1)")
	b0 := metric("loanflow_cdc_heartbeats_total")
	waitFor("heartbeats while a transaction is idle", func() bool { return metric("loanflow_cdc_heartbeats_total") >= b0+3 })
	w0 := metric("loanflow_cdc_heartbeat_waits_total")

	sleepDone := make(chan error, 1)
	go func() {
		_, err := txc.Exec(ctx, "SELECT pg_sleep(120)")
		sleepDone <- err
	}()
	waitFor("a heartbeat waiting for the running statement", func() bool { return metric("loanflow_cdc_heartbeat_waits_total") > w0 })
	b1 := metric("loanflow_cdc_heartbeats_total")
	e.exec(c, "SELECT pg_cancel_backend($1)", pid)
	if err := <-sleepDone; err == nil {
		t.Fatal("pg_sleep was not cancelled")
	}
	waitFor("heartbeats after the statement ended", func() bool { return metric("loanflow_cdc_heartbeats_total") >= b1+3 })
	e.exec(txc, "ROLLBACK")
}

package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/avro"

	"github.com/loanflow/loanflow/schemas"
)

// c360State is the test's plain model of customer c1's customer_360 row
// (nil: no row, e.g. without a credit profile).
type c360State struct {
	balance    string
	score      int32
	delinquent bool
	version    int64
}

// stampedChange is one change of the model: its state after, and the
// database clock read during its statement (before the commit) and after
// the commit returned; its commit time lies in between.
type stampedChange struct {
	state         *c360State
	before, after time.Time
}

// c360Candidates are the model states valid at some instant of
// [s, s+1ms) (stamps are in milliseconds): state k holds from its commit
// time until the next change's.
func c360Candidates(changes []stampedChange, s time.Time) []*c360State {
	end := s.Add(time.Millisecond)
	var out []*c360State
	for k, ch := range changes {
		startsBefore := k == 0 || ch.before.Before(end)
		endsAfter := k == len(changes)-1 || changes[k+1].after.After(s)
		if startsBefore && endsAfter {
			out = append(out, ch.state)
		}
	}
	return out
}

func sameState(a, b *c360State) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// checkC360Record reports why a record with stamp s and state got does
// not match the model, or "".
func checkC360Record(changes []stampedChange, s time.Time, got *c360State) string {
	cands := c360Candidates(changes, s)
	for _, c := range cands {
		if sameState(c, got) {
			return ""
		}
	}
	desc := func(st *c360State) string {
		if st == nil {
			return "no row"
		}
		return fmt.Sprintf("%+v", *st)
	}
	want := ""
	for _, c := range cands {
		want += " " + desc(c)
	}
	return fmt.Sprintf("record stamped %s holds %s; the state then was one of:%s", s.Format(time.RFC3339Nano), desc(got), want)
}

// TestCustomer360StampsMatchState: every customer_360 record is the
// customer's state as of its stamp (updated_at, equal to the record
// timestamp), checked against a plain model of the test's changes and
// their commit-time brackets. First a backlog: the reader is stopped while
// eight changes of customer c1 commit (balance, version, a delinquent
// loan, score, the loan cured, the profile deleted and re-created), then
// it catches up; before, each backlog record carried today's state
// stamped with its change's old commit time. Then the same changes with
// the reader running, with stamp: query. The negative control is the
// default stamp (commit): a backlog record carries today's state under
// its change's old commit time, which the checker must find (and, on the
// query run, the first backlog record restamped with its change's time).
func TestCustomer360StampsMatchState(t *testing.T) {
	if bad := c360StampRun(t, StampQuery); len(bad) > 0 {
		for _, b := range bad {
			t.Error(b)
		}
	}
	bad := c360StampRun(t, StampCommit)
	t.Logf("stamp commit: %d records do not match the state as of their stamp", len(bad))
	if len(bad) == 0 {
		t.Fatal("negative control: with commit-time stamps the backlog's records matched the model; the checker cannot fail")
	}
}

// c360StampRun runs the scenario with a view stamp and returns the
// records that do not match the model.
func c360StampRun(t *testing.T, stamp string) []string {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.customer360Tables(c)
	cfg := e.cfg
	topic := cfg.TopicPrefix + "_customer_360"
	view := Customer360View()
	view.Topic = topic
	view.Stamp = stamp
	cfg.Views = []ViewConfig{view}
	// One change per Kafka transaction, so the backlog's changes are not
	// merged into one view row (touched keys are refreshed once per
	// transaction): with commit stamps each backlog change then yields a
	// row of today's state under its own old commit time, whatever the
	// reader's pace (CI: a quiet run read the whole backlog into one
	// transaction and the negative control found nothing).
	cfg.TxnMaxRecords = 1
	stop := e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)

	clock := func() time.Time {
		var ts time.Time
		if err := c.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&ts); err != nil {
			t.Fatal(err)
		}
		return ts
	}
	st := c360State{balance: "0.00", score: 700, version: 1}
	var changes []stampedChange
	live := false
	apply := func(sql string, f func(s *c360State) *c360State) {
		t.Helper()
		var during time.Time
		if err := c.QueryRow(ctx, sql+" RETURNING clock_timestamp()").Scan(&during); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		var next *c360State
		if prev := changes[len(changes)-1].state; prev != nil {
			cp := *prev
			next = f(&cp)
		} else {
			next = f(nil)
		}
		changes = append(changes, stampedChange{state: next, before: during, after: clock()})
		if live { // one change per Kafka commit, so each gets its own record
			e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
		}
	}
	e.exec(c, "INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ('c1', 5000, 'LOW')")
	before := clock()
	e.exec(c, "INSERT INTO credit_profiles VALUES ('c1', 700)")
	s0 := st
	changes = append(changes, stampedChange{state: &s0, before: before, after: clock()})
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	script := func(round int) {
		apply("UPDATE customers SET current_balance = current_balance + 100, version = version + 1 WHERE customer_id = 'c1'", func(s *c360State) *c360State {
			s.balance = fmt.Sprintf("%d.00", 100*(2*round+1))
			s.version++
			return s
		})
		apply(fmt.Sprintf("INSERT INTO loans VALUES ('l%d', 'c1', 45)", round), func(s *c360State) *c360State { s.delinquent = true; return s })
		apply("UPDATE credit_profiles SET current_score = current_score - 50 WHERE customer_id = 'c1'", func(s *c360State) *c360State { s.score -= 50; return s })
		apply(fmt.Sprintf("UPDATE loans SET days_past_due = 0 WHERE loan_id = 'l%d'", round), func(s *c360State) *c360State { s.delinquent = false; return s })
		apply("UPDATE customers SET current_balance = current_balance + 100, version = version + 1 WHERE customer_id = 'c1'", func(s *c360State) *c360State {
			s.balance = fmt.Sprintf("%d.00", 100*(2*round+2))
			s.version++
			return s
		})
		apply("DELETE FROM credit_profiles WHERE customer_id = 'c1'", func(*c360State) *c360State { return nil })
		apply("INSERT INTO credit_profiles VALUES ('c1', 650)", func(*c360State) *c360State {
			prev := *changes[len(changes)-2].state // the state before the delete
			prev.score = 650
			return &prev
		})
		apply("UPDATE customers SET status = status, version = version + 1 WHERE customer_id = 'c1'", func(s *c360State) *c360State { s.version++; return s })
	}
	script(0) // while the reader is stopped
	backlogEnd := len(changes)
	e.runReader(cfg)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	live = true
	script(1)

	scl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{e.regURL}})
	if err != nil {
		t.Fatal(err)
	}
	serde, err := schemas.NewWriterSchemaDecoder[schemas.Customer360](scl, topic+"-value")
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		stamp time.Time
		state *c360State
	}
	var recs []rec
	for _, r := range e.readAll(topic) {
		if r.heartbeat() {
			continue
		}
		var key string
		if _, err := avro.MustParse(`"string"`).Decode(r.rec.Key[5:], &key); err != nil || key != "c1" {
			t.Fatalf("key %q (%v)", key, err)
		}
		if r.rec.Value == nil {
			recs = append(recs, rec{stamp: r.rec.Timestamp})
			continue
		}
		row, err := serde.Decode(r.rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		if !row.UpdatedAt.Truncate(time.Millisecond).Equal(r.rec.Timestamp) {
			t.Errorf("updated_at %v, record timestamp %v", row.UpdatedAt, r.rec.Timestamp)
		}
		recs = append(recs, rec{stamp: r.rec.Timestamp, state: &c360State{balance: row.CurrentBalance.String(), score: row.Score, delinquent: row.Delinquent, version: row.Version}})
	}
	if len(recs) < 10 {
		t.Fatalf("%d customer_360 records, want one per live change and some for the backlog", len(recs))
	}
	var bad []string
	for i, r := range recs {
		if msg := checkC360Record(changes, r.stamp, r.state); msg != "" {
			bad = append(bad, fmt.Sprintf("stamp %s: record %d: %s", stamp, i, msg))
		}
	}
	if stamp != StampQuery {
		return bad
	}
	// Negative control: the backlog's first record stamped as before (its
	// triggering change's commit time, inside the first backlog change's
	// bracket) holds a later state.
	first := changes[1]
	old := first.before.Add(first.after.Sub(first.before) / 2).Truncate(time.Millisecond)
	var firstBacklog *c360State
	for _, r := range recs {
		if r.stamp.After(changes[backlogEnd-1].after) || r.stamp.Equal(changes[backlogEnd-1].after.Truncate(time.Millisecond)) {
			firstBacklog = r.state
			break
		}
	}
	if checkC360Record(changes, old, firstBacklog) == "" {
		t.Fatalf("negative control: the backlog's first record (%+v) restamped at %v passes the checker", firstBacklog, old)
	}
	return bad
}

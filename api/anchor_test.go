package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api/audit"
)

// readAnchors reads every anchor record of the topic (n expected).
func readAnchors(t *testing.T, e *env, n int) []audit.Anchor {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(e.cfg.AuditAnchorsTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []audit.Anchor
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d anchors", len(out), n)
		}
		fs.EachRecord(func(r *kgo.Record) {
			var a audit.Anchor
			if err := json.Unmarshal(r.Value, &a); err != nil {
				t.Fatal(err)
			}
			out = append(out, a)
		})
	}
	return out
}

// TestAuditAnchorsDetectTruncationAndRewrite (issue 9, High 4, anchoring):
// the database's owner disables the triggers, rewrites row 3, recomputes
// the SHA-256 chain after it and deletes the last row. The chain alone
// still verifies (the negative control: what `audit verify` saw before);
// checked against the signed heads the server anchored on a Kafka topic,
// the rewrite and the truncation are each found, and a forged anchor is
// refused.
func TestAuditAnchorsDetectTruncationAndRewrite(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AuditAnchorInterval = -1 })
	tok := e.lender("bank-au")
	e.customer("c-au", "Audit Person", "111-22-9999", "bank-au")
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		e.profileAt(tok, "c-au", "ACCOUNT_REVIEW", false)
	}
	first, err := e.srv.AnchorAudit(ctx)
	if err != nil || first.Seq < 5 {
		t.Fatalf("first anchor: %+v %v", first, err)
	}
	for i := 0; i < 3; i++ {
		e.profileAt(tok, "c-au", "ACCOUNT_REVIEW", false)
	}
	second, err := e.srv.AnchorAudit(ctx)
	if err != nil || second.Seq <= first.Seq {
		t.Fatalf("second anchor: %+v %v", second, err)
	}
	if !strings.Contains(e.logs.String(), `"msg":"audit anchor"`) {
		t.Fatal("anchor not logged")
	}
	got := readAnchors(t, e, 2)
	pool := e.srv.Pool()
	if rep, err := audit.VerifyAnchored(ctx, pool, got, e.srv.VerifyAnchorMAC, nil); err != nil || !rep.OK {
		t.Fatalf("intact log: %+v %v", rep, err)
	}

	// The owner's attack.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) {
		if _, err := tx.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("ALTER TABLE audit_log DISABLE TRIGGER USER")
	exec("UPDATE audit_log SET resource = 'customer/someone-else' WHERE seq = 3")
	exec("DELETE FROM audit_log WHERE seq = $1", second.Seq)
	rows, err := tx.Query(ctx, "SELECT seq, at, actor, lender_id, action, resource, purpose, result, request_id FROM audit_log ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	var all []audit.Row
	for rows.Next() {
		var r audit.Row
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Lender, &r.Action, &r.Resource, &r.Purpose, &r.Result, &r.RequestID); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	prev := []byte{}
	for _, r := range all {
		h := audit.ComputeHash(prev, r.Seq, r.Entry)
		exec("UPDATE audit_log SET prev_hash = $2, hash = $3 WHERE seq = $1", r.Seq, prev, h)
		prev = h
	}
	exec("ALTER TABLE audit_log ENABLE TRIGGER USER")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	if rep, err := audit.Verify(ctx, pool); err != nil || !rep.OK {
		t.Fatalf("negative control: the chain alone should still verify after a recompute: %+v %v", rep, err)
	}
	if rep, err := audit.VerifyKeyed(ctx, pool, e.srv.AuditKeys()); err != nil || rep.OK || rep.BrokenSeq > 3 {
		t.Fatalf("the keyed chain breaks at or before the rewritten row: %+v %v", rep, err)
	}
	rep, err := audit.VerifyAnchored(ctx, pool, got, e.srv.VerifyAnchorMAC, nil)
	if err != nil || rep.OK || rep.BrokenSeq != first.Seq || !strings.Contains(rep.Reason, "rewritten") {
		t.Fatalf("rewrite against the first anchor: %+v %v", rep, err)
	}
	rep, err = audit.VerifyAnchored(ctx, pool, got[1:], e.srv.VerifyAnchorMAC, nil)
	if err != nil || rep.OK || rep.BrokenSeq != second.Seq || !strings.Contains(rep.Reason, "truncated") {
		t.Fatalf("truncation against the second anchor: %+v %v", rep, err)
	}
	forged := got[0]
	forged.Hash = append([]byte(nil), prev...)
	forged.Seq = all[len(all)-1].Seq
	rep, err = audit.VerifyAnchored(ctx, pool, []audit.Anchor{forged}, e.srv.VerifyAnchorMAC, nil)
	if err != nil || rep.OK || !strings.Contains(rep.Reason, "signature") {
		t.Fatalf("forged anchor: %+v %v", rep, err)
	}
}

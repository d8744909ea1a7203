package api

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/internal/testenv"
)

const (
	scanSSN  = "987-65-4329"
	scanName = "Zebulon Quixotefield"
)

// TestApplicationsDecisionsAndPIIScan submits POS applications, checks the
// Avro record on loan_applications, delivers a decision by long-poll and
// SSE, and then scans Redis, every topic, the logs and the metrics for the
// applicant's SSN and name. It ends with the audit checks: one row per data
// access, a valid chain, and a hand-edited row detected at that row.
func TestApplicationsDecisionsAndPIIScan(t *testing.T) {
	rd := testenv.NewRedis(t)
	e := newEnv(t, func(c *Config) { c.RedisURL = rd.URL() })
	tok := e.lender("bank-d")
	other := e.lender("bank-e")
	e.customer("c-d", scanName, scanSSN, "bank-d")
	e.profile(tok, "c-d") // cache the profile
	e.profile(tok, "c-d")

	body := map[string]any{"application_id": "app-d-1", "pos_terminal_id": "pos-7", "customer_id": "c-d", "amount": "1500.00", "currency": "USD",
		"applicant": map[string]string{"name": scanName, "ssn": scanSSN, "address": "9 Elm St", "date_of_birth": "1970-03-04"}}
	r := e.do("POST", "/v1/loan-applications", tok, body)
	if r.status != 202 || !strings.Contains(string(r.body), "app-d-1") {
		t.Fatalf("ingest: %d %s", r.status, r.body)
	}
	if r := e.do("POST", "/v1/loan-applications", tok, `{"pos_terminal_id":"p","amount":"1","currency":"USD","applicant":{"name":"x","ssn":"12"}}`); r.status != 422 {
		t.Fatalf("bad ssn: %d", r.status)
	}
	checkApplicationRecord(t, e)

	// Long-poll: pending, then answered when the decision arrives.
	if r := e.do("GET", "/v1/loan-applications/app-d-1/decision?timeout=100ms", tok, nil); r.status != 202 {
		t.Fatalf("pending: %d %s", r.status, r.body)
	}
	stream := openStream(t, e, tok)
	dec, _, _ := e.avro()
	got := make(chan response, 1)
	go func() { got <- e.do("GET", "/v1/loan-applications/app-d-1/decision?timeout=20s", tok, nil) }()
	time.Sleep(200 * time.Millisecond)
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-d-1", "bank-d", "APPROVED", 720))
	lp := <-got
	var d Decision
	lp.json(t, &d)
	if lp.status != 200 || d.Decision != "APPROVED" || d.Score != 720 || d.Amount != "1500.00" || d.ReasonCodes[0] != "R01_SCORE" {
		t.Fatalf("long-poll: %d %s", lp.status, lp.body)
	}
	if ev := stream.next(t); ev.name != "decision" || !strings.Contains(ev.data, `"app-d-1"`) {
		t.Fatalf("sse: %+v", ev)
	}
	// Application ids are per lender: another lender's long-poll of this
	// id asks for its own application of that id (none): 404
	// unknown-application, as for any id it never submitted.
	if r := e.do("GET", "/v1/loan-applications/app-d-1/decision?timeout=0s", other, nil); r.status != 404 || strings.Contains(string(r.body), "APPROVED") {
		t.Fatalf("other lender long-poll: %d %s", r.status, r.body)
	}

	scanForPII(t, e, rd.Addr())
	checkAudit(t, e)
}

func checkApplicationRecord(t *testing.T, e *env) {
	t.Helper()
	_, _, apps := e.avro()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(e.cfg.ApplicationsTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fs := cl.PollFetches(ctx)
	recs := fs.Records()
	if len(recs) != 1 || recs[0].Value[0] != 0 {
		t.Fatalf("loan_applications: %d records", len(recs))
	}
	a, err := apps.Decode(recs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if a.ApplicationID != "app-d-1" || a.LenderID != "bank-d" || a.Amount.String() != "1500.00" || *a.CustomerID != "c-d" {
		t.Fatalf("record: %+v", a)
	}
	pt, err := e.srv.Keys().Decrypt(pii.Field{Table: "loan_applications", Column: "applicant_details", Row: "app-d-1"}, a.ApplicantDetails)
	if err != nil || !strings.Contains(string(pt), scanName) {
		t.Fatalf("applicant details do not decrypt: %v", err)
	}
	if _, err := e.srv.Keys().Decrypt(pii.Field{Table: "loan_applications", Column: "applicant_details", Row: "app-other"}, a.ApplicantDetails); err == nil {
		t.Fatal("ciphertext decrypts under another row's associated data")
	}
	idx, _, _ := e.srv.Keys().BlindIndex(scanSSN)
	if !pii.EqualIndex(idx, a.SSNIndex) {
		t.Fatal("ssn_index is not the blind index of the SSN")
	}
}

type sseEvent struct{ name, data string }

type sseStream struct {
	events chan sseEvent
}

func openStream(t *testing.T, e *env, tok string) *sseStream {
	t.Helper()
	req, _ := http.NewRequest("GET", e.url+"/v1/decisions/stream", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %v %v", err, resp)
	}
	t.Cleanup(func() { resp.Body.Close() })
	s := &sseStream{events: make(chan sseEvent, 64)}
	go func() {
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.name = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			case line == "" && ev.name != "":
				s.events <- ev
				ev = sseEvent{}
			}
		}
		close(s.events)
	}()
	return s
}

func (s *sseStream) next(t *testing.T) sseEvent {
	t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no server-sent event")
	}
	return sseEvent{}
}

// piiNeedles are the forms the applicant's SSN and name could take.
func piiNeedles() []string {
	return []string{scanSSN, strings.ReplaceAll(scanSSN, "-", ""), scanName, strings.ToLower(scanName), "Quixotefield"}
}

func scanForPII(t *testing.T, e *env, redisAddr string) {
	t.Helper()
	ctx := context.Background()
	check := func(where string, b []byte) {
		for _, n := range piiNeedles() {
			if strings.Contains(string(b), n) {
				t.Errorf("PII %q found in %s", n, where)
			}
		}
	}
	rc := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rc.Close()
	keys, err := rc.Keys(ctx, "*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("redis keys: %v %v", keys, err)
	}
	for _, k := range keys {
		v, _ := rc.Dump(ctx, k).Result()
		check("redis key "+k, []byte(k+v))
	}
	n := scanAllTopics(t, e, check)
	check("logs", []byte(e.logs.String()))
	m := e.do("GET", "/metrics", "", nil)
	check("metrics", m.body)
	if m.status != 200 || !strings.Contains(string(m.body), `loanflow_api_requests_total{code="202",method="POST",route="POST /v1/loan-applications"}`) {
		t.Fatalf("RED metrics missing: %d", m.status)
	}
	t.Logf("PII scan: %d redis keys, %d topic records, %d log bytes, %d metrics bytes", len(keys), n, len(e.logs.String()), len(m.body))
}

func scanAllTopics(t *testing.T, e *env, check func(string, []byte)) int {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	topics, err := adm.ListTopics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ends, err := adm.ListEndOffsets(ctx, topics.Names()...)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[int32]kgo.Offset{}
	total := int64(0)
	ends.Each(func(o kadm.ListedOffset) {
		if want[o.Topic] == nil {
			want[o.Topic] = map[int32]kgo.Offset{}
		}
		want[o.Topic][o.Partition] = kgo.NewOffset().AtStart()
		total += o.Offset
	})
	cons, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumePartitions(want))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	seen := int64(0)
	for seen < total && ctx.Err() == nil {
		fs := cons.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			seen++
			check("topic "+r.Topic, append(append([]byte{}, r.Key...), r.Value...))
		})
	}
	return int(seen)
}

func checkAudit(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	// Data accesses by bank-d in this test: 2 profile reads, 2 ingests (1
	// refused at validation, not an access), 2 long-polls, 1 stream; and
	// the client's token issuance (credential use is audited too).
	want := map[string]int{"credit_profile.read": 2, "application.create": 1, "decision.read": 1, "decision.stream": 1, "oauth.token": 1}
	if err := e.srv.FlushAudit(ctx); err != nil { // writes queue their entries
		t.Fatal(err)
	}
	rows, err := e.srv.Pool().Query(ctx, "SELECT action, count(*) FROM audit_log WHERE lender_id = 'bank-d' GROUP BY action")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for rows.Next() {
		var a string
		var n int
		_ = rows.Scan(&a, &n)
		got[a] = n
	}
	rows.Close()
	for a, n := range want {
		if got[a] != n {
			t.Errorf("audit rows for %s = %d, want %d (all: %v)", a, got[a], n, got)
		}
	}
	total := 0
	for _, n := range got {
		total += n
	}
	if total != 6 {
		t.Errorf("bank-d has %d audit rows, want 6 (one per data access and the token): %v", total, got)
	}
	rep, err := audit.VerifyKeyed(ctx, e.srv.Pool(), e.srv.AuditKeys())
	if err != nil || !rep.OK {
		t.Fatalf("chain: %+v %v", rep, err)
	}
	var seq int64
	_ = e.srv.Pool().QueryRow(ctx, "SELECT seq FROM audit_log WHERE action = 'application.create' AND lender_id = 'bank-d'").Scan(&seq)
	if _, err := e.srv.Pool().Exec(ctx, "UPDATE audit_log SET result = 'denied' WHERE seq = $1", seq); err == nil {
		t.Fatal("audit_log accepted an UPDATE")
	}
	tamper := `ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update;
		UPDATE audit_log SET resource = 'application/forged' WHERE seq = ` + itoa(seq) + `;
		ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update;`
	if _, err := e.srv.Pool().Exec(ctx, tamper); err != nil {
		t.Fatal(err)
	}
	rep, err = audit.VerifyKeyed(ctx, e.srv.Pool(), e.srv.AuditKeys())
	if err != nil || rep.OK || rep.BrokenSeq != seq {
		t.Fatalf("after editing row %d: %+v %v", seq, rep, err)
	}
	t.Logf("audit: %d rows verified; edit of row %d detected: %s", rep.Rows, seq, rep.Reason)
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

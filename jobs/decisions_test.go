package jobs

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	bureauclient "github.com/loanflow/loanflow/connectors/bureau"
	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// testDecisionsConfig makes the job quick: a short out-of-orderness (CDC
// heartbeats every 300ms move customer_360's watermark) and quick bureau
// retries.
func testDecisionsConfig() DecisionsConfig {
	return DecisionsConfig{MaxOutOfOrderness: 100 * time.Millisecond, IdleTimeout: 30 * time.Second,
		BureauTimeout: 300 * time.Millisecond, BureauAttempts: 8, BureauBackoff: 10 * time.Millisecond, BureauMaxBackoff: 50 * time.Millisecond}
}

func app(id, lender string, customerID *string, amount string, at time.Time) schemas.LoanApplication {
	who := id
	if customerID != nil {
		who = *customerID
	}
	return schemas.LoanApplication{ApplicationID: id, POSTerminalID: "pos-1", LenderID: lender, CustomerID: customerID,
		Amount: schemas.MustParseDecimal(amount), Currency: "USD", EventTime: at.UTC().Truncate(time.Millisecond),
		ApplicantDetails: []byte("ciphertext"), SSNIndex: ssnIndex(who)}
}

func ptr(s string) *string { return &s }

// appProducer writes LoanApplications as the API does (Avro, keyed by
// lender and id).
type appProducer struct {
	t       testing.TB
	brokers []string
	topic   string
	serde   *schemas.Serde[schemas.LoanApplication]
}

// newAppProducer writes to the stack's applications topic.
func newAppProducer(t testing.TB, env Env) appProducer {
	tp := env.Topics.WithDefaults()
	return appProducer{t: t, brokers: env.Brokers, topic: tp.Applications,
		serde: serde[schemas.LoanApplication](t, env, tp.Applications, schemas.LoanApplicationSchema)}
}

func (p appProducer) send(apps ...schemas.LoanApplication) {
	p.t.Helper()
	var recs []*kgo.Record
	for _, a := range apps {
		v, err := p.serde.Encode(nil, a)
		if err != nil {
			p.t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: p.topic, Key: []byte(AppKey(a.LenderID, a.ApplicationID)), Value: v})
	}
	produce(p.t, p.brokers, recs...)
}

// decisionReader collects loan_decisions by application id.
type decisionReader struct {
	c     *consumer
	serde *schemas.Serde[schemas.LoanDecision]
	got   map[string][]schemas.LoanDecision
	n     int
}

func newDecisionReader(t testing.TB, env Env) *decisionReader {
	tp := env.Topics.WithDefaults()
	return &decisionReader{c: newConsumer(t, env.Brokers, tp.Decisions), serde: serde[schemas.LoanDecision](t, env, tp.Decisions, schemas.LoanDecisionSchema),
		got: map[string][]schemas.LoanDecision{}}
}

// await reads until every id has a decision.
func (r *decisionReader) await(timeout time.Duration, ids ...string) {
	r.c.t.Helper()
	if !r.tryAwait(timeout, ids...) {
		var missing []string
		for _, id := range ids {
			if len(r.got[id]) == 0 {
				missing = append(missing, id)
			}
		}
		r.c.t.Fatalf("no decision for %v after %v", missing, timeout)
	}
}

// tryAwait reads until every id has a decision or timeout passes.
func (r *decisionReader) tryAwait(timeout time.Duration, ids ...string) bool {
	r.c.t.Helper()
	return r.c.until(timeout, func(rec *kgo.Record) {
		d, err := r.serde.Decode(rec.Value)
		if err != nil {
			r.c.t.Fatalf("decoding decision: %v", err)
		}
		if string(rec.Key) != AppKey(d.LenderID, d.ApplicationID) {
			r.c.t.Errorf("decision of %s keyed %q", d.ApplicationID, rec.Key)
		}
		r.got[d.ApplicationID] = append(r.got[d.ApplicationID], d)
		r.n++
	}, func() bool {
		for _, id := range ids {
			if len(r.got[id]) == 0 {
				return false
			}
		}
		return true
	})
}

// want is an expected decision.
type want struct {
	decision schemas.Decision
	reasons  string
	avail    string
	version  int64
}

func checkDecision(t *testing.T, d schemas.LoanDecision, w want) {
	t.Helper()
	got := want{decision: d.Decision, reasons: strings.Join(d.ReasonCodes, ","), avail: d.AvailableCredit.String()}
	if d.Customer360Version != nil {
		got.version = *d.Customer360Version
	}
	if got != w || d.Basis != schemas.BasisCustomer360 || d.BureauResponseID != nil {
		t.Errorf("decision of %s: got %+v basis %s, want %+v basis CUSTOMER_360", d.ApplicationID, got, d.Basis, w)
	}
	if d.DecidedAt.IsZero() || d.EngineLatencyMs < 0 || d.Amount.Sign() <= 0 || d.LenderID == "" {
		t.Errorf("decision of %s lacks fields: %+v", d.ApplicationID, d)
	}
}

// TestDecisionsEndToEnd runs the decisions job on the Kafka runtime against
// the API's schema in PostgreSQL, the real CDC reader (customer_360 view),
// the schema registry and the bureau simulator: known customers are decided
// against customer_360 as of the application's event time, unknown ones
// through the bureau; an approval books a loan whose balance flows back
// through CDC into the next decision; a restarted worker publishes nothing
// twice and a full replay books nothing twice.
func TestDecisionsEndToEnd(t *testing.T) {
	s := newStack(t)
	br := startBureau(t, bureau.Config{LatencyMin: 2 * time.Millisecond, LatencyMax: 20 * time.Millisecond,
		ErrorRate: 0.2, TimeoutRate: 0.05, Hang: time.Second, NoFileRate: -1, Seed: 7})
	s.env.BureauURL = br.URL()
	s.addLender("L1")
	for _, c := range []customer{
		{ID: "c-good", Tier: "LOW", Limit: "10000.00", Balance: "0", Score: 750},
		{ID: "c-limit", Tier: "MEDIUM", Limit: "1000.00", Balance: "900.00", Score: 700},
		{ID: "c-frozen", Tier: "LOW", Limit: "10000.00", Balance: "0", Score: 750, Status: "FROZEN"},
		{ID: "c-marginal", Tier: "MEDIUM", Limit: "5000.00", Balance: "0", Score: 620},
		{ID: "c-versioned", Tier: "LOW", Limit: "5000.00", Balance: "0", Score: 500},
	} {
		s.addCustomer(c)
	}
	tp := s.env.Topics.WithDefaults()
	createTopic(t, s.env.Brokers, tp.Applications, 2, false) // not co-partitioned with customer_360 (3): the job repartitions
	// customer_360 keeps its history here (no compaction), so that the full
	// replay at the end can decide old applications as of their time. A
	// compacted customer_360 keeps only each customer's newest version: a
	// job started from scratch decides old applications against what
	// survived (see doc.go).
	createTopic(t, s.env.Brokers, tp.Customer360, 3, false)
	s.startCDC()
	awaitCustomer360(t, s.env, "c-good", "c-limit", "c-frozen", "c-marginal", "c-versioned")
	checkCoPartitioned(t, s.env, 3)

	// The application of c-versioned is made between two versions of its
	// profile: it must be decided against the first.
	tApp := time.Now()
	time.Sleep(20 * time.Millisecond)
	tx, err := s.pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"UPDATE credit_profiles SET current_score = 800, updated_at = now() WHERE customer_id = 'c-versioned'",
		"UPDATE customers SET version = version + 1, updated_at = now() WHERE customer_id = 'c-versioned'"} {
		if _, err := tx.Exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	tAfter := time.Now()

	prod := newAppProducer(t, s.env)
	bad := app("a-bad", "L1", ptr("c-good"), "0.00", tApp)
	prod.send(
		app("a-good", "L1", ptr("c-good"), "1000.00", tApp),
		app("a-limit", "L1", ptr("c-limit"), "500.00", tApp),
		app("a-frozen", "L1", ptr("c-frozen"), "100.00", tApp),
		app("a-marginal", "L1", ptr("c-marginal"), "100.00", tApp),
		app("a-marginal", "L1", ptr("c-marginal"), "100.00", tApp), // a resubmission: one decision
		app("a-versioned-1", "L1", ptr("c-versioned"), "100.00", tApp),
		app("a-versioned-2", "L1", ptr("c-versioned"), "100.00", tAfter),
		app("a-ghost", "L1", ptr("c-ghost"), "100.00", tApp),
		app("a-new-1", "L1", nil, "100.00", tApp),
		app("a-new-2", "L1", nil, "250.00", tApp),
		app("a-new-3", "L1", nil, "900.00", tApp),
		bad,
	)

	job := testenv.Name(t, "decisions")
	stateDir := t.TempDir()
	w := runWorker(t, s.env.Brokers, buildDecisions(t, job, s.env), stateDir)
	dr := newDecisionReader(t, s.env)
	first := []string{"a-good", "a-limit", "a-frozen", "a-marginal", "a-versioned-1", "a-versioned-2", "a-ghost", "a-new-1", "a-new-2", "a-new-3"}
	dr.await(60*time.Second, first...)

	checkDecision(t, dr.got["a-good"][0], want{schemas.DecisionApproved, "", "10000.00", 1})
	checkDecision(t, dr.got["a-limit"][0], want{schemas.DecisionDeclined, "LIMIT_EXCEEDED", "100.00", 1})
	checkDecision(t, dr.got["a-frozen"][0], want{schemas.DecisionDeclined, "CUSTOMER_NOT_ACTIVE", "10000.00", 1})
	checkDecision(t, dr.got["a-marginal"][0], want{schemas.DecisionRefer, "SCORE_MARGINAL", "5000.00", 1})
	checkDecision(t, dr.got["a-versioned-1"][0], want{schemas.DecisionDeclined, "SCORE_BELOW_MIN", "5000.00", 1})
	checkDecision(t, dr.got["a-versioned-2"][0], want{schemas.DecisionApproved, "", "5000.00", 2})
	checkBureauDecisions(t, br.URL(), dr, "a-ghost", "a-new-1", "a-new-2", "a-new-3")

	// The loop: the approval became a loan, CDC carried the new balance
	// into customer_360, and the next application sees it.
	s.awaitLoans(30*time.Second, "a-good", "a-versioned-2")
	prod.send(app("a-good-2", "L1", ptr("c-good"), "9500.00", time.Now()))
	dr.await(30*time.Second, "a-good-2")
	checkDecision(t, dr.got["a-good-2"][0], want{schemas.DecisionDeclined, "LIMIT_EXCEEDED", "9000.00", 2})
	checkDeadLetter(t, s.env.Brokers, job, "a-bad")

	// A restarted worker (same state) publishes nothing twice.
	w.halt(t)
	w = runWorker(t, s.env.Brokers, buildDecisions(t, job, s.env), stateDir)
	prod.send(app("a-after-restart", "L1", ptr("c-marginal"), "10.00", time.Now()))
	dr.await(30*time.Second, "a-after-restart")
	w.halt(t)
	// Applications made now wait for a customer_360 heartbeat past their
	// time (heartbeat_interval 300ms, MaxOutOfOrderness 100ms).
	t.Logf("engine latency of KNOWN decisions made live: a-good-2 %dms, a-after-restart %dms",
		dr.got["a-good-2"][0].EngineLatencyMs, dr.got["a-after-restart"][0].EngineLatencyMs)
	for id, ds := range dr.got {
		if len(ds) != 1 {
			t.Errorf("application %s has %d decisions", id, len(ds))
		}
	}

	// A full replay by a new job instance re-decides everything the same
	// way and books nothing twice.
	replay := runWorker(t, s.env.Brokers, buildDecisions(t, testenv.Name(t, "decisions-replay"), s.env), t.TempDir())
	before := dr.n
	ok := dr.c.until(60*time.Second, func(rec *kgo.Record) {
		d, err := dr.serde.Decode(rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		first := dr.got[d.ApplicationID][0]
		if d.Decision != first.Decision || strings.Join(d.ReasonCodes, ",") != strings.Join(first.ReasonCodes, ",") {
			t.Errorf("replayed decision of %s: %s %v, first %s %v", d.ApplicationID, d.Decision, d.ReasonCodes, first.Decision, first.ReasonCodes)
		}
		dr.n++
	}, func() bool { return dr.n-before >= len(dr.got) })
	if !ok {
		t.Fatalf("replay published %d of %d decisions", dr.n-before, len(dr.got))
	}
	replay.halt(t)
	s.checkBooked(map[string]string{"c-good": "1000.00", "c-versioned": "100.00"}, "a-good", "a-versioned-2")
}

func buildDecisions(t testing.TB, job string, env Env) *pipeline.Builder {
	t.Helper()
	b := pipeline.NewBuilder(job)
	if err := BuildDecisions(b, env, testDecisionsConfig()); err != nil {
		t.Fatal(err)
	}
	return b
}

// checkBureauDecisions: unknown applicants (and customers not found) are
// decided from the bureau's report for that inquiry.
func checkBureauDecisions(t *testing.T, bureauURL string, dr *decisionReader, ids ...string) {
	t.Helper()
	cl, err := bureauclient.NewClient(bureauclient.ClientConfig{URL: bureauURL})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		d := dr.got[id][0]
		who := id
		if d.CustomerID != nil {
			who = *d.CustomerID
		}
		var rep bureau.Report
		for attempt := 0; ; attempt++ { // the simulator fails some calls on purpose
			rep, err = cl.CreditReport(context.Background(), bureau.Request{ApplicationID: id, SSNIndex: ssnIndex(who)})
			if err == nil || attempt > 20 {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		wantDecision := schemas.DecisionRefer
		wantFirst := ReasonNewApplicant
		if rep.Score < 580 {
			wantDecision, wantFirst = schemas.DecisionDeclined, ReasonScoreBelowMin
		}
		if d.Basis != schemas.BasisCreditBureau || d.BureauResponseID == nil || *d.BureauResponseID != rep.ResponseID ||
			d.Score != rep.Score || d.Decision != wantDecision || len(d.ReasonCodes) == 0 || d.ReasonCodes[0] != wantFirst ||
			d.Customer360Version != nil {
			t.Errorf("bureau decision of %s: %+v; report %+v", id, d, rep)
		}
	}
}

// awaitCustomer360 waits until customer_360 holds a row for every id.
func awaitCustomer360(t testing.TB, env Env, ids ...string) {
	t.Helper()
	tp := env.Topics.WithDefaults()
	keys := AvroStringKeysWithID(0)
	seen := map[string]bool{}
	c := newConsumer(t, env.Brokers, tp.Customer360)
	if !c.until(60*time.Second, func(r *kgo.Record) {
		if r.Value == nil {
			return
		}
		if id, err := keys.DecodeKey(string(r.Key)); err == nil {
			seen[id] = true
		}
	}, func() bool {
		for _, id := range ids {
			if !seen[id] {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("customer_360 lacks some of %v: saw %v", ids, seen)
	}
}

// awaitLoans waits until every application has a loan row.
func (s *stack) awaitLoans(timeout time.Duration, apps ...string) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var n int
		if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM loans WHERE application_id = ANY($1)", apps).Scan(&n); err != nil {
			s.t.Fatal(err)
		}
		if n == len(apps) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%d of the loans of %v booked after %v", n, apps, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkBooked: exactly the approved applications have one loan each, one
// audit row each, and each customer's balance grew once.
func (s *stack) checkBooked(balances map[string]string, apps ...string) {
	s.t.Helper()
	ctx := context.Background()
	rows, err := s.pool.Query(ctx, "SELECT application_id, lender_id, loan_id, status, amount::text, balance::text FROM loans ORDER BY application_id")
	if err != nil {
		s.t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var app, lender, id, status, amount, balance string
		if err := rows.Scan(&app, &lender, &id, &status, &amount, &balance); err != nil {
			s.t.Fatal(err)
		}
		if id != LoanID(lender, app) || status != "ACTIVE" || amount != balance {
			s.t.Errorf("loan %s of %s: status %s amount %s balance %s", id, app, status, amount, balance)
		}
		got = append(got, app)
	}
	sort.Strings(apps)
	if fmt.Sprint(got) != fmt.Sprint(apps) {
		s.t.Errorf("loans of %v, want %v", got, apps)
	}
	for c, want := range balances {
		var bal string
		if err := s.pool.QueryRow(ctx, "SELECT current_balance::text FROM customers WHERE customer_id = $1", c).Scan(&bal); err != nil {
			s.t.Fatal(err)
		}
		if bal != want {
			s.t.Errorf("balance of %s = %s, want %s", c, bal, want)
		}
	}
	var audits int
	if err := s.pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM audit_log WHERE action = 'loan.create') + (SELECT count(*) FROM audit_pending WHERE action = 'loan.create')").Scan(&audits); err != nil {
		s.t.Fatal(err)
	}
	if audits != len(apps) {
		s.t.Errorf("%d loan.create audit rows, want %d", audits, len(apps))
	}
}

// checkDeadLetter: the invalid application is in the job's dead-letter
// topic with the reason.
func checkDeadLetter(t *testing.T, brokers []string, job, appID string) {
	t.Helper()
	c := newConsumer(t, brokers, pipeline.DeadLetterTopic(job))
	var found bool
	c.until(30*time.Second, func(r *kgo.Record) {
		for _, h := range r.Headers {
			if strings.Contains(string(h.Value), appID) && strings.Contains(string(h.Value), "not positive") {
				found = true
			}
		}
	}, func() bool { return found })
	if !found {
		t.Errorf("no dead letter for %s", appID)
	}
}

// checkCoPartitioned: every customer_360 record the CDC reader wrote has
// the key bytes the job's key codec writes for its customer, in the
// partition Kafka's default partitioner gives those bytes, so the job's
// repartitioned applications meet their customer's rows in one task.
func checkCoPartitioned(t *testing.T, env Env, parts int32) {
	t.Helper()
	tp := env.Topics.WithDefaults()
	cl, ctx, cancel, err := env.registry()
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	keys, err := NewAvroStringKeys(ctx, cl, schemas.KeySubject(tp.Customer360))
	if err != nil {
		t.Fatal(err)
	}
	rows := serde[schemas.Customer360](t, env, tp.Customer360, schemas.Customer360Schema)
	n := 0
	c := newConsumer(t, env.Brokers, tp.Customer360)
	c.until(10*time.Second, func(r *kgo.Record) {
		if r.Value == nil || len(r.Headers) > 0 { // tombstones, heartbeats
			return
		}
		row, err := rows.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		n++
		if want := keys.EncodeKey(row.CustomerID); string(r.Key) != want {
			t.Errorf("customer_360 key of %s: CDC wrote %x, the job writes %x", row.CustomerID, r.Key, want)
		}
		if p := pipeline.KeyPartition(r.Key, parts); p != r.Partition {
			t.Errorf("customer_360 record of %s in partition %d, the job's repartition puts its key in %d", row.CustomerID, r.Partition, p)
		}
	}, func() bool { return n >= 5 })
	if n < 5 {
		t.Fatalf("read %d customer_360 rows", n)
	}
}

package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// TestPortfolioEndToEnd: loans written to the API's table reach the
// portfolio job through the real CDC reader, decisions through
// loan_decisions; closed windows reach the portfolio_metrics topic (Avro,
// as the API's hub reads it) and the analytics table with the same figures;
// on both brokers.
func TestPortfolioEndToEnd(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) { testPortfolio(t, newStackOn(t, seeds)) })
}

func testPortfolio(t *testing.T, s *stack) {
	s.addLender("P1")
	s.addCustomer(customer{ID: "cp1", Tier: "LOW", Limit: "100000.00", Balance: "0", Score: 700})
	tp := s.env.Topics.WithDefaults()
	createTopic(t, s.env.Brokers, tp.Decisions, 3, false)
	// A loan from before CDC started arrives as a snapshot read: active,
	// but not an origination.
	s.exec(`INSERT INTO loans (loan_id, customer_id, lender_id, amount, balance, currency, term_months, status) VALUES
		('pl0', 'cp1', 'P1', 100, 100, 'USD', 12, 'ACTIVE')`)
	s.startCDC()
	job := testenv.Name(t, "portfolio")
	defer dumpDLQ(t, s.env.Brokers, job)
	b := pipeline.NewBuilder(job)
	if err := BuildPortfolio(b, s.env, PortfolioConfig{Window: time.Second, MaxOutOfOrderness: 100 * time.Millisecond, IdleTimeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	w := runWorker(t, s.env.Brokers, b, t.TempDir())
	awaitCustomer360(t, s.env, "cp1") // the snapshot is done: the loans below are streamed creations

	s.exec(`INSERT INTO loans (loan_id, customer_id, lender_id, amount, balance, currency, term_months, status) VALUES
		('pl1', 'cp1', 'P1', 1000, 1000, 'USD', 12, 'ACTIVE'), ('pl2', 'cp1', 'P1', 250.50, 250.50, 'USD', 12, 'ACTIVE')`)
	dec := serde[schemas.LoanDecision](t, s.env, tp.Decisions, schemas.LoanDecisionSchema)
	var recs []*kgo.Record
	for i, d := range []schemas.Decision{schemas.DecisionApproved, schemas.DecisionDeclined, schemas.DecisionRefer} {
		v, err := dec.Encode(nil, schemas.LoanDecision{ApplicationID: "pa" + string(rune('0'+i)), LenderID: "P1", Decision: d, ReasonCodes: []string{},
			Amount: schemas.MustParseDecimal("10.00"), Currency: "USD", AvailableCredit: schemas.MustParseDecimal("0.00"), Basis: schemas.BasisFallback,
			EventTime: time.Now().UTC().Truncate(time.Millisecond), DecidedAt: time.Now().UTC().Truncate(time.Millisecond)})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: tp.Decisions, Key: []byte("pa"), Value: v})
	}
	produce(t, s.env.Brokers, recs...)
	time.Sleep(1100 * time.Millisecond) // the delinquency lands in a later window
	s.exec("UPDATE loans SET status = 'DELINQUENT', balance = 900, days_past_due = 31 WHERE loan_id = 'pl1'")

	metrics := serde[schemas.PortfolioMetric](t, s.env, tp.PortfolioMetrics, schemas.PortfolioMetricSchema)
	byWindow := map[time.Time]schemas.PortfolioMetric{}
	var orig, decided int64
	var last schemas.PortfolioMetric
	c := newConsumer(t, s.env.Brokers, tp.PortfolioMetrics)
	ok := c.until(15*time.Second, func(r *kgo.Record) {
		m, err := metrics.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if m.LenderID != "P1" || string(r.Key) != "P1" || m.Currency != "USD" {
			t.Errorf("unexpected metric %+v keyed %q", m, r.Key)
			return
		}
		if _, dup := byWindow[m.WindowStart]; dup {
			t.Errorf("window %s emitted twice", m.WindowStart)
		}
		byWindow[m.WindowStart] = m
		orig += m.Originations
		decided += m.Approvals + m.Declines + m.Refers
		if m.WindowStart.After(last.WindowStart) {
			last = m
		}
	}, func() bool { return orig == 2 && decided == 3 && last.DelinquentBalance.String() == "900.00" })
	if !ok {
		t.Fatalf("metrics: %d originations, %d decisions, last window %+v", orig, decided, last)
	}
	if last.ActiveLoans != 3 || last.OutstandingBalance.String() != "1250.50" || last.DelinquencyRate < 0.71 || last.DelinquencyRate > 0.72 {
		t.Errorf("last window: %+v", last)
	}
	w.halt(t)
	for start, m := range byWindow {
		var o, a, d, r int64
		var out string
		err := s.pool.QueryRow(context.Background(), `SELECT originations, approvals, declines, refers, outstanding_balance::text
			FROM portfolio_metrics WHERE lender_id = 'P1' AND window_start = $1`, start).Scan(&o, &a, &d, &r, &out)
		if err != nil || o != m.Originations || a != m.Approvals || d != m.Declines || r != m.Refers || out != m.OutstandingBalance.String() {
			t.Errorf("analytics row of %s: %d %d %d %d %s (%v); topic %+v", start, o, a, d, r, out, err, m)
		}
	}
}

func dumpDLQ(t *testing.T, brokers []string, job string) {
	c := newConsumer(t, brokers, pipeline.DeadLetterTopic(job))
	n := 0
	c.until(3*time.Second, func(r *kgo.Record) {
		n++
		for _, h := range r.Headers {
			t.Logf("dlq %s: %s", h.Key, h.Value)
		}
	}, func() bool { return false })
}

package jobs

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

type localPortfolio struct {
	t     *testing.T
	s     *stack
	l     *pipeline.Local
	topic string
	serde *schemas.Serde[schemas.PortfolioMetric]
	reg   *prometheus.Registry
}

func newLocalPortfolio(t *testing.T) *localPortfolio {
	t.Helper()
	s := newStack(t)
	reg := prometheus.NewRegistry()
	s.env.Registerer = reg
	b := pipeline.NewBuilder(testenv.Name(t, "portfolio"))
	if err := BuildPortfolio(b, s.env, PortfolioConfig{MaxOutOfOrderness: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	tp := s.env.Topics.WithDefaults()
	return &localPortfolio{t: t, s: s, l: l, topic: tp.PortfolioMetrics, reg: reg,
		serde: serde[schemas.PortfolioMetric](t, s.env, tp.PortfolioMetrics, schemas.PortfolioMetricSchema)}
}

var pt0 = time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC).UnixMilli()

func (lp *localPortfolio) loan(at time.Duration, seq int64, id, lender, currency string, change schemas.LoanChange, orig bool, status, amount, balance string) {
	lp.t.Helper()
	e := portfolioEvent{Lender: lender, Currency: currency, At: pt0 + at.Milliseconds(), Seq: seq,
		Loan: &loanChange{LoanID: id, Change: change, Origination: orig, Status: status,
			Amount: schemas.MustParseDecimal(amount), Balance: schemas.MustParseDecimal(balance)}}
	if err := pipeline.Feed(lp.l, "loans", 0, e, e.At); err != nil {
		lp.t.Fatal(err)
	}
}

func (lp *localPortfolio) decision(at time.Duration, id, lender string, d schemas.Decision) {
	lp.t.Helper()
	dec := schemas.LoanDecision{ApplicationID: id, LenderID: lender, Decision: d, Currency: "USD", EventTime: time.UnixMilli(pt0 + at.Milliseconds())}
	if err := pipeline.Feed(lp.l, "decisions", 0, dec, dec.EventTime.UnixMilli()); err != nil {
		lp.t.Fatal(err)
	}
}

// metrics returns the emitted metrics as "lender currency window: figures".
func (lp *localPortfolio) metrics() []string {
	lp.t.Helper()
	var out []string
	for _, r := range lp.l.Emitted(lp.topic) {
		m, err := lp.serde.Decode(r.Value)
		if err != nil {
			lp.t.Fatal(err)
		}
		if string(r.Key) != m.LenderID {
			lp.t.Errorf("metric of %s keyed %q", m.LenderID, r.Key)
		}
		out = append(out, fmtMetric(m))
	}
	return out
}

func fmtMetric(m schemas.PortfolioMetric) string {
	return fmt.Sprintf("%s %s +%dm: orig %d %s appr %d decl %d ref %d active %d out %s delinq %s rates %.4f %.4f",
		m.LenderID, m.Currency, (m.WindowStart.UnixMilli()-pt0)/60000, m.Originations, m.OriginatedAmount, m.Approvals, m.Declines, m.Refers,
		m.ActiveLoans, m.OutstandingBalance, m.DelinquentBalance, m.DelinquencyRate, m.DefaultRate)
}

// TestPortfolioWindows: loan changes and decisions of a lender are
// aggregated per one-minute event-time window with running totals across
// windows; a late change still reaches the totals; each currency is its own
// series; the analytics table and Prometheus get the same figures; the
// totals survive a restart.
func TestPortfolioWindows(t *testing.T) {
	lp := newLocalPortfolio(t)
	lp.loan(5*time.Second, 10, "l1", "P1", "USD", schemas.LoanCreated, true, "ACTIVE", "1000.00", "1000.00")
	lp.loan(6*time.Second, 11, "l2", "P1", "USD", schemas.LoanCreated, true, "ACTIVE", "500.00", "500.00")
	lp.loan(7*time.Second, 12, "l0", "P1", "USD", schemas.LoanCreated, false, "ACTIVE", "50.00", "50.00") // a snapshot read
	lp.decision(8*time.Second, "a1", "P1", schemas.DecisionApproved)
	lp.decision(9*time.Second, "a2", "P1", schemas.DecisionApproved)
	lp.decision(10*time.Second, "a3", "P1", schemas.DecisionDeclined)
	lp.decision(11*time.Second, "a4", "P1", schemas.DecisionRefer)
	lp.loan(20*time.Second, 13, "e1", "P1", "EUR", schemas.LoanCreated, true, "ACTIVE", "70.00", "70.00")
	// Minute 1: updates in commit order within one instant.
	lp.loan(70*time.Second, 20, "l1", "P1", "USD", schemas.LoanUpdated, false, "ACTIVE", "1000.00", "950.00")
	lp.loan(70*time.Second, 21, "l1", "P1", "USD", schemas.LoanUpdated, false, "DELINQUENT", "1000.00", "900.00")
	lp.loan(75*time.Second, 22, "l2", "P1", "USD", schemas.LoanUpdated, false, "PAID", "500.00", "0.00")
	lp.loan(80*time.Second, 23, "l3", "P1", "USD", schemas.LoanCreated, true, "ACTIVE", "200.00", "200.00")
	lp.loan(85*time.Second, 24, "l3", "P1", "USD", schemas.LoanUpdated, false, "DEFAULTED", "200.00", "200.00")
	lp.loan(90*time.Second, 25, "l0", "P1", "USD", schemas.LoanDeleted, false, "", "50.00", "0.00")
	// Both inputs move past minute 1: minutes 0 and 1 close.
	lp.loan(150*time.Second, 30, "x1", "P2", "USD", schemas.LoanCreated, true, "ACTIVE", "1.00", "1.00")
	lp.decision(150*time.Second, "a5", "P2", schemas.DecisionApproved)
	want := []string{
		"P1 EUR +0m: orig 1 70.00 appr 0 decl 0 ref 0 active 1 out 70.00 delinq 0.00 rates 0.0000 0.0000",
		"P1 USD +0m: orig 2 1500.00 appr 2 decl 1 ref 1 active 3 out 1550.00 delinq 0.00 rates 0.0000 0.0000",
		"P1 USD +1m: orig 1 200.00 appr 0 decl 0 ref 0 active 2 out 1100.00 delinq 900.00 rates 0.8182 0.5000",
	}
	if got := lp.metrics(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("metrics:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	lp.checkTable("P1", pt0, "P1 +0m: orig 2 1500.00 appr 2 decl 1 ref 1 out 1550.00 rates 0.000000 0.000000")
	lp.checkTable("P1", pt0+60_000, "P1 +1m: orig 1 200.00 appr 0 decl 0 ref 0 out 1100.00 rates 0.818182 0.500000")
	if dl := lp.l.DeadLetters(); len(dl) != 1 || !strings.Contains(dl[0].Err.Error(), "EUR metric of lender P1") {
		t.Fatalf("dead letters: %v", dl)
	}
	if v := lp.gauge("loanflow_portfolio_outstanding_balance", "P1", "USD"); v != 1100 {
		t.Fatalf("outstanding balance gauge = %v", v)
	}

	// The totals survive a restart; a late loan (minute 0, which closed)
	// still counts, in the window open when it arrives.
	if err := lp.l.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if err := lp.l.Restart(); err != nil {
		t.Fatal(err)
	}
	lp.loan(30*time.Second, 26, "l4", "P1", "USD", schemas.LoanCreated, true, "ACTIVE", "300.00", "300.00")
	lp.loan(200*time.Second, 40, "x2", "P2", "USD", schemas.LoanCreated, true, "ACTIVE", "1.00", "1.00")
	lp.decision(200*time.Second, "a6", "P2", schemas.DecisionApproved)
	got := lp.metrics()
	wantLate := "P1 USD +2m: orig 1 300.00 appr 0 decl 0 ref 0 active 3 out 1400.00 delinq 900.00 rates 0.6429 0.0000"
	if !strings.Contains(strings.Join(got, "\n"), wantLate) {
		t.Fatalf("after restart:\n%s\nwant a line\n%s", strings.Join(got, "\n"), wantLate)
	}
}

func (lp *localPortfolio) gauge(name, lender, currency string) float64 {
	lp.t.Helper()
	mfs, err := lp.reg.Gather()
	if err != nil {
		lp.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ls := map[string]string{}
			for _, l := range m.GetLabel() {
				ls[l.GetName()] = l.GetValue()
			}
			if ls["lender"] == lender && ls["currency"] == currency {
				return m.GetGauge().GetValue()
			}
		}
	}
	lp.t.Fatalf("no %s{lender=%s,currency=%s}", name, lender, currency)
	return 0
}

func (lp *localPortfolio) checkTable(lender string, start int64, want string) {
	lp.t.Helper()
	var orig, appr, decl, ref int64
	var amount, out string
	var dr, df float64
	err := lp.s.pool.QueryRow(context.Background(), `SELECT originations, originated_amount::text, approvals, declines, refers,
		outstanding_balance::text, delinquency_rate::float8, default_rate::float8 FROM portfolio_metrics WHERE lender_id = $1 AND window_start = $2`,
		lender, time.UnixMilli(start)).Scan(&orig, &amount, &appr, &decl, &ref, &out, &dr, &df)
	if err != nil {
		lp.t.Fatalf("analytics row of %s at +%dm: %v", lender, (start-pt0)/60000, err)
	}
	got := fmt.Sprintf("%s +%dm: orig %d %s appr %d decl %d ref %d out %s rates %.6f %.6f", lender, (start-pt0)/60000, orig, amount, appr, decl, ref, out, dr, df)
	if got != want {
		lp.t.Errorf("analytics row:\n%s\nwant\n%s", got, want)
	}
}

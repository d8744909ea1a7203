package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// upsertMetric writes one lender's window; a replay or a late update of
// the window overwrites the row with the same or newer figures.
const upsertMetric = `INSERT INTO portfolio_metrics (lender_id, window_start, window_end, originations, originated_amount,
	approvals, declines, refers, outstanding_balance, delinquency_rate, default_rate, updated_at)
VALUES ($1, $2, $3, $4, $5::numeric, $6, $7, $8, $9::numeric, round($10::numeric, 6), round($11::numeric, 6), $12)
ON CONFLICT (lender_id, window_start) DO UPDATE SET window_end = EXCLUDED.window_end, originations = EXCLUDED.originations,
	originated_amount = EXCLUDED.originated_amount, approvals = EXCLUDED.approvals, declines = EXCLUDED.declines,
	refers = EXCLUDED.refers, outstanding_balance = EXCLUDED.outstanding_balance, delinquency_rate = EXCLUDED.delinquency_rate,
	default_rate = EXCLUDED.default_rate, updated_at = EXCLUDED.updated_at`

// metricsTableSink upserts metrics into the analytics table, keyed by
// lender and window (idempotent under replay).
type metricsTableSink struct {
	dsn      string
	currency string
	retryFor time.Duration
	pctx     *pipeline.Context
	pool     *pgxpool.Pool
}

func (s *metricsTableSink) Open(ctx *pipeline.Context) error {
	cfg, err := pgxpool.ParseConfig(s.dsn)
	if err != nil {
		return fmt.Errorf("analytics table sink: parsing the database URL: %w", err)
	}
	cfg.MaxConns = 2
	if s.pool, err = pgxpool.NewWithConfig(context.Background(), cfg); err != nil {
		return fmt.Errorf("analytics table sink: %w", err)
	}
	s.pctx = ctx
	return nil
}

func (s *metricsTableSink) Close() error {
	if s.pool != nil {
		s.pool.Close()
	}
	return nil
}

func (s *metricsTableSink) Write(r pipeline.Record[schemas.PortfolioMetric]) error {
	m := r.Value
	if m.Currency != s.currency {
		return s.pctx.HandleError(fmt.Errorf("portfolio_metrics has no currency column and holds %s figures: the %s metric of lender %s "+
			"for the window at %s is on the topic only", s.currency, m.Currency, m.LenderID, m.WindowStart.Format(time.RFC3339)))
	}
	err := retryTransient(s.retryFor, func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, upsertMetric, m.LenderID, m.WindowStart, m.WindowEnd, m.Originations, m.OriginatedAmount.String(),
			m.Approvals, m.Declines, m.Refers, m.OutstandingBalance.String(), m.DelinquencyRate, m.DefaultRate, m.ComputedAt)
		return err
	})
	switch {
	case err == nil:
		return nil
	case transient(err):
		return s.pctx.HandleError(pipeline.Retryable(fmt.Errorf("writing portfolio metric of %s: %w", m.LenderID, err)))
	}
	return s.pctx.HandleError(fmt.Errorf("writing portfolio metric of %s: %w", m.LenderID, err))
}

// portfolioGauges exports each (lender, currency)'s latest window to
// Prometheus. It is shared by the job's tasks; at most maxSeries series
// are exported, later ones are counted as dropped.
type portfolioGauges struct {
	maxSeries                                           int
	active, outstanding, delinquent, delinquency, deflt *prometheus.GaugeVec
	originations                                        *prometheus.GaugeVec
	dropped                                             prometheus.Counter
	mu                                                  struct {
		sync.Mutex
		series map[[2]string]bool
	}
}

func newPortfolioGauges(reg prometheus.Registerer, maxSeries int) (*portfolioGauges, error) {
	if reg == nil {
		return nil, nil
	}
	p := &portfolioGauges{maxSeries: maxSeries}
	p.mu.series = map[[2]string]bool{}
	var errs []error
	g := func(name, help string) *prometheus.GaugeVec {
		v, err := registered(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "loanflow_portfolio_" + name, Help: help}, []string{"lender", "currency"}))
		errs = append(errs, err)
		return v
	}
	p.active = g("active_loans", "Active loans at the end of the latest closed window.")
	p.outstanding = g("outstanding_balance", "Outstanding balance at the end of the latest closed window.")
	p.delinquent = g("delinquent_balance", "Outstanding balance of delinquent loans at the end of the latest closed window.")
	p.delinquency = g("delinquency_rate", "Delinquent balance over outstanding balance, latest closed window.")
	p.deflt = g("default_rate", "Loans defaulted in the latest closed window over active loans.")
	p.originations = g("originations", "Loans originated in the latest closed window.")
	var err error
	p.dropped, err = registered(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "loanflow_portfolio_series_dropped_total",
		Help: "Metrics not exported because max_series (lender, currency) series exist."}))
	if err := errors.Join(append(errs, err)...); err != nil {
		return nil, fmt.Errorf("jobs: portfolio metrics: %w", err)
	}
	return p, nil
}

// registered registers c, or returns the collector already registered
// under its name (a job built twice in one process).
func registered[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// Open, Close and Write make portfolioGauges a pipeline.Sink; every task
// shares the one instance.
func (p *portfolioGauges) Open(*pipeline.Context) error { return nil }
func (p *portfolioGauges) Close() error                 { return nil }

func (p *portfolioGauges) Write(r pipeline.Record[schemas.PortfolioMetric]) error {
	m := r.Value
	if !p.admit(m.LenderID, m.Currency) {
		p.dropped.Inc()
		return nil
	}
	l := []string{m.LenderID, m.Currency}
	p.active.WithLabelValues(l...).Set(float64(m.ActiveLoans))
	p.outstanding.WithLabelValues(l...).Set(m.OutstandingBalance.Float64())
	p.delinquent.WithLabelValues(l...).Set(m.DelinquentBalance.Float64())
	p.delinquency.WithLabelValues(l...).Set(m.DelinquencyRate)
	p.deflt.WithLabelValues(l...).Set(m.DefaultRate)
	p.originations.WithLabelValues(l...).Set(float64(m.Originations))
	return nil
}

func (p *portfolioGauges) admit(lender, currency string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := [2]string{lender, currency}
	if p.mu.series[k] {
		return true
	}
	if len(p.mu.series) >= p.maxSeries {
		return false
	}
	p.mu.series[k] = true
	return true
}

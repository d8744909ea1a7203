package jobs

import (
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
	"github.com/loanflow/loanflow/state"
)

func init() {
	Register(Job{AdminPort: 9102, Name: "portfolio", Summary: "cdc loans + loan_decisions → per-lender 1-minute windows → portfolio_metrics (topic, table, Prometheus)",
		Build: func(b *pipeline.Builder, env Env) error { return BuildPortfolio(b, env, PortfolioConfig{}) }})
}

// PortfolioConfig tunes the portfolio job; the zero value is the default.
type PortfolioConfig struct {
	// Window is the tumbling event-time window. Default 1 minute.
	Window time.Duration
	// MaxOutOfOrderness of loan changes and decisions. Default 5s.
	MaxOutOfOrderness time.Duration
	// IdleTimeout marks a quiet input partition idle, so windows close on
	// the other inputs' time. Default 10s.
	IdleTimeout time.Duration
	// TableCurrency is the currency of the rows written to the analytics
	// table portfolio_metrics, whose key (lender_id, window_start) has no
	// currency; metrics in other currencies reach the topic and Prometheus
	// and are dead-lettered by the table sink. Default USD.
	TableCurrency string
	// MaxSeries bounds the (lender, currency) series exported to
	// Prometheus. Default 1000.
	MaxSeries int
	// TableRetryFor bounds how long the table sink retries a database that
	// does not answer before it fails the task. Default 10s.
	TableRetryFor time.Duration
	// Now is the wall clock (computed_at). Default time.Now.
	Now func() time.Time
}

// WithDefaults returns c with zero fields defaulted.
func (c PortfolioConfig) WithDefaults() PortfolioConfig {
	d := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	d(&c.Window, time.Minute)
	d(&c.MaxOutOfOrderness, 5*time.Second)
	d(&c.IdleTimeout, 10*time.Second)
	d(&c.TableRetryFor, 10*time.Second)
	if c.TableCurrency == "" {
		c.TableCurrency = "USD"
	}
	if c.MaxSeries == 0 {
		c.MaxSeries = 1000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports what is wrong with c (after defaults).
func (c PortfolioConfig) Validate() error {
	if c.Window < time.Second || c.Window%time.Millisecond != 0 || c.MaxOutOfOrderness < 0 || c.IdleTimeout < 0 || c.TableRetryFor <= 0 || c.MaxSeries <= 0 {
		return errors.New("jobs: portfolio: window must be at least 1s in whole milliseconds; durations and max_series must not be negative")
	}
	if len(c.TableCurrency) != 3 {
		return fmt.Errorf("jobs: portfolio: table_currency %q is not an ISO 4217 code", c.TableCurrency)
	}
	return nil
}

// portfolioEvent is one input of a lender's portfolio: a loan change or a
// decision.
type portfolioEvent struct {
	Lender   string `json:"lender"`
	Currency string `json:"currency"`
	At       int64  `json:"at"`  // event time, ms
	Seq      int64  `json:"seq"` // commit order of loan changes (LSN)
	// A loan change.
	Loan *loanChange `json:"loan,omitempty"`
	// A decision.
	ApplicationID string           `json:"application_id,omitempty"`
	Decision      schemas.Decision `json:"decision,omitempty"`
}

type loanChange struct {
	LoanID string             `json:"loan_id"`
	Change schemas.LoanChange `json:"change"`
	// Origination: a loan created while streaming (not a snapshot read of
	// an existing one).
	Origination bool            `json:"origination,omitempty"`
	Status      string          `json:"status"`
	Amount      schemas.Decimal `json:"amount"`
	Balance     schemas.Decimal `json:"balance"`
}

// key is the portfolio key: lender and currency.
func (e portfolioEvent) key() string { return e.Lender + "|" + e.Currency }

func splitKey(k string) (lender, currency string) {
	i := strings.LastIndexByte(k, '|')
	if i < 0 {
		return k, ""
	}
	return k[:i], k[i+1:]
}

// BuildPortfolio declares the portfolio job on b (see doc.go).
func BuildPortfolio(b *pipeline.Builder, env Env, cfg PortfolioConfig) error {
	cfg = cfg.WithDefaults()
	if err := errors.Join(cfg.Validate(), env.need(b.Job(), "brokers", "schema-registry", "database")); err != nil {
		return err
	}
	c, cancel, err := env.codecs()
	if err != nil {
		return err
	}
	defer cancel()
	tp := env.Topics.WithDefaults()
	loanTopic := tp.CDC("loans")
	changes, err := writerDecoder(c, loanTopic)
	if err != nil {
		return err
	}
	decisions, err := serdeOf[schemas.LoanDecision](c, tp.Decisions, schemas.LoanDecisionSchema)
	if err != nil {
		return err
	}
	metrics, err := serdeOf[schemas.PortfolioMetric](c, tp.PortfolioMetrics, schemas.PortfolioMetricSchema)
	if err != nil {
		return err
	}
	gauges, err := newPortfolioGauges(env.Registerer, cfg.MaxSeries)
	if err != nil {
		return err
	}
	wm := pipeline.WatermarkStrategy{MaxOutOfOrderness: cfg.MaxOutOfOrderness, IdleTimeout: cfg.IdleTimeout}
	eventTime := func(_ *pipeline.RawRecord, e portfolioEvent) int64 { return e.At }
	loans := kafka.Source(b, "loans", kafka.SourceConfig[portfolioEvent]{Topic: loanTopic, Watermarks: wm, Timestamp: eventTime,
		Decode: func(raw *pipeline.RawRecord) (portfolioEvent, error) { return decodeLoanChange(changes, raw) }})
	decided := kafka.Source(b, "decisions", kafka.SourceConfig[schemas.LoanDecision]{Topic: tp.Decisions, Codec: decisions, Watermarks: wm,
		Timestamp: func(_ *pipeline.RawRecord, d schemas.LoanDecision) int64 { return d.EventTime.UnixMilli() }})
	fromDecisions := operators.Map(decided, "decision-events", func(d schemas.LoanDecision) (portfolioEvent, error) {
		return portfolioEvent{Lender: d.LenderID, Currency: d.Currency, At: d.EventTime.UnixMilli(), ApplicationID: d.ApplicationID, Decision: d.Decision}, nil
	})
	live := operators.Filter(loans, "loan-events", func(e portfolioEvent) bool { return e.Loan != nil })
	events := pipeline.Union("portfolio-events",
		pipeline.KeyBy(live, "loans-by-lender", portfolioEvent.key, pipeline.ValueCodec(pipeline.JSONCodec[portfolioEvent]())).Stream,
		pipeline.KeyBy(fromDecisions, "decisions-by-lender", portfolioEvent.key, pipeline.ValueCodec(pipeline.JSONCodec[portfolioEvent]())).Stream)
	keyed := pipeline.KeyBy(events, "by-lender", portfolioEvent.key, pipeline.NoRepartition())
	out := operators.Process(keyed, "portfolio", func() operators.ProcessFunc[string, portfolioEvent, schemas.PortfolioMetric] {
		return &portfolioFn{window: cfg.Window.Milliseconds(), now: cfg.Now}
	})
	kafka.Sink(out, "metrics-out", kafka.SinkConfig[schemas.PortfolioMetric]{Topic: tp.PortfolioMetrics, Codec: metrics,
		Key: func(r pipeline.Record[schemas.PortfolioMetric]) []byte { return []byte(r.Value.LenderID) }})
	pipeline.AddSink(out, "analytics-table", pipeline.SinkSpec{What: "postgres"}, func() pipeline.Sink[schemas.PortfolioMetric] {
		return &metricsTableSink{dsn: env.DatabaseURL, currency: cfg.TableCurrency, retryFor: cfg.TableRetryFor}
	})
	if gauges != nil {
		pipeline.AddSink(out, "prometheus", pipeline.SinkSpec{What: "prometheus"}, func() pipeline.Sink[schemas.PortfolioMetric] {
			return gauges
		})
	}
	return nil
}

// decodeLoanChange turns a cdc loans envelope into a portfolio event;
// tombstones and truncates carry no loan (filtered out; a truncate cannot
// be undone per loan and is logged by the caller's dead letter instead).
func decodeLoanChange(dec pipeline.Codec[map[string]any], raw *pipeline.RawRecord) (portfolioEvent, error) {
	if raw.Value == nil {
		return portfolioEvent{}, nil // the tombstone after a delete
	}
	env, err := dec.Decode(raw.Value)
	if err != nil {
		return portfolioEvent{}, err
	}
	op, _ := env["op"].(string)
	if op == schemas.OpTruncate {
		return portfolioEvent{}, errors.New("loans was truncated: the portfolio's running totals keep the truncated loans; " +
			"rebuild the job from scratch (new job id) to recompute them")
	}
	if src, ok := env["source"].(map[string]any); ok && src["lsn"] == nil {
		// A snapshot read has no LSN (LoanUpdatedEventFromChange wants one):
		// 0 orders it before every streamed change.
		src = maps.Clone(src)
		src["lsn"] = int64(0)
		env["source"] = src
	}
	ev, err := schemas.LoanUpdatedEventFromChange(env)
	if err != nil {
		return portfolioEvent{}, err
	}
	status := ""
	if ev.NewStatus != nil {
		status = *ev.NewStatus
	}
	return portfolioEvent{Lender: ev.LenderID, Currency: ev.Currency, At: ev.EventTime.UnixMilli(), Seq: ev.SourceLSN,
		Loan: &loanChange{LoanID: ev.LoanID, Change: ev.Change, Origination: op == schemas.OpCreate, Status: status,
			Amount: ev.Amount, Balance: ev.Balance}}, nil
}

// activeStatus reports whether a loan counts in the running totals:
// every status of schemas.LoanStatuses (the API's) but the final PAID and
// CHARGED_OFF.
func activeStatus(s string) bool { return schemas.LoanStatusOpen(s) }

// loanState is an active loan's contribution to its portfolio's totals.
type loanState struct {
	Status  string          `json:"status"`
	Balance schemas.Decimal `json:"balance"`
}

// totals are a portfolio's running figures.
type totals struct {
	Active      int64           `json:"active"`
	Outstanding schemas.Decimal `json:"outstanding"`
	Delinquent  schemas.Decimal `json:"delinquent"`
}

func (t *totals) apply(l loanState, sign int64) error {
	bal := l.Balance
	if sign < 0 {
		bal = bal.Neg()
	}
	var err1, err2 error
	t.Active += sign
	t.Outstanding, err1 = t.Outstanding.Add(bal)
	if l.Status == schemas.LoanStatusDelinquent {
		t.Delinquent, err2 = t.Delinquent.Add(bal)
	}
	return errors.Join(err1, err2)
}

// windowCounts are a window's own figures.
type windowCounts struct {
	originations, approvals, declines, refers, defaults int64
	originated                                          schemas.Decimal
}

// windowTally is what a lender's open window keeps of its decisions: three
// counters (a decision needs nothing else, and decisions are the bulk of
// the input: one per application), and how many loan changes it was given
// (the arrival number that orders changes of one commit instant, as the
// list this replaced did).
type windowTally struct {
	Approvals int64 `json:"approvals,omitempty"`
	Declines  int64 `json:"declines,omitempty"`
	Refers    int64 `json:"refers,omitempty"`
	Changes   int64 `json:"changes,omitempty"`
}

// portfolioFn keeps, per lender and currency and open window, the decision
// counters (windowTally, O(1) whatever the rate) and each loan change as
// its own map entry (a change's effect depends on the loan's state before
// it, so changes are applied in commit order when the window closes, not
// on arrival, where a later window's change may come first). No state
// value grows with the window's traffic: the list of events it kept before
// outgrew a changelog record (1 MB, MESSAGE_TOO_LARGE) past ~250
// applications/s per lender. When the watermark passes the window's end
// the changes are applied in (event time, commit order, arrival) order to
// the running totals and the window's PortfolioMetric is emitted. An event
// for a window that already fired goes into the window still open (its
// totals must not be lost; its counts land one window late).
type portfolioFn struct {
	window  int64
	now     func() time.Time
	tally   *state.ValueState[windowTally]      // key|window start → decision counters
	changes *state.MapState[portfolioEvent]     // key|window start → order key → loan change
	legacy  *state.ValueState[[]portfolioEvent] // key|window start → events (state written before windowTally; read once, then deleted)
	loans   *state.ValueState[loanState]        // key|loan id → contribution
	totals  *state.ValueState[totals]           // key → running totals
}

func (p *portfolioFn) Open(ctx *operators.ProcessContext[string, schemas.PortfolioMetric]) error {
	var err error
	if p.tally, err = state.Value[windowTally](ctx.Store(), ctx.StateSpec("window-tally", 0), pipeline.JSONCodec[windowTally]()); err != nil {
		return err
	}
	if p.changes, err = state.Map[portfolioEvent](ctx.Store(), ctx.StateSpec("window-changes", 0), pipeline.JSONCodec[portfolioEvent]()); err != nil {
		return err
	}
	if p.legacy, err = state.Value[[]portfolioEvent](ctx.Store(), ctx.StateSpec("pending", 0), pipeline.JSONCodec[[]portfolioEvent]()); err != nil {
		return err
	}
	if p.loans, err = state.Value[loanState](ctx.Store(), ctx.StateSpec("loans", 0), pipeline.JSONCodec[loanState]()); err != nil {
		return err
	}
	p.totals, err = state.Value[totals](ctx.Store(), ctx.StateSpec("totals", 0), pipeline.JSONCodec[totals]())
	return err
}

// windowStart is the start of the tumbling window holding t.
func windowStart(t, size int64) int64 {
	s := t - t%size
	if t%size < 0 {
		s -= size
	}
	return s
}

func windowKey(key string, start int64) string { return fmt.Sprintf("%s|%d", key, start) }

// changeOrder is a loan change's map key within its window: it sorts as
// (event time, commit order, arrival) sort, fixed-width hex of the values
// with the sign bit flipped so negative ones sort first.
func changeOrder(at, seq, arrival int64) string {
	const flip = uint64(1) << 63
	return fmt.Sprintf("%016x%016x%016x", uint64(at)^flip, uint64(seq)^flip, uint64(arrival)^flip)
}

func (p *portfolioFn) Process(ctx *operators.ProcessContext[string, schemas.PortfolioMetric], _ string, e portfolioEvent) error {
	start := windowStart(e.At, p.window)
	if wm := ctx.CurrentWatermark(); start+p.window-1 <= wm {
		start = windowStart(wm+1, p.window) // late: the window still open
	}
	k := windowKey(ctx.Key(), start)
	t, _, err := p.tally.Get(k)
	if err != nil {
		return err
	}
	if e.Loan != nil {
		t.Changes++
		if err := p.changes.Put(k, changeOrder(e.At, e.Seq, t.Changes), e); err != nil {
			return err
		}
	} else {
		switch e.Decision {
		case schemas.DecisionApproved:
			t.Approvals++
		case schemas.DecisionDeclined:
			t.Declines++
		default:
			t.Refers++
		}
	}
	if err := p.tally.Set(k, t); err != nil {
		return err
	}
	return ctx.RegisterEventTimer(start + p.window - 1)
}

func (p *portfolioFn) OnTimer(ctx *operators.ProcessContext[string, schemas.PortfolioMetric], key string, _ pipeline.TimeDomain, ts int64) error {
	start := ts + 1 - p.window
	wk := windowKey(key, start)
	t, had, err := p.tally.Get(wk)
	if err != nil {
		return err
	}
	var evs []portfolioEvent
	if t.Changes > 0 {
		if _, evs, err = p.changes.Entries(wk); err != nil {
			return err
		}
	}
	legacy, hadLegacy, err := p.legacy.Get(wk)
	if err != nil {
		return err
	}
	if !had && !hadLegacy {
		return nil
	}
	if len(legacy) > 0 {
		// A window opened by the version that kept a list: its events are
		// ordered as that version did and folded in with the new ones.
		evs = append(legacy, evs...)
		sort.SliceStable(evs, func(i, j int) bool {
			if evs[i].At != evs[j].At {
				return evs[i].At < evs[j].At
			}
			return evs[i].Seq < evs[j].Seq
		})
	}
	tot, ok, err := p.totals.Get(key)
	if err != nil {
		return err
	}
	if !ok {
		tot = totals{Outstanding: schemas.NewDecimal(0, 2), Delinquent: schemas.NewDecimal(0, 2)}
	}
	wc := windowCounts{originated: schemas.NewDecimal(0, 2), approvals: t.Approvals, declines: t.Declines, refers: t.Refers}
	for _, e := range evs {
		if err := p.apply(key, e, &tot, &wc); err != nil {
			return fmt.Errorf("portfolio %s window %s: %w", key, time.UnixMilli(start).UTC().Format(time.RFC3339), err)
		}
	}
	if err := errors.Join(p.totals.Set(key, tot), p.tally.Delete(wk), p.legacy.Delete(wk)); err != nil {
		return err
	}
	if t.Changes > 0 {
		if err := p.changes.Clear(wk); err != nil {
			return err
		}
	}
	return ctx.EmitAt(p.metric(key, start, tot, wc), ts)
}

// apply folds one event into the totals and the window's counts.
func (p *portfolioFn) apply(key string, e portfolioEvent, tot *totals, wc *windowCounts) error {
	if e.Loan == nil {
		switch e.Decision {
		case schemas.DecisionApproved:
			wc.approvals++
		case schemas.DecisionDeclined:
			wc.declines++
		default:
			wc.refers++
		}
		return nil
	}
	l := e.Loan
	lk := key + "|" + l.LoanID
	old, had, err := p.loans.Get(lk)
	if err != nil {
		return err
	}
	if had {
		if err := tot.apply(old, -1); err != nil {
			return err
		}
	}
	if l.Origination {
		wc.originations++
		if wc.originated, err = wc.originated.Add(l.Amount); err != nil {
			return err
		}
	}
	if l.Status == schemas.LoanStatusDefaulted && (!had || old.Status != schemas.LoanStatusDefaulted) && l.Change != schemas.LoanCreated {
		wc.defaults++
	}
	cur := loanState{Status: l.Status, Balance: l.Balance}
	if l.Change == schemas.LoanDeleted || !activeStatus(l.Status) {
		return p.loans.Delete(lk)
	}
	if err := tot.apply(cur, 1); err != nil {
		return err
	}
	return p.loans.Set(lk, cur)
}

func (p *portfolioFn) metric(key string, start int64, tot totals, wc windowCounts) schemas.PortfolioMetric {
	lender, currency := splitKey(key)
	m := schemas.PortfolioMetric{LenderID: lender, Currency: currency,
		WindowStart: time.UnixMilli(start).UTC(), WindowEnd: time.UnixMilli(start + p.window).UTC(),
		Originations: wc.originations, OriginatedAmount: wc.originated, Approvals: wc.approvals, Declines: wc.declines, Refers: wc.refers,
		ActiveLoans: tot.Active, OutstandingBalance: tot.Outstanding, DelinquentBalance: tot.Delinquent,
		ComputedAt: p.now().UTC().Truncate(time.Millisecond)}
	if out := tot.Outstanding.Float64(); out > 0 {
		m.DelinquencyRate = tot.Delinquent.Float64() / out
	}
	if tot.Active > 0 {
		m.DefaultRate = min(float64(wc.defaults)/float64(tot.Active), 1)
	}
	return m
}

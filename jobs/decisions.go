package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/loanflow/loanflow/connectors/bureau"
	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
	"github.com/loanflow/loanflow/state"
)

func init() {
	Register(Job{AdminPort: 9100, Name: "decisions", CommitInterval: 100 * time.Millisecond, MinCommitInterval: 3 * time.Millisecond, Summary: "loan_applications → temporal join customer_360 / bureau → loan_decisions + loans",
		Build: func(b *pipeline.Builder, env Env) error { return BuildDecisions(b, env, env.Decisions) }})
}

// Join modes of the decisions job (DecisionsConfig.JoinMode).
const (
	// JoinAsOf decides a known customer's application against the
	// customer_360 version valid at the application's event time: it waits
	// until the table's watermark (CDC heartbeats) passes that time, so the
	// decision does not depend on when the row arrived. The default.
	JoinAsOf = "as-of"
	// JoinLookup decides at once against the newest customer_360 version
	// the job has read (Flink's lookup join): lower latency, but a change
	// committed before the application and not yet read is missed, and one
	// committed after it but read before it is used. The decision's
	// customer_360_version names the version used.
	JoinLookup = "lookup"
)

// DecisionsConfig tunes the decisions job; the zero value is the default.
type DecisionsConfig struct {
	Policy Policy
	// JoinMode is JoinAsOf (default) or JoinLookup.
	JoinMode string
	// MaxOutOfOrderness of application event times (point-of-sale
	// clocks). Default 2s.
	MaxOutOfOrderness time.Duration
	// TableOutOfOrderness bounds how far a customer_360 version's time
	// may lag a CDC heartbeat before it. The CDC reader's heartbeats are
	// exact (a heartbeat of time H follows every row stamped before H:
	// docs/design.md, Exact heartbeats), so the default is 0; set it for a
	// customer_360 written by another producer. A KNOWN application waits
	// this long past the heartbeat that passes its event time.
	TableOutOfOrderness time.Duration
	// IdleTimeout marks a quiet input partition idle. A KNOWN application
	// waits until customer_360's watermark (moved by CDC heartbeats) passes
	// its event time; when customer_360 is idle it is answered against the
	// table as it stands. Default 10s.
	IdleTimeout time.Duration
	// JoinRetention is how much customer_360 history the join keeps;
	// older applications are referred (APPLICATION_TOO_LATE). Default 24h.
	JoinRetention time.Duration
	// DedupeTTL is how long an application id is remembered to drop
	// resubmissions. Default 24h.
	DedupeTTL time.Duration
	// BureauCapacity bounds the bureau calls in flight per task, and in
	// the worker (all its tasks; a call waits for a slot before its
	// timeout starts). Default 1000.
	BureauCapacity int
	// BureauTimeout bounds one bureau attempt. Default 3s.
	BureauTimeout time.Duration
	// BureauAttempts counts the first call. Default 4.
	BureauAttempts int
	// BureauBackoff is the wait before the second attempt, doubling up to
	// BureauMaxBackoff. Defaults 200ms and 2s.
	BureauBackoff    time.Duration
	BureauMaxBackoff time.Duration
	// BureauBreakerFailures consecutive unavailable bureau answers open
	// the bureau client's circuit breaker for BureauBreakerOpen: calls
	// then fall back at once. Defaults 5 and 10s; -1 disables it.
	BureauBreakerFailures int
	BureauBreakerOpen     time.Duration
	// LoansRetryFor bounds how long the loans sink retries a database that
	// does not answer before it fails the task. Default 10s.
	LoansRetryFor time.Duration
	// Now is the wall clock (decided_at, engine latency). Default time.Now.
	Now func() time.Time
}

// WithDefaults returns c with zero fields defaulted.
func (c DecisionsConfig) WithDefaults() DecisionsConfig {
	c.Policy = c.Policy.WithDefaults()
	d := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	d(&c.MaxOutOfOrderness, 2*time.Second)
	d(&c.IdleTimeout, 10*time.Second)
	d(&c.JoinRetention, 24*time.Hour)
	d(&c.DedupeTTL, 24*time.Hour)
	d(&c.BureauTimeout, 3*time.Second)
	d(&c.BureauBackoff, 200*time.Millisecond)
	d(&c.BureauMaxBackoff, 2*time.Second)
	d(&c.LoansRetryFor, 10*time.Second)
	if c.JoinMode == "" {
		c.JoinMode = JoinAsOf
	}
	if c.BureauCapacity == 0 {
		c.BureauCapacity = 1000
	}
	if c.BureauAttempts == 0 {
		c.BureauAttempts = 4
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports what is wrong with c (after defaults).
func (c DecisionsConfig) Validate() error {
	errs := []error{c.Policy.Validate()}
	if c.MaxOutOfOrderness < 0 || c.TableOutOfOrderness < 0 || c.IdleTimeout < 0 || c.JoinRetention <= 0 || c.DedupeTTL <= 0 || c.BureauTimeout <= 0 ||
		c.BureauBackoff <= 0 || c.BureauMaxBackoff < c.BureauBackoff || c.LoansRetryFor <= 0 {
		errs = append(errs, errors.New("jobs: decisions: durations must be positive (max_out_of_orderness and idle_timeout may be 0)"))
	}
	if c.JoinMode != JoinAsOf && c.JoinMode != JoinLookup {
		errs = append(errs, fmt.Errorf("jobs: decisions: join mode %q: use %s or %s", c.JoinMode, JoinAsOf, JoinLookup))
	}
	if c.BureauCapacity <= 0 || c.BureauAttempts <= 0 {
		errs = append(errs, errors.New("jobs: decisions: bureau_capacity and bureau_attempts must be positive"))
	}
	return errors.Join(errs...)
}

// pendingApp is an application on its way through the job: the
// application without its PII ciphertext, and when it reached the job.
type pendingApp struct {
	App       schemas.LoanApplication `json:"app"`
	ArrivedMs int64                   `json:"arrived_ms"`
	// Mismatch is the reason code when the applicant is not the named
	// customer (applicant check); such an application is referred without
	// reading the customer's data.
	Mismatch string `json:"mismatch,omitempty"`
}

// AppKey is an application's key in the job and on loan_decisions:
// application ids are unique per lender only (each lender's terminals
// choose them), so dedupe, repartitions and record keys use lender and id.
// "/" is not an id character, so the key is unambiguous. The API keys
// loan_applications the same way.
func AppKey(lender, applicationID string) string { return lender + "/" + applicationID }

// knownApp is a KNOWN application with the customer_360 row valid at its
// event time, nil when the customer had none then.
type knownApp struct {
	pendingApp
	Row *schemas.Customer360 `json:"row,omitempty"`
}

// bureauAnswer is a bureau report, or the reason there is none.
type bureauAnswer struct {
	pendingApp
	Report   *bureau.Report `json:"report,omitempty"`
	Fallback string         `json:"fallback,omitempty"`
}

// c360Row is a customer_360 record: a row or a tombstone.
type c360Row struct {
	Row     schemas.Customer360 `json:"row"`
	Deleted bool                `json:"deleted,omitempty"`
	// Heartbeat marks a CDC heartbeat that reached the decoder: the
	// runtime replays a source-backed table without recognising
	// heartbeats. It is dropped before the table.
	Heartbeat bool `json:"-"`
}

// decisionsDeps are the job's external parts, made once per build.
type decisionsDeps struct {
	cfg       DecisionsConfig
	topics    Topics
	apps      pipeline.Codec[schemas.LoanApplication]
	c360      pipeline.Codec[schemas.Customer360]
	decisions pipeline.Codec[schemas.LoanDecision]
	keys      AvroStringKeys
	bureau    *bureau.Client
	// bureauSlots bounds the bureau calls in flight in the worker (all its
	// tasks, both bureau stages) at BureauCapacity, as the client's
	// connections are: a call waits for a slot before its timeout starts.
	bureauSlots *operators.Limiter
	customers   *customerIndexes
	metrics     *decisionMetrics
	loans       func() pipeline.Sink[schemas.LoanDecision]
	env         Env
}

// BuildDecisions declares the decisions job on b (see doc.go). It
// registers the job's schemas with the registry while building.
func BuildDecisions(b *pipeline.Builder, env Env, cfg DecisionsConfig) error {
	cfg = cfg.WithDefaults()
	if err := errors.Join(cfg.Validate(), env.need(b.Job(), "brokers", "schema-registry", "database", "bureau")); err != nil {
		return err
	}
	deps, err := newDecisionsDeps(b.Job(), env, cfg)
	if err != nil {
		return err
	}
	decisionsGraph(b, deps)
	return nil
}

func newDecisionsDeps(job string, env Env, cfg DecisionsConfig) (decisionsDeps, error) {
	d := decisionsDeps{cfg: cfg, topics: env.Topics.WithDefaults(), env: env}
	c, cancel, err := env.codecs()
	if err != nil {
		return d, err
	}
	defer cancel()
	if d.apps, err = serdeOf[schemas.LoanApplication](c, d.topics.Applications, schemas.LoanApplicationSchema); err != nil {
		return d, err
	}
	if d.c360, err = serdeOf[schemas.Customer360](c, d.topics.Customer360, schemas.Customer360Schema); err != nil {
		return d, err
	}
	if d.decisions, err = serdeOf[schemas.LoanDecision](c, d.topics.Decisions, schemas.LoanDecisionSchema); err != nil {
		return d, err
	}
	if d.keys, err = stringKeys(c, d.topics.Customer360); err != nil {
		return d, err
	}
	url := env.BureauURL
	if env.Offline {
		url = "http://bureau.offline.invalid"
	}
	// The async operator bounds each attempt; the client's own timeout is
	// only a backstop.
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if d.bureau, err = bureau.NewClient(bureau.ClientConfig{URL: url, Timeout: 2 * cfg.BureauTimeout, MaxConns: cfg.BureauCapacity,
		BreakerFailures: cfg.BureauBreakerFailures, BreakerOpen: cfg.BureauBreakerOpen, Registerer: env.Registerer, Logger: log}); err != nil {
		return d, err
	}
	d.bureauSlots = operators.NewLimiter(cfg.BureauCapacity)
	d.customers = &customerIndexes{dsn: env.DatabaseURL}
	if d.metrics, err = newDecisionMetrics(env.Registerer); err != nil {
		return d, fmt.Errorf("jobs: decisions metrics: %w", err)
	}
	d.loans = func() pipeline.Sink[schemas.LoanDecision] {
		return newLoansSink(env.DatabaseURL, job, cfg.Policy.LoanTermMonths, cfg.LoansRetryFor)
	}
	return d, nil
}

// Output tags of the routing splits.
var (
	tagKnown    = pipeline.NewOutputTag[pendingApp]("known")
	tagUnknown  = pipeline.NewOutputTag[pendingApp]("unknown")
	tagFound    = pipeline.NewOutputTag[knownApp]("found")
	tagNotFound = pipeline.NewOutputTag[knownApp]("not-found")
	tagTooLate  = pipeline.NewOutputTag[operators.Rejected[pendingApp]]("too-late")
)

// decisionsGraph declares the graph; deps carries codecs and sinks.
func decisionsGraph(b *pipeline.Builder, d decisionsDeps) {
	wm := pipeline.WatermarkStrategy{MaxOutOfOrderness: d.cfg.MaxOutOfOrderness, IdleTimeout: d.cfg.IdleTimeout}
	apps := kafka.Source(b, "applications", kafka.SourceConfig[schemas.LoanApplication]{Topic: d.topics.Applications, Codec: d.apps,
		Timestamp: func(_ *pipeline.RawRecord, a schemas.LoanApplication) int64 { return a.EventTime.UnixMilli() }, Watermarks: wm})
	admitted := operators.Map(apps, "admit", func(a schemas.LoanApplication) (pendingApp, error) { return admit(a, d.cfg.Now()) })
	byApp := pipeline.KeyBy(admitted, "by-application", func(p pendingApp) string { return AppKey(p.App.LenderID, p.App.ApplicationID) }, pipeline.NoRepartition())
	unique := operators.Process(byApp, "dedupe", func() operators.ProcessFunc[string, pendingApp, pendingApp] { return &dedupe{ttl: d.cfg.DedupeTTL} })
	routed := operators.Split(unique, "route", route, tagKnown, tagUnknown)

	known := pipeline.KeyBy(pipeline.Side(routed, tagKnown), "by-customer", func(p pendingApp) string { return *p.App.CustomerID },
		pipeline.WithKeyCodec(d.keys), pipeline.ValueCodec(pipeline.JSONCodec[pendingApp]()))

	tableWM := pipeline.WatermarkStrategy{MaxOutOfOrderness: d.cfg.TableOutOfOrderness, IdleTimeout: d.cfg.IdleTimeout}
	rows := operators.Filter(customer360Source(b, d, tableWM), "customer-rows", func(r c360Row) bool { return !r.Heartbeat })
	table := pipeline.KeyBy(rows, "customer-key", func(r c360Row) string { return r.Row.CustomerID },
		pipeline.NoRepartition(), pipeline.WithKeyCodec(d.keys))
	joined := operators.TemporalJoin(known, table, "as-of-event-time",
		operators.TemporalJoinSpec[pendingApp, c360Row, knownApp]{
			Join:       joinRow,
			Deleted:    func(r c360Row) bool { return r.Deleted },
			Retention:  d.cfg.JoinRetention,
			Rejected:   &tagTooLate,
			ProbeCodec: pipeline.JSONCodec[pendingApp](),
			TableCodec: pipeline.JSONCodec[c360Row](),
			Lookup:     d.cfg.JoinMode == JoinLookup,
		})
	found := operators.Split(joined, "found", func(k knownApp) pipeline.OutputTag[knownApp] {
		if k.Row != nil {
			return tagFound
		}
		return tagNotFound
	}, tagFound, tagNotFound)

	// The applicant must be the customer the application names: the
	// applicant's SSN blind index must equal the customer's. A mismatch is
	// referred with ReasonApplicantMismatch and no customer data. (After
	// the join, so the check's latency cannot make an application late.)
	fromTable := operators.Map(applicantCheck(pipeline.Side(found, tagFound), d), "score-customer", func(k knownApp) (schemas.LoanDecision, error) {
		if k.Mismatch != "" {
			dec := d.cfg.Policy.Fallback(k.App, k.Mismatch)
			dec.CustomerID = nil // nothing of the named customer
			return d.stamp(dec, k.pendingApp), nil
		}
		dec, err := d.cfg.Policy.ScoreCustomer(k.App, *k.Row)
		return d.stamp(dec, k.pendingApp), err
	})
	notFound := operators.Map(pipeline.Side(found, tagNotFound), "not-found", func(k knownApp) (pendingApp, error) { return k.pendingApp, nil })
	scoreBureau := func(a bureauAnswer) (schemas.LoanDecision, error) {
		if a.Report == nil {
			return d.stamp(d.cfg.Policy.Fallback(a.App, a.Fallback), a.pendingApp), nil
		}
		return d.stamp(d.cfg.Policy.ScoreBureau(a.App, *a.Report), a.pendingApp), nil
	}
	fromBureau := operators.Map(bureauStage(notFound, "bureau", d), "score-bureau", scoreBureau)
	// Unknown applicants are asked about where they were routed, keyed by
	// application as they arrived: no repartition (a Kafka hop that costs
	// a commit interval) between the application and the bureau call. Their
	// decisions never book a loan (no customer).
	unknown := operators.Map(bureauStage(pipeline.Side(routed, tagUnknown), "bureau-unknown", d), "score-bureau-unknown", scoreBureau)
	unknownDecisions := operators.Map(unknown, "measure-unknown",
		func(dec schemas.LoanDecision) (schemas.LoanDecision, error) { d.metrics.observe(dec); return dec, nil })
	decisionKey := func(r pipeline.Record[schemas.LoanDecision]) []byte {
		return []byte(AppKey(r.Value.LenderID, r.Value.ApplicationID))
	}
	kafka.Sink(unknownDecisions, "unknown-decisions-out", kafka.SinkConfig[schemas.LoanDecision]{Topic: d.topics.Decisions, Codec: d.decisions, Key: decisionKey})
	tooLate := operators.Map(pipeline.Side(joined, tagTooLate), "refer-too-late", func(r operators.Rejected[pendingApp]) (schemas.LoanDecision, error) {
		return d.stamp(d.cfg.Policy.Fallback(r.Value.App, ReasonApplicationTooLate), r.Value), nil
	})

	decisions := operators.Map(pipeline.Union("decisions", fromTable, fromBureau, tooLate), "measure",
		func(dec schemas.LoanDecision) (schemas.LoanDecision, error) { d.metrics.observe(dec); return dec, nil })
	kafka.Sink(decisions, "decisions-out", kafka.SinkConfig[schemas.LoanDecision]{Topic: d.topics.Decisions, Codec: d.decisions, Key: decisionKey})
	approved := operators.Filter(decisions, "approved", func(dec schemas.LoanDecision) bool {
		return dec.Decision == schemas.DecisionApproved && dec.CustomerID != nil
	})
	pipeline.AddSink(approved, "loans", pipeline.SinkSpec{What: "postgres"}, d.loans)
}

// customer360Source reads customer_360: rows and tombstones, each checked
// to carry the key bytes the job's repartition writes; a heartbeat moves
// its partition's event time to its own time (the CDC reader writes the
// rows of every change committed before a heartbeat ahead of it; see
// doc.go).
func customer360Source(b *pipeline.Builder, d decisionsDeps, wm pipeline.WatermarkStrategy) pipeline.Stream[c360Row] {
	return pipeline.AddSource(b, "customer-360", pipeline.SourceSpec[c360Row]{What: "kafka", Topic: d.topics.Customer360,
		Watermarks: wm, Heartbeat: kafka.Heartbeat,
		Decode: func(raw *pipeline.RawRecord) (c360Row, error) {
			if _, ok := kafka.Heartbeat(raw); ok {
				return c360Row{Heartbeat: true}, nil
			}
			if raw.Value == nil {
				id, err := d.keys.DecodeKey(string(raw.Key))
				return c360Row{Row: schemas.Customer360{CustomerID: id}, Deleted: true}, err
			}
			row, err := d.c360.Decode(raw.Value)
			if err != nil {
				return c360Row{}, err
			}
			if want := d.keys.EncodeKey(row.CustomerID); string(raw.Key) != want {
				return c360Row{}, fmt.Errorf("customer_360 record of %q has key %x, the job keys it %x (schema id %d of %s): "+
					"the repartitioned applications would not be co-partitioned with it", row.CustomerID, raw.Key, want, d.keys.ID(), schemas.KeySubject(d.topics.Customer360))
			}
			return c360Row{Row: row}, nil
		},
		Timestamp: func(raw *pipeline.RawRecord, r c360Row) int64 {
			if r.Deleted {
				return raw.Timestamp
			}
			return r.Row.UpdatedAt.UnixMilli()
		},
	})
}

// bureauStage pulls credit reports without blocking the task; calls that
// fail every attempt become fallback answers.
func bureauStage(in pipeline.Stream[pendingApp], name string, d decisionsDeps) pipeline.Stream[bureauAnswer] {
	return operators.Async(in, name, operators.AsyncSpec[pendingApp, bureauAnswer]{
		Call: func(ctx context.Context, p pendingApp) (bureauAnswer, error) {
			d.metrics.calling(p.App.ApplicationID)
			rep, err := d.bureau.CreditReport(ctx, bureau.Request{ApplicationID: p.App.ApplicationID, SSNIndex: p.App.SSNIndex,
				SubscriberID: p.App.LenderID})
			if err != nil {
				return bureauAnswer{}, err
			}
			d.metrics.settled(p.App.ApplicationID, "")
			return bureauAnswer{pendingApp: p, Report: &rep}, nil
		},
		Ordered:  false,
		Capacity: d.cfg.BureauCapacity,
		Limiter:  d.bureauSlots,
		Timeout:  d.cfg.BureauTimeout,
		Retry: operators.RetryPolicy{MaxAttempts: d.cfg.BureauAttempts, InitialBackoff: d.cfg.BureauBackoff,
			MaxBackoff: d.cfg.BureauMaxBackoff, Retryable: bureau.IsRetryable},
		OnFailure: func(p pendingApp, err error) (bureauAnswer, bool) {
			reason := ReasonBureauUnavailable
			switch {
			case bureau.IsTimeout(err):
				reason = ReasonBureauTimeout
			case !bureau.IsRetryable(err) && !errors.Is(err, bureau.ErrBreakerOpen):
				reason = ReasonBureauRejected
			}
			d.metrics.settled(p.App.ApplicationID, reason)
			return bureauAnswer{pendingApp: p, Fallback: reason}, true
		},
		InCodec: pipeline.JSONCodec[pendingApp](),
	})
}

// admit validates an application and drops what the job does not need
// (the PII ciphertext). Invalid applications go to the dead-letter topic.
func admit(a schemas.LoanApplication, now time.Time) (pendingApp, error) {
	var problems []string
	if a.ApplicationID == "" {
		problems = append(problems, "application_id is empty")
	}
	if a.LenderID == "" {
		problems = append(problems, "lender_id is empty")
	}
	if a.CustomerID != nil && *a.CustomerID == "" {
		problems = append(problems, "customer_id is present but empty")
	}
	if a.Amount.Sign() <= 0 {
		problems = append(problems, fmt.Sprintf("amount %s is not positive", a.Amount))
	}
	if len(a.Currency) != 3 {
		problems = append(problems, fmt.Sprintf("currency %q is not an ISO 4217 code", a.Currency))
	}
	if len(a.SSNIndex) == 0 {
		problems = append(problems, "ssn_index is empty")
	}
	if len(problems) > 0 {
		return pendingApp{}, fmt.Errorf("invalid loan application %q: %v", a.ApplicationID, problems)
	}
	a.ApplicantDetails = nil
	return pendingApp{App: a, ArrivedMs: now.UnixMilli()}, nil
}

func route(p pendingApp) pipeline.OutputTag[pendingApp] {
	if p.App.CustomerID != nil {
		return tagKnown
	}
	return tagUnknown
}

func joinRow(p pendingApp, row *operators.Versioned[c360Row]) (knownApp, error) {
	k := knownApp{pendingApp: p}
	if row != nil {
		r := row.Value.Row
		k.Row = &r
	}
	return k, nil
}

// stamp sets the decision's wall-clock fields.
func (d decisionsDeps) stamp(dec schemas.LoanDecision, p pendingApp) schemas.LoanDecision {
	now := d.cfg.Now()
	dec.DecidedAt = now.UTC().Truncate(time.Millisecond)
	dec.EngineLatencyMs = max(now.UnixMilli()-p.ArrivedMs, 0)
	return dec
}

// dedupe passes the first record of each application id and drops
// resubmissions for DedupeTTL.
type dedupe struct {
	ttl  time.Duration
	seen *state.ValueState[bool]
}

func (d *dedupe) Open(ctx *operators.ProcessContext[string, pendingApp]) error {
	var err error
	d.seen, err = state.Value[bool](ctx.Store(), ctx.StateSpec("seen", d.ttl), pipeline.JSONCodec[bool]())
	return err
}

func (d *dedupe) Process(ctx *operators.ProcessContext[string, pendingApp], _ string, p pendingApp) error {
	if _, ok, err := d.seen.Get(ctx.Key()); ok || err != nil {
		if ok {
			ctx.CountDropped()
		}
		return err
	}
	if err := d.seen.Set(ctx.Key(), true); err != nil {
		return err
	}
	return ctx.Emit(p)
}

func (d *dedupe) OnTimer(*operators.ProcessContext[string, pendingApp], string, pipeline.TimeDomain, int64) error {
	return nil
}

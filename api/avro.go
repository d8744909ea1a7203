package api

import (
	"context"
	"fmt"

	"github.com/loanflow/loanflow/api/internal/money"
	"github.com/loanflow/loanflow/schemas"
)

// avroCodecs is the production Codecs: the Avro serde of package schemas
// with the Confluent framing (magic byte, schema id).
type avroCodecs struct {
	apps      *schemas.Serde[schemas.LoanApplication]
	decisions *schemas.Serde[schemas.LoanDecision]
	metrics   *schemas.Serde[schemas.PortfolioMetric]
}

// NewAvroCodecs returns the Avro serde for the API's topics. It registers
// the LoanApplication schema (the API produces it) and looks up the
// decision and metric schemas by their subjects, registering them too so
// the API can start before the jobs that produce them.
func NewAvroCodecs(ctx context.Context, url, appsTopic, decisionsTopic, metricsTopic string) (Codecs, error) {
	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{url}})
	if err != nil {
		return nil, fmt.Errorf("api: schema registry client: %w", err)
	}
	var c avroCodecs
	if c.apps, err = schemas.NewSerde[schemas.LoanApplication](ctx, cl, schemas.ValueSubject(appsTopic), schemas.LoanApplicationSchema); err != nil {
		return nil, fmt.Errorf("api: LoanApplication serde: %w", err)
	}
	if c.decisions, err = schemas.NewSerde[schemas.LoanDecision](ctx, cl, schemas.ValueSubject(decisionsTopic), schemas.LoanDecisionSchema); err != nil {
		return nil, fmt.Errorf("api: LoanDecision serde: %w", err)
	}
	if c.metrics, err = schemas.NewSerde[schemas.PortfolioMetric](ctx, cl, schemas.ValueSubject(metricsTopic), schemas.PortfolioMetricSchema); err != nil {
		return nil, fmt.Errorf("api: PortfolioMetric serde: %w", err)
	}
	return &c, nil
}

func (c *avroCodecs) EncodeApplication(a Application) ([]byte, error) {
	amt, err := schemas.ParseDecimal(a.Amount)
	if err != nil {
		return nil, fmt.Errorf("api: amount: %w", err)
	}
	return c.apps.Encode(nil, schemas.LoanApplication{
		ApplicationID: a.ApplicationID, POSTerminalID: a.POSTerminalID, LenderID: a.LenderID,
		CustomerID: a.CustomerID, Amount: amt, Currency: a.Currency, EventTime: a.EventTime,
		ApplicantDetails: a.ApplicantDetails, SSNIndex: a.SSNIndex,
	})
}

// moneyString renders a decimal with two places when it has at most two.
func moneyString(d schemas.Decimal) string {
	if m, err := money.Parse(d.String()); err == nil {
		return m.String()
	}
	return d.String()
}

func (c *avroCodecs) DecodeDecision(b []byte) (Decision, error) {
	d, err := c.decisions.Decode(b)
	if err != nil {
		return Decision{}, err
	}
	return Decision{ApplicationID: d.ApplicationID, LenderID: d.LenderID, CustomerID: d.CustomerID,
		Decision: string(d.Decision), ReasonCodes: d.ReasonCodes, Score: d.Score, Amount: moneyString(d.Amount),
		Currency: d.Currency, AvailableCredit: moneyString(d.AvailableCredit), Basis: string(d.Basis),
		DecidedAt: d.DecidedAt, EngineLatencyMs: d.EngineLatencyMs}, nil
}

func (c *avroCodecs) DecodeMetric(b []byte) (Metric, error) {
	m, err := c.metrics.Decode(b)
	if err != nil {
		return Metric{}, err
	}
	return Metric{LenderID: m.LenderID, WindowStart: m.WindowStart, WindowEnd: m.WindowEnd, Currency: m.Currency,
		Originations: m.Originations, OriginatedAmount: moneyString(m.OriginatedAmount), Approvals: m.Approvals,
		Declines: m.Declines, Refers: m.Refers, ActiveLoans: m.ActiveLoans, OutstandingBalance: moneyString(m.OutstandingBalance),
		DelinquentBalance: moneyString(m.DelinquentBalance), DelinquencyRate: m.DelinquencyRate, DefaultRate: m.DefaultRate,
		ComputedAt: m.ComputedAt}, nil
}

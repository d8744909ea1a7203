package schemas

import (
	"context"
	"embed"
	"io/fs"
	"strings"
)

//go:embed avro/*.avsc
var avscFS embed.FS

// Files returns the embedded .avsc files of schemas/avro, by file name
// (loan_application.avsc, ...).
func Files() fs.FS {
	sub, err := fs.Sub(avscFS, "avro")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return sub
}

func mustRead(name string) string {
	b, err := avscFS.ReadFile("avro/" + name)
	if err != nil {
		panic("schemas: missing embedded " + name)
	}
	return string(b)
}

// The .avsc texts, exactly as in schemas/avro.
var (
	LoanApplicationSchema  = mustRead("loan_application.avsc")
	Customer360Schema      = mustRead("customer_360.avsc")
	LoanDecisionSchema     = mustRead("loan_decision.avsc")
	LoanUpdatedEventSchema = mustRead("loan_updated_event.avsc")
	PortfolioMetricSchema  = mustRead("portfolio_metric.avsc")
	// CDCSourceSchema is the source block of every CDC envelope.
	CDCSourceSchema = mustRead("cdc_source.avsc")
	// CDCEnvelopeGenericSchema is the envelope with an empty row record;
	// CDCEnvelopeSchema builds the envelope of a real table.
	CDCEnvelopeGenericSchema = mustRead("cdc_envelope.avsc")
)

// ValueSubject is the TopicNameStrategy subject of a topic's record values.
func ValueSubject(topic string) string { return topic + "-value" }

// KeySubject is the TopicNameStrategy subject of a topic's record keys.
func KeySubject(topic string) string { return topic + "-key" }

// Spec ties a record type to its schema and its registry subject.
type Spec[T any] struct {
	// Topic the records are written to; empty for records that travel only
	// on topics named by the job that writes them (repartition topics).
	Topic string
	// Subject is the registry subject: Topic-value (TopicNameStrategy), or
	// the record's full name (RecordNameStrategy) when Topic is empty.
	Subject string
	// Schema is the .avsc text.
	Schema string
}

// NewSerde returns a Serde for the spec's record type, registering (or,
// with ReadOnly, looking up) its schema under the spec's subject.
func (s Spec[T]) NewSerde(ctx context.Context, cl *Client, opts ...SerdeOption) (*Serde[T], error) {
	return NewSerde[T](ctx, cl, s.Subject, s.Schema, opts...)
}

func topicSpec[T any](topic, schema string) Spec[T] {
	return Spec[T]{Topic: topic, Subject: ValueSubject(topic), Schema: schema}
}

// The record specs of DESIGN.md §4.
var (
	LoanApplicationSpec  = topicSpec[LoanApplication]("loan_applications", LoanApplicationSchema)
	Customer360Spec      = topicSpec[Customer360]("customer_360", Customer360Schema)
	LoanDecisionSpec     = topicSpec[LoanDecision]("loan_decisions", LoanDecisionSchema)
	PortfolioMetricSpec  = topicSpec[PortfolioMetric]("portfolio_metrics", PortfolioMetricSchema)
	LoanUpdatedEventSpec = Spec[LoanUpdatedEvent]{
		Subject: "io.loanflow.lending.LoanUpdatedEvent",
		Schema:  LoanUpdatedEventSchema,
	}
)

// SanitizeName turns s (a PostgreSQL table or column name) into a valid
// Avro name: characters outside [A-Za-z0-9_] become '_', and a leading
// digit gets a '_' prefix. Valid names are returned unchanged.
func SanitizeName(s string) string {
	if s == "" {
		return "_"
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case c >= '0' && c <= '9':
			if i == 0 {
				b.WriteByte('_')
			}
		default:
			c = '_'
		}
		b.WriteByte(c)
	}
	return b.String()
}

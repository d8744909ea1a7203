// Package avrobench measures the Avro serde of package schemas: encode and
// decode ns/op, allocations and record size for every record schema and for
// the CDC reader's dynamic envelope path, beside encoding/json on the same
// values as a baseline measured in the same run.
//
// Run is what `loanflow bench` calls; `go test -bench . ./schemas/...` runs
// the same cases as Go benchmarks (Cases). Both use a real schema registry:
// the one at Config.RegistryURL, or an embedded one on an in-memory broker
// that Run starts and stops. Run owns everything it starts.
package avrobench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
	"github.com/twmb/avro"
)

// Config configures Run.
type Config struct {
	// RegistryURL of a running registry; empty starts an embedded one on an
	// in-memory broker.
	RegistryURL string
	// SubjectPrefix is prepended to the subjects the benchmark registers,
	// so a shared registry is not polluted. Default "avrobench.".
	SubjectPrefix string
}

// Case is one benchmark: an operation on one record type in one format.
type Case struct {
	Record      string // LoanApplication, ..., CDCEnvelope
	Op          string // encode, decode, decode-evolved
	Format      string // avro, json
	RecordBytes int    // size of the encoded record
	Fn          func(b *testing.B)
}

// Name is Record/Op-Format, the sub-benchmark name.
func (c Case) Name() string { return c.Record + "/" + c.Op + "-" + c.Format }

// Result is one measured case.
type Result struct {
	Case
	NsPerOp     float64
	AllocsPerOp int64
	BytesPerOp  int64
}

// Report is the outcome of Run.
type Report struct {
	GoVersion string
	CPUs      int
	Results   []Result
}

// Run registers the schemas, runs every case with testing.Benchmark and
// returns the figures.
func Run(ctx context.Context, cfg Config) (Report, error) {
	url := cfg.RegistryURL
	if url == "" {
		u, stop, err := embeddedRegistry(ctx)
		if err != nil {
			return Report{}, err
		}
		defer stop()
		url = u
	}
	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{url}})
	if err != nil {
		return Report{}, err
	}
	cases, err := Cases(ctx, cl, cfg.SubjectPrefix)
	if err != nil {
		return Report{}, err
	}
	rep := Report{GoVersion: runtime.Version(), CPUs: runtime.NumCPU()}
	for _, c := range cases {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		r := testing.Benchmark(c.Fn)
		rep.Results = append(rep.Results, Result{
			Case: c, NsPerOp: float64(r.T.Nanoseconds()) / float64(max(r.N, 1)),
			AllocsPerOp: r.AllocsPerOp(), BytesPerOp: r.AllocedBytesPerOp(),
		})
	}
	return rep, nil
}

func embeddedRegistry(ctx context.Context) (string, func(), error) {
	brk, err := localsvc.StartBroker(localsvc.BrokerOptions{})
	if err != nil {
		return "", nil, err
	}
	reg, err := schemaregistry.New(schemaregistry.Config{
		Brokers: brk.Addrs(), Listen: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		brk.Stop()
		return "", nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(rctx) }()
	stop := func() { cancel(); <-done; brk.Stop() }
	select {
	case <-reg.Ready():
		return reg.URL(), stop, nil
	case err := <-done:
		cancel()
		brk.Stop()
		return "", nil, fmt.Errorf("avrobench: embedded registry: %w", err)
	}
}

// Cases registers every schema under prefix+subject and returns the
// benchmark cases.
func Cases(ctx context.Context, cl *schemas.Client, prefix string) ([]Case, error) {
	if prefix == "" {
		prefix = "avrobench."
	}
	var out []Case
	add := func(cs []Case, err error) error {
		out = append(out, cs...)
		return err
	}
	for _, err := range []error{
		add(recordCases(ctx, cl, prefix, "LoanApplication", schemas.LoanApplicationSpec, SampleLoanApplication())),
		add(recordCases(ctx, cl, prefix, "Customer360", schemas.Customer360Spec, SampleCustomer360())),
		add(recordCases(ctx, cl, prefix, "LoanDecision", schemas.LoanDecisionSpec, SampleLoanDecision())),
		add(recordCases(ctx, cl, prefix, "LoanUpdatedEvent", schemas.LoanUpdatedEventSpec, SampleLoanUpdatedEvent())),
		add(recordCases(ctx, cl, prefix, "PortfolioMetric", schemas.PortfolioMetricSpec, SamplePortfolioMetric())),
		add(envelopeCases(ctx, cl, prefix)),
		add(evolvedCase(ctx, cl, prefix)),
	} {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func recordCases[T any](ctx context.Context, cl *schemas.Client, prefix, name string, spec schemas.Spec[T], v T) ([]Case, error) {
	s, err := schemas.NewSerde[T](ctx, cl, prefix+spec.Subject, spec.Schema)
	if err != nil {
		return nil, fmt.Errorf("avrobench: %s: %w", name, err)
	}
	cs, err := codecCases[T](name, "avro", s, v)
	if err != nil {
		return nil, err
	}
	js, err := codecCases[T](name, "json", pipeline.JSONCodec[T](), v)
	return append(cs, js...), err
}

// codecCases are the encode and decode cases of one codec and value.
func codecCases[T any](name, format string, c pipeline.Codec[T], v T) ([]Case, error) {
	enc, err := c.Encode(nil, v)
	if err != nil {
		return nil, fmt.Errorf("avrobench: %s %s: encoding: %w", name, format, err)
	}
	if _, err := c.Decode(enc); err != nil {
		return nil, fmt.Errorf("avrobench: %s %s: decoding: %w", name, format, err)
	}
	return []Case{
		{Record: name, Op: "encode", Format: format, RecordBytes: len(enc), Fn: func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			buf := make([]byte, 0, 2*len(enc))
			for b.Loop() {
				if _, err := c.Encode(buf[:0], v); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{Record: name, Op: "decode", Format: format, RecordBytes: len(enc), Fn: func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				if _, err := c.Decode(enc); err != nil {
					b.Fatal(err)
				}
			}
		}},
	}, nil
}

// envelopeCases measure the CDC reader's dynamic path: a map encoded with
// an envelope schema built at run time.
func envelopeCases(ctx context.Context, cl *schemas.Client, prefix string) ([]Case, error) {
	topic := "cdc.public.loans"
	env, err := schemas.CDCEnvelopeSchema(topic, LoanColumns())
	if err != nil {
		return nil, err
	}
	s, err := schemas.NewSerde[map[string]any](ctx, cl, prefix+schemas.ValueSubject(topic), env.String())
	if err != nil {
		return nil, fmt.Errorf("avrobench: envelope: %w", err)
	}
	return codecCases[map[string]any]("CDCEnvelope", "avro", s, SampleChange())
}

// evolvedCase decodes records written with an older schema version of the
// subject (writer resolved to reader, cached by id).
func evolvedCase(ctx context.Context, cl *schemas.Client, prefix string) ([]Case, error) {
	subject := prefix + "evolved-value"
	old := strings.Replace(schemas.Customer360Schema, `"name": "source_lsn"`, `"name": "source_lsn_removed"`, 1)
	if old == schemas.Customer360Schema {
		return nil, fmt.Errorf("avrobench: Customer360 has no source_lsn field to evolve")
	}
	w, err := schemas.NewSerde[map[string]any](ctx, cl, subject, old)
	if err != nil {
		return nil, fmt.Errorf("avrobench: evolved writer: %w", err)
	}
	r, err := schemas.NewSerde[schemas.Customer360](ctx, cl, subject, schemas.Customer360Schema)
	if err != nil {
		return nil, fmt.Errorf("avrobench: evolved reader: %w", err)
	}
	c := SampleCustomer360()
	enc, err := w.Encode(nil, map[string]any{
		"customer_id": c.CustomerID, "status": c.Status, "risk_tier": c.RiskTier, "score": c.Score,
		"credit_limit": c.CreditLimit, "current_balance": c.CurrentBalance, "delinquent": c.Delinquent,
		"version": c.Version, "updated_at": c.UpdatedAt, "source_lsn_removed": nil,
	})
	if err != nil {
		return nil, err
	}
	if _, err := r.Decode(enc); err != nil {
		return nil, fmt.Errorf("avrobench: evolved decode: %w", err)
	}
	return []Case{{Record: "Customer360", Op: "decode-evolved", Format: "avro", RecordBytes: len(enc), Fn: func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			if _, err := r.Decode(enc); err != nil {
				b.Fatal(err)
			}
		}
	}}}, nil
}

// Markdown renders the report as a table, with the JSON baseline's time
// per op and Avro's speed-up over it.
func (r Report) Markdown() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "### Avro serde (schemas)\n\n%s, %d CPUs. Avro with the Confluent header vs encoding/json on the same values, same run.\n\n", r.GoVersion, r.CPUs)
	sb.WriteString("| record | op | bytes | avro ns/op | allocs/op | B/op | json ns/op | json bytes | avro speed-up |\n")
	sb.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	json := map[string]Result{}
	for _, res := range r.Results {
		if res.Format == "json" {
			json[res.Record+"/"+res.Op] = res
		}
	}
	for _, res := range r.Results {
		if res.Format != "avro" {
			continue
		}
		jns, jbytes, ratio := "-", "-", "-"
		if j, ok := json[res.Record+"/"+res.Op]; ok {
			jns, jbytes = fmt.Sprintf("%.0f", j.NsPerOp), fmt.Sprint(j.RecordBytes)
			ratio = fmt.Sprintf("%.1fx", j.NsPerOp/res.NsPerOp)
		}
		fmt.Fprintf(&sb, "| %s | %s | %d | %.0f | %d | %d | %s | %s | %s |\n",
			res.Record, res.Op, res.RecordBytes, res.NsPerOp, res.AllocsPerOp, res.BytesPerOp, jns, jbytes, ratio)
	}
	return sb.String()
}

// LoanColumns is how the CDC reader describes a loans table.
func LoanColumns() []avro.SchemaField {
	str := avro.SchemaNode{Type: "string"}
	money := avro.SchemaNode{Type: "bytes", LogicalType: "decimal", Precision: 18, Scale: 2}
	opt := func(name string, t avro.SchemaNode) avro.SchemaField {
		return avro.SchemaField{Name: name, Type: avro.SchemaNode{Type: "union", Branches: []avro.SchemaNode{{Type: "null"}, t}}, HasDefault: true}
	}
	return []avro.SchemaField{
		{Name: "id", Type: str},
		opt("application_id", str),
		opt("customer_id", str),
		opt("lender_id", str),
		opt("amount", money),
		opt("balance", money),
		opt("status", str),
		opt("version", avro.SchemaNode{Type: "long"}),
		opt("updated_at", avro.SchemaNode{Type: "long", LogicalType: "timestamp-micros"}),
	}
}

// SampleChange is an update of a loans row as the CDC reader builds it.
func SampleChange() map[string]any {
	ts := time.Date(2026, 3, 14, 15, 9, 26, 535000000, time.UTC)
	row := func(balance int64, status string) map[string]any {
		return map[string]any{
			"id": "loan-77", "application_id": "5b1f0c1e-7d7a-4d8e-9a51-2d2f3c0b9e11", "customer_id": "cust-1001",
			"lender_id": "lender-7", "amount": big.NewRat(249999, 100), "balance": big.NewRat(balance, 100),
			"status": status, "version": int64(4), "updated_at": ts,
		}
	}
	lsn, tx := int64(0x16B3748), int64(771)
	seq := `["23803720","23803720"]`
	return map[string]any{
		"before": row(200000, "ACTIVE"),
		"after":  row(190000, "DELINQUENT"),
		"source": map[string]any{
			"version": "0.1.0", "connector": "postgresql", "name": "cdc", "ts_ms": ts.UnixMilli(),
			"snapshot": "false", "db": "loanflow", "sequence": &seq, "schema": "public", "table": "loans",
			"txId": &tx, "lsn": &lsn, "xmin": nil,
		},
		"op":    schemas.OpUpdate,
		"ts_ms": ts.UnixMilli() + 4,
	}
}

package schemas_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
	"time"

	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/schemas"
	"github.com/twmb/avro"
)

// startRegistry runs an in-memory broker and an embedded registry for the
// examples; production code gets its registry URL from configuration.
func startRegistry() (url string, stop func()) {
	brk, err := localsvc.StartBroker(localsvc.BrokerOptions{})
	if err != nil {
		log.Fatal(err)
	}
	reg, err := schemaregistry.New(schemaregistry.Config{
		Brokers: brk.Addrs(),
		Listen:  "127.0.0.1:0",
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	select {
	case <-reg.Ready():
	case err := <-done:
		log.Fatal(err)
	}
	return reg.URL(), func() { cancel(); <-done; brk.Stop() }
}

// A producer and a consumer of loan applications share one Serde type; the
// record on the wire is magic byte 0, the 4-byte schema id, then Avro.
func ExampleNewSerde() {
	url, stop := startRegistry()
	defer stop()
	ctx := context.Background()

	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{url}})
	if err != nil {
		log.Fatal(err)
	}
	apps, err := schemas.NewSerde[schemas.LoanApplication](ctx, cl,
		schemas.ValueSubject("loan_applications"), schemas.LoanApplicationSchema)
	if err != nil {
		log.Fatal(err)
	}
	customer := "cust-1001"
	value, err := apps.Encode(nil, schemas.LoanApplication{
		ApplicationID:    "5b1f0c1e-7d7a-4d8e-9a51-2d2f3c0b9e11",
		POSTerminalID:    "pos-0042",
		LenderID:         "lender-7",
		CustomerID:       &customer,
		Amount:           schemas.MustParseDecimal("2499.99"),
		Currency:         "USD",
		EventTime:        time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC),
		ApplicantDetails: []byte("ciphertext"),
		SSNIndex:         []byte("blind-index"),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("header % x, schema id %d\n", value[:5], apps.ID())

	app, err := apps.Decode(value)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(app.LenderID, *app.CustomerID, app.Amount, app.Currency, app.EventTime.Format(time.RFC3339))

	_, err = apps.Decode([]byte("not avro"))
	fmt.Println(err, "| retryable:", schemas.IsRetryable(err))
	// Output:
	// header 00 00 00 00 01, schema id 1
	// lender-7 cust-1001 2499.99 USD 2026-03-14T15:09:26Z
	// decoding: schemas: wrong magic byte (subject loan_applications-value): first byte is 0x6e, want 0x00 | retryable: false
}

// Specs name each record's topic, subject and schema.
func ExampleSpec() {
	url, stop := startRegistry()
	defer stop()
	cl, _ := schemas.NewClient(schemas.ClientConfig{URLs: []string{url}})
	decisions, err := schemas.LoanDecisionSpec.NewSerde(context.Background(), cl)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(schemas.LoanDecisionSpec.Topic, decisions.Subject())
	// Output: loan_decisions loan_decisions-value
}

// Money never rounds: an amount with more decimals than the schema's scale
// is an error, and arithmetic is exact.
func ExampleDecimal() {
	limit := schemas.MustParseDecimal("15000.00")
	balance := schemas.MustParseDecimal("12345.67")
	available, _ := limit.Sub(balance)
	fmt.Println(available)
	_, err := schemas.MustParseDecimal("10.005").Rescale(2)
	fmt.Println(err)
	// Output:
	// 2654.33
	// schemas: invalid decimal: 10.005 cannot be represented at scale 2 without rounding
}

// The CDC reader builds each table's envelope from relation metadata and
// registers it under the topic's value subject.
func ExampleCDCEnvelopeSchema() {
	columns := []avro.SchemaField{
		{Name: "id", Type: avro.SchemaNode{Type: "string"}},
		{Name: "balance", Type: avro.SchemaNode{Type: "bytes", LogicalType: "decimal", Precision: 18, Scale: 2}},
		{Name: "note", Type: avro.SchemaNode{Type: "union", Branches: []avro.SchemaNode{{Type: "null"}, {Type: "string"}}}, HasDefault: true},
	}
	env, err := schemas.CDCEnvelopeSchema("cdc.public.loans", columns)
	if err != nil {
		log.Fatal(err)
	}
	root := env.Root()
	fmt.Println(root.Namespace + "." + root.Name)
	var fields, columnNames []string
	for _, f := range root.Fields {
		fields = append(fields, f.Name)
	}
	for _, c := range root.Fields[0].Type.Branches[1].Fields {
		columnNames = append(columnNames, c.Name)
	}
	fmt.Println(strings.Join(fields, " "))
	fmt.Println(strings.Join(columnNames, " "))
	fmt.Println(schemas.ValueSubject("cdc.public.loans"))
	// Output:
	// cdc.public.loans.Envelope
	// before after source op ts_ms
	// id balance note
	// cdc.public.loans-value
}

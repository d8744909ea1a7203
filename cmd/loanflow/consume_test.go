package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/schemas"
)

// startRegistry runs a schema registry on the shared broker.
func startRegistry(t *testing.T, brokers []string) string {
	t.Helper()
	reg, err := schemaregistry.New(schemaregistry.Config{Brokers: brokers, Listen: "127.0.0.1:0",
		Topic: testenv.Name(t, "schemas"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-reg.Ready():
	case err := <-done:
		t.Fatalf("registry: %v", err)
	}
	return reg.URL()
}

// TestDecisionsTailAndTopicConsume writes decisions the way the decisions
// job does (Avro through the registry) and reads them back with the CLI:
// decisions tail decodes and filters them, topic consume decodes any
// topic through the writer schema's id.
func TestDecisionsTailAndTopicConsume(t *testing.T) {
	brokers := testenv.Broker(t).Addrs()
	regURL := startRegistry(t, brokers)
	topic := testenv.Name(t, "decisions")
	ctx := context.Background()
	reg, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{regURL}})
	if err != nil {
		t.Fatal(err)
	}
	serde, err := schemas.NewSerde[schemas.LoanDecision](ctx, reg, schemas.ValueSubject(topic), schemas.LoanDecisionSchema)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 4, 6, 0, 0, 0, time.UTC)
	written := []schemas.LoanDecision{
		{ApplicationID: "app-1", LenderID: "bank-a", Decision: schemas.DecisionApproved, Score: 780, Amount: schemas.MustParseDecimal("1500.00"), Currency: "USD", AvailableCredit: schemas.MustParseDecimal("18500.00"), Basis: schemas.BasisCustomer360, EventTime: at, DecidedAt: at, EngineLatencyMs: 12},
		{ApplicationID: "app-2", LenderID: "bank-b", Decision: schemas.DecisionDeclined, ReasonCodes: []string{"LOW_SCORE"}, Score: 500, Amount: schemas.MustParseDecimal("900.00"), Currency: "USD", AvailableCredit: schemas.MustParseDecimal("0.00"), Basis: schemas.BasisCreditBureau, EventTime: at, DecidedAt: at, EngineLatencyMs: 340},
		{ApplicationID: "app-3", LenderID: "bank-a", Decision: schemas.DecisionDeclined, ReasonCodes: []string{"HIGH_RISK"}, Score: 560, Amount: schemas.MustParseDecimal("5000.00"), Currency: "USD", AvailableCredit: schemas.MustParseDecimal("1000.00"), Basis: schemas.BasisCustomer360, EventTime: at, DecidedAt: at, EngineLatencyMs: 7},
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	for _, d := range written {
		v, err := serde.Encode(nil, d)
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(d.ApplicationID), Value: v}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	common := []string{"--brokers", strings.Join(brokers, ","), "--schema-registry", regURL, "--from-beginning"}

	// Only bank-a's declines: app-3 alone.
	out, err := run(t, newDecisionsTailCmd, append(common, "--topic", topic, "--lender", "bank-a", "--decision", "declined", "--max", "1", "--output", "json")...)
	if err != nil {
		t.Fatalf("decisions tail: %v\n%s", err, out)
	}
	var got []api.Decision
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var d api.Decision
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		got = append(got, d)
	}
	if len(got) != 1 || got[0].ApplicationID != "app-3" || got[0].Amount != "5000.00" || got[0].ReasonCodes[0] != "HIGH_RISK" || got[0].EngineLatencyMs != 7 {
		t.Fatalf("decisions tail --lender bank-a --decision declined: %+v", got)
	}
	table, err := run(t, newDecisionsTailCmd, append(common, "--topic", topic, "--max", "3")...)
	if err != nil || strings.Count(table, "\n") != 4 || !strings.Contains(table, "app-2") || !strings.Contains(table, "LOW_SCORE") {
		t.Fatalf("decisions tail table (%v):\n%s", err, table)
	}

	// topic consume: every record, decoded through its schema id.
	out, err = run(t, newTopicConsumeCmd, append(common, topic, "--max", "3", "--output", "json")...)
	if err != nil {
		t.Fatalf("topic consume: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("topic consume printed %d lines:\n%s", len(lines), out)
	}
	for i, l := range lines {
		var c struct {
			Key      string         `json:"key"`
			Value    map[string]any `json:"value"`
			SchemaID int            `json:"schema_id"`
		}
		if err := json.Unmarshal([]byte(l), &c); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, l)
		}
		if c.Key != written[i].ApplicationID || c.Value["application_id"] != written[i].ApplicationID ||
			c.Value["lender_id"] != written[i].LenderID || c.SchemaID == 0 {
			t.Fatalf("line %d decoded as %+v, want %+v", i, c, written[i])
		}
	}
}

package schemas

import (
	"context"
	"errors"
	"math/big"
	"reflect"
	"testing"
	"time"

	"github.com/twmb/avro"
)

func micros() avro.SchemaNode { return avro.SchemaNode{Type: "long", LogicalType: "timestamp-micros"} }

// Columns as the CDC reader describes the api/migrations tables: the key
// keeps its type, other columns are nullable.
func customersColumns() []avro.SchemaField {
	return []avro.SchemaField{
		column("customer_id", stringType()), nullable("name_ct", avro.SchemaNode{Type: "bytes"}),
		nullable("credit_limit", money()), nullable("current_balance", money()),
		nullable("risk_tier", stringType()), nullable("status", stringType()),
		nullable("version", avro.SchemaNode{Type: "long"}), nullable("updated_at", micros()),
	}
}

func profilesColumns() []avro.SchemaField {
	return []avro.SchemaField{
		column("customer_id", stringType()), nullable("current_score", intType()),
		nullable("score_history", stringType()), nullable("updated_at", micros()),
	}
}

func loansColumns() []avro.SchemaField {
	return []avro.SchemaField{
		column("loan_id", stringType()), nullable("application_id", stringType()),
		nullable("customer_id", stringType()), nullable("lender_id", stringType()),
		nullable("amount", money()), nullable("balance", money()), nullable("currency", stringType()),
		nullable("term_months", intType()), nullable("status", stringType()),
		nullable("days_past_due", intType()), nullable("version", avro.SchemaNode{Type: "long"}),
		nullable("updated_at", micros()),
	}
}

// throughCDC encodes change as the CDC reader would for topic and decodes
// it as a consumer without a reader schema would.
func throughCDC(t *testing.T, cl *Client, topic string, cols []avro.SchemaField, change map[string]any) map[string]any {
	t.Helper()
	env, err := CDCEnvelopeSchema(topic, cols)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewSerde[map[string]any](context.Background(), cl, ValueSubject(topic), env.String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := w.Encode(nil, change)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := NewWriterSchemaDecoder[map[string]any](cl, ValueSubject(topic))
	if err != nil {
		t.Fatal(err)
	}
	got, err := dec.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func source(table string, lsn int64, ts time.Time) map[string]any {
	return map[string]any{"version": "0.1.0", "connector": "postgresql", "name": "cdc", "ts_ms": ts.UnixMilli(),
		"db": "loanflow", "schema": "public", "table": table, "lsn": lsn}
}

func TestCustomer360FromRows(t *testing.T) {
	cl := newRegistry(t)
	ts := time.Date(2026, 3, 14, 15, 9, 26, 535123000, time.UTC)
	cust := throughCDC(t, cl, "cdc.public.customers", customersColumns(), map[string]any{
		"op": OpUpdate, "source": source("customers", 100, ts),
		"after": map[string]any{"customer_id": "cust-1", "name_ct": []byte{1, 2}, "credit_limit": "15000.00",
			"current_balance": big.NewRat(234567, 100), "risk_tier": "LOW", "status": "ACTIVE",
			"version": int64(7), "updated_at": ts},
	})
	prof := throughCDC(t, cl, "cdc.public.credit_profiles", profilesColumns(), map[string]any{
		"op": OpUpdate, "source": source("credit_profiles", 101, ts),
		"after": map[string]any{"customer_id": "cust-1", "current_score": int32(742), "score_history": "[]",
			"updated_at": ts.Add(time.Second)},
	})
	c, err := Customer360FromRows(cust["after"].(map[string]any), prof["after"].(map[string]any))
	if err != nil {
		t.Fatal(err)
	}
	want := Customer360{CustomerID: "cust-1", Status: "ACTIVE", RiskTier: "LOW", Score: 742,
		CreditLimit: MustParseDecimal("15000.00"), CurrentBalance: MustParseDecimal("2345.67"),
		Version: 7, UpdatedAt: ts.Add(time.Second).Truncate(time.Millisecond)}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
	s, err := Customer360Spec.NewSerde(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Encode(nil, c); err != nil {
		t.Fatalf("the derived row does not encode: %v", err)
	}
	if _, err := Customer360FromRows(cust["after"].(map[string]any), nil); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("no profile: %v", err)
	}
	bad := map[string]any{"customer_id": "cust-1", "status": nil}
	if _, err := Customer360FromRows(bad, prof["after"].(map[string]any)); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("null status: %v", err)
	}
}

func TestLoanUpdatedEventFromChange(t *testing.T) {
	cl := newRegistry(t)
	ts := time.Date(2026, 3, 14, 15, 9, 26, 535000000, time.UTC)
	row := func(balance, status string, dpd int32) map[string]any {
		return map[string]any{"loan_id": "loan-1", "application_id": nil, "customer_id": "cust-1", "lender_id": "lender-7",
			"amount": "2499.99", "balance": balance, "currency": "USD", "term_months": int32(12),
			"status": status, "days_past_due": dpd, "version": int64(3), "updated_at": ts}
	}
	ser, err := LoanUpdatedEventSpec.NewSerde(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		change map[string]any
		want   LoanUpdatedEvent
	}{
		{map[string]any{"op": OpCreate, "after": row("2499.99", "ACTIVE", 0), "source": source("loans", 200, ts)},
			LoanUpdatedEvent{LoanID: "loan-1", CustomerID: "cust-1", LenderID: "lender-7", Change: LoanCreated,
				NewStatus: ptr("ACTIVE"), Amount: MustParseDecimal("2499.99"), Currency: "USD",
				Balance: MustParseDecimal("2499.99"), EventTime: ts, SourceLSN: 200}},
		{map[string]any{"op": OpUpdate, "before": row("2000.00", "ACTIVE", 0), "after": row("1900.00", "DELINQUENT", 31), "source": source("loans", 300, ts)},
			LoanUpdatedEvent{LoanID: "loan-1", CustomerID: "cust-1", LenderID: "lender-7", Change: LoanUpdated,
				OldStatus: ptr("ACTIVE"), NewStatus: ptr("DELINQUENT"), Amount: MustParseDecimal("2499.99"), Currency: "USD",
				OldBalance: ptr(MustParseDecimal("2000.00")), Balance: MustParseDecimal("1900.00"), DaysPastDue: 31, EventTime: ts, SourceLSN: 300}},
		{map[string]any{"op": OpDelete, "before": row("10.00", "PAID", 0), "source": source("loans", 400, ts)},
			LoanUpdatedEvent{LoanID: "loan-1", CustomerID: "cust-1", LenderID: "lender-7", Change: LoanDeleted,
				OldStatus: ptr("PAID"), Amount: MustParseDecimal("2499.99"), Currency: "USD",
				OldBalance: ptr(MustParseDecimal("10.00")), Balance: NewDecimal(0, 2), EventTime: ts, SourceLSN: 400}},
	}
	for _, c := range cases {
		got, err := LoanUpdatedEventFromChange(throughCDC(t, cl, "cdc.public.loans", loansColumns(), c.change))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Fatalf("%s:\n got %+v\nwant %+v", c.change["op"], got, c.want)
		}
		if _, err := ser.Encode(nil, got); err != nil {
			t.Fatalf("the derived event does not encode: %v", err)
		}
	}
	if _, err := LoanUpdatedEventFromChange(map[string]any{"op": OpTruncate}); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("truncate: %v", err)
	}
}

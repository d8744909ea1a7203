package schemas

import (
	"context"
	"reflect"
	"testing"
)

// roundTrip encodes v with a serde for T registered from spec and decodes
// it back.
func roundTrip[T any](t *testing.T, cl *Client, spec Spec[T], v T) {
	t.Helper()
	ctx := context.Background()
	s, err := spec.NewSerde(ctx, cl)
	if err != nil {
		t.Fatalf("%s: %v", spec.Subject, err)
	}
	b, err := s.Encode(nil, v)
	if err != nil {
		t.Fatalf("%s: encoding: %v", spec.Subject, err)
	}
	if b[0] != 0 || int(b[1])<<24|int(b[2])<<16|int(b[3])<<8|int(b[4]) != s.ID() {
		t.Fatalf("%s: header % x, schema id %d", spec.Subject, b[:5], s.ID())
	}
	got, err := s.Decode(b)
	if err != nil {
		t.Fatalf("%s: decoding: %v", spec.Subject, err)
	}
	if !reflect.DeepEqual(got, v) {
		t.Fatalf("%s: round trip\n got %+v\nwant %+v", spec.Subject, got, v)
	}
	again, err := spec.NewSerde(ctx, cl)
	if err != nil || again.ID() != s.ID() {
		t.Fatalf("%s: registering twice gave id %d then %d (%v)", spec.Subject, s.ID(), again.ID(), err)
	}
}

func TestSerdeRoundTripEverySchema(t *testing.T) {
	cl := newRegistry(t)
	roundTrip(t, cl, LoanApplicationSpec, sampleLoanApplication())
	roundTrip(t, cl, Customer360Spec, sampleCustomer360())
	roundTrip(t, cl, LoanDecisionSpec, sampleLoanDecision())
	roundTrip(t, cl, LoanUpdatedEventSpec, sampleLoanUpdatedEvent())
	roundTrip(t, cl, PortfolioMetricSpec, samplePortfolioMetric())
}

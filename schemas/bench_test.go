package schemas

import (
	"testing"

	"github.com/loanflow/loanflow/pipeline"
)

// Benchmarks of the serde per record: Avro with the Confluent header, next
// to encoding/json on the same values as a same-run baseline.
//
//	go test -run '^$' -bench . -benchmem ./schemas/

func benchRecord[T any](b *testing.B, schema string, v T) {
	s := localSerde[T](b, schema, 1)
	enc, err := s.Encode(nil, v)
	if err != nil {
		b.Fatal(err)
	}
	js := pipeline.JSONCodec[T]()
	jenc, err := js.Encode(nil, v)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("avro-encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			if _, err := s.Encode(buf[:0], v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("avro-decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			if _, err := s.Decode(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json-encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(jenc)))
		buf := make([]byte, 0, 2048)
		for b.Loop() {
			if _, err := js.Encode(buf[:0], v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json-decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(jenc)))
		for b.Loop() {
			if _, err := js.Decode(jenc); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkLoanApplication(b *testing.B) {
	benchRecord(b, LoanApplicationSchema, sampleLoanApplication())
}

func BenchmarkCustomer360(b *testing.B) { benchRecord(b, Customer360Schema, sampleCustomer360()) }

func BenchmarkLoanDecision(b *testing.B) { benchRecord(b, LoanDecisionSchema, sampleLoanDecision()) }

func BenchmarkLoanUpdatedEvent(b *testing.B) {
	benchRecord(b, LoanUpdatedEventSchema, sampleLoanUpdatedEvent())
}

func BenchmarkPortfolioMetric(b *testing.B) {
	benchRecord(b, PortfolioMetricSchema, samplePortfolioMetric())
}

// BenchmarkCDCEnvelope is the dynamic path the CDC reader uses: a map
// encoded with a schema built at run time.
func BenchmarkCDCEnvelope(b *testing.B) {
	env, err := CDCEnvelopeSchema("cdc.public.loans", loanColumns())
	if err != nil {
		b.Fatal(err)
	}
	s := localSerde[map[string]any](b, env.String(), 1)
	v := sampleChangeMap()
	enc, err := s.Encode(nil, v)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("avro-encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			if _, err := s.Encode(buf[:0], v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("avro-decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			if _, err := s.Decode(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDecodeEvolvedWriter decodes records written with another schema
// version (resolved writer → reader, cached by id).
func BenchmarkDecodeEvolvedWriter(b *testing.B) {
	w := localSerde[customerV2Go](b, customerV2, 2)
	r := localSerde[customerV1Go](b, customerV1, 1)
	ws, err := w.reader, error(nil)
	if err != nil {
		b.Fatal(err)
	}
	// Seed the reader's cache as if the registry had served id 2.
	r.cl.remember(2, ws.String())
	enc, err := w.Encode(nil, customerV2Go{ID: "c1", Limit: MustParseDecimal("100.50"), Tier: ptr("GOLD")})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := r.Decode(enc); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}

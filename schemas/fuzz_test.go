package schemas

import (
	"bytes"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/twmb/avro"
)

// localSerde builds a Serde without registering (fuzzing needs no
// registry): records carrying id decode with the local schema; any other
// id asks a registry that is not there (a retryable error).
func localSerde[T any](t testing.TB, schema string, id int) *Serde[T] {
	t.Helper()
	cl, err := NewClient(ClientConfig{URLs: []string{"http://127.0.0.1:1"}, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := &Serde[T]{cl: cl, subject: "fuzz-value", id: id, schemaOpts: schemaOptsFor[T]()}
	s.opts = serdeOptions{maxRecordBytes: DefaultMaxRecordBytes, maxWriters: 4}
	s.mu.writers = make(map[int]writerEntry)
	if s.reader, err = avro.Parse(schema, s.schemaOpts...); err != nil {
		t.Fatal(err)
	}
	return s
}

// decoder is one serde under fuzzing, type-erased.
type decoder struct {
	decode func([]byte) (any, error)
	encode func(any) ([]byte, error)
}

func asDecoder[T any](s *Serde[T]) decoder {
	return decoder{
		decode: func(b []byte) (any, error) { return s.Decode(b) },
		encode: func(v any) ([]byte, error) { return s.Encode(nil, v.(T)) },
	}
}

func fuzzDecoders(t testing.TB) []decoder {
	env, err := CDCEnvelopeSchema("cdc.public.loans", loanColumns())
	if err != nil {
		t.Fatal(err)
	}
	return []decoder{
		asDecoder(localSerde[LoanApplication](t, LoanApplicationSchema, 1)),
		asDecoder(localSerde[Customer360](t, Customer360Schema, 1)),
		asDecoder(localSerde[LoanDecision](t, LoanDecisionSchema, 1)),
		asDecoder(localSerde[LoanUpdatedEvent](t, LoanUpdatedEventSchema, 1)),
		asDecoder(localSerde[PortfolioMetric](t, PortfolioMetricSchema, 1)),
		asDecoder(localSerde[map[string]any](t, env.String(), 1)),
	}
}

// FuzzDecode feeds arbitrary bodies, framed with the serde's own schema
// id, to every record's serde and to the dynamic CDC path: decoding never
// panics (the serde's recover is not allowed to fire either), errors have a
// kind, and whatever decodes re-encodes to something that decodes and
// re-encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	decs := fuzzDecoders(f)
	samples := []any{sampleLoanApplication(), sampleCustomer360(), sampleLoanDecision(), sampleLoanUpdatedEvent(), samplePortfolioMetric()}
	for i, v := range samples {
		b, err := decs[i].encode(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b[HeaderBytes:])
		f.Add(uint8(i), b[HeaderBytes:len(b)/2])
	}
	f.Add(uint8(5), []byte{0, 2, 'x', 0})
	f.Add(uint8(0), []byte{0xfe, 0xff, 0xff, 0xff, 0x0f})
	f.Add(uint8(2), bytes.Repeat([]byte{0x81}, 64))
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		d := decs[int(which)%len(decs)]
		v, err := d.decode(append(AppendHeader(nil, 1), body...))
		if err != nil {
			checkDecodeErr(t, err)
			return
		}
		b, err := d.encode(v)
		if err != nil {
			return // e.g. a decoded timestamp outside what encode accepts
		}
		again, err := d.decode(b)
		if err != nil {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		// Compare encodings, not values: NaN != NaN.
		b2, err := d.encode(again)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("unstable round trip (%v):\n%+v\n%+v", err, v, again)
		}
	})
}

func checkDecodeErr(t *testing.T, err error) {
	t.Helper()
	if strings.Contains(err.Error(), "decoder panic") {
		t.Fatalf("the Avro decoder panicked: %v", err)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error is not a *schemas.Error: %v", err)
	}
	switch e.Kind {
	case ErrTruncated, ErrCorrupt, ErrTooLarge, ErrBadMagic:
	default:
		t.Fatalf("unexpected error kind for a body of the serde's own schema: %v", err)
	}
}

// FuzzFraming feeds arbitrary records (header included) to a serde whose
// registry is unreachable: the outcome is a value, a dead-letter error, or
// a retryable registry error for foreign schema ids, never a panic.
func FuzzFraming(f *testing.F) {
	s := localSerde[Customer360](f, Customer360Schema, 7)
	good, err := s.Encode(nil, sampleCustomer360())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:4])
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 7})
	f.Add(append([]byte{0, 0, 0, 0, 8}, good[5:]...))
	f.Fuzz(func(t *testing.T, rec []byte) {
		id, body, herr := SplitHeader(rec)
		_, err := s.Decode(rec)
		switch {
		case herr != nil:
			if len(rec) >= HeaderBytes && rec[0] == 0 {
				t.Fatalf("valid header refused: %v", herr)
			}
			if err == nil {
				t.Fatal("decoded a record with a bad header")
			}
		case !bytes.Equal(append(AppendHeader(nil, id), body...), rec):
			t.Fatal("SplitHeader and AppendHeader disagree")
		case id != 7:
			if err == nil || !IsRetryable(err) && !errors.Is(err, ErrUnknownSchemaID) {
				t.Fatalf("foreign schema id %d with no registry: %v", id, err)
			}
		case err != nil:
			checkDecodeErr(t, err)
		}
	})
}

// FuzzParseDecimal: parsing never panics, and what parses prints back to
// an equal value.
func FuzzParseDecimal(f *testing.F) {
	for _, s := range []string{"0", "1234.50", "-0.05", ".5", "9223372036854775807", "1e5", "-", "0.000000000000000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDecimal(s)
		if err != nil {
			return
		}
		back, err := ParseDecimal(d.String())
		if err != nil || back != d {
			t.Fatalf("%q → %s → %s (%v)", s, d, back, err)
		}
		if r, ok := new(big.Rat).SetString(s); ok && r.Cmp(d.Rat()) != 0 {
			t.Fatalf("%q parsed as %s, big.Rat says %s", s, d, r.RatString())
		}
	})
}

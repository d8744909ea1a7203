package schemas

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/sr"
)

// customerV1 and customerV2 are two versions of a record; v2 adds an
// optional field with a default. Under FULL compatibility both directions
// must read.
const (
	customerV1 = `{"type":"record","name":"Customer","namespace":"io.loanflow.test","fields":[
		{"name":"id","type":"string"},
		{"name":"limit","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}}]}`
	customerV2 = `{"type":"record","name":"Customer","namespace":"io.loanflow.test","fields":[
		{"name":"id","type":"string"},
		{"name":"limit","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":2}},
		{"name":"tier","type":["null","string"],"default":null}]}`
	customerNoLimit = `{"type":"record","name":"Customer","namespace":"io.loanflow.test","fields":[
		{"name":"id","type":"string"}]}`
)

type customerV1Go struct {
	ID    string  `avro:"id"`
	Limit Decimal `avro:"limit"`
}

type customerV2Go struct {
	ID    string  `avro:"id"`
	Limit Decimal `avro:"limit"`
	Tier  *string `avro:"tier"`
}

// TestEvolutionOldAndNewReaders: a producer on v2 and a consumer on v1
// (and the reverse) share a topic; each reads the other's records through
// the registry, by schema id.
func TestEvolutionOldAndNewReaders(t *testing.T) {
	cl := newRegistry(t)
	ctx := context.Background()
	const subject = "customers-value"
	if res := cl.SR().SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatFull}, subject); res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	old, err := NewSerde[customerV1Go](ctx, cl, subject, customerV1)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := NewSerde[customerV2Go](ctx, cl, subject, customerV2)
	if err != nil {
		t.Fatalf("adding an optional field under FULL: %v", err)
	}
	if old.ID() == cur.ID() {
		t.Fatal("two versions share an id")
	}

	// New writer, old reader: tier is skipped.
	b, err := cur.Encode(nil, customerV2Go{ID: "c1", Limit: MustParseDecimal("100.50"), Tier: ptr("GOLD")})
	if err != nil {
		t.Fatal(err)
	}
	got1, err := old.Decode(b)
	if err != nil || got1 != (customerV1Go{ID: "c1", Limit: MustParseDecimal("100.50")}) {
		t.Fatalf("old reader of new data: %+v (%v)", got1, err)
	}
	// Old writer, new reader: tier takes its default.
	b, err = old.Encode(nil, customerV1Go{ID: "c2", Limit: MustParseDecimal("7.00")})
	if err != nil {
		t.Fatal(err)
	}
	got2, err := cur.Decode(b)
	if err != nil || !reflect.DeepEqual(got2, customerV2Go{ID: "c2", Limit: MustParseDecimal("7.00")}) {
		t.Fatalf("new reader of old data: %+v (%v)", got2, err)
	}

	// Removing the required field limit under FULL is refused, naming it.
	_, err = NewSerde[map[string]any](ctx, cl, subject, customerNoLimit)
	if !errors.Is(err, ErrIncompatible) || IsRetryable(err) || !strings.Contains(err.Error(), "'limit'") {
		t.Fatalf("removing a required field: %v", err)
	}
}

// TestDecodeIncompatibleWriter: a record whose writer schema cannot be
// resolved to the reader (registered under another subject) is a
// non-retryable ErrIncompatible naming the field.
func TestDecodeIncompatibleWriter(t *testing.T) {
	cl := newRegistry(t)
	ctx := context.Background()
	w, err := NewSerde[map[string]any](ctx, cl, "a-value", customerNoLimit)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewSerde[customerV1Go](ctx, cl, "b-value", customerV1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := w.Encode(nil, map[string]any{"id": "x"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time from the serde's cache
		_, err = r.Decode(b)
		if !errors.Is(err, ErrIncompatible) || IsRetryable(err) || !strings.Contains(err.Error(), "limit") {
			t.Fatalf("decoding with an unresolvable writer: %v", err)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	cl := newRegistry(t)
	ctx := context.Background()
	s, err := LoanApplicationSpec.NewSerde(ctx, cl, MaxRecordBytes(256))
	if err != nil {
		t.Fatal(err)
	}
	good, err := s.Encode(nil, sampleLoanApplication())
	if err != nil {
		t.Fatal(err)
	}
	header := AppendHeader(nil, s.ID())
	cases := []struct {
		name string
		in   []byte
		kind error
	}{
		{"empty", nil, ErrTruncated},
		{"short header", []byte{0, 0, 1}, ErrTruncated},
		{"bad magic", append([]byte{1}, good[1:]...), ErrBadMagic},
		{"json", []byte(`{"application_id":"x"}`), ErrBadMagic},
		{"too large", append(append([]byte(nil), header...), make([]byte, 300)...), ErrTooLarge},
		{"unknown id", append(AppendHeader(nil, 424242), good[5:]...), ErrUnknownSchemaID},
		{"truncated body", good[:len(good)-3], ErrTruncated},
		{"header only", header, ErrTruncated},
		{"trailing bytes", append(append([]byte(nil), good...), 7), ErrCorrupt},
		{"negative length", append(append([]byte(nil), header...), 0x4f, 1, 2), ErrCorrupt},
		{"huge length", append(append([]byte(nil), header...), 0xfe, 0xff, 0xff, 0xff, 0x0f), ErrTruncated},
		{"bad union index", badUnion(t, s), ErrCorrupt},
	}
	for _, c := range cases {
		_, err := s.Decode(c.in)
		if !errors.Is(err, c.kind) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.kind)
			continue
		}
		if IsRetryable(err) {
			t.Errorf("%s: %v must not be retryable", c.name, err)
		}
		if !strings.Contains(err.Error(), "loan_applications-value") {
			t.Errorf("%s: error does not name the subject: %v", c.name, err)
		}
	}
	// A record too large to decode is refused on encode too.
	big := sampleLoanApplication()
	big.ApplicantDetails = make([]byte, 300)
	if _, err := s.Encode(nil, big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("encoding past MaxRecordBytes: %v", err)
	}
	// An amount with more decimals than the schema is an encode error,
	// never a rounded amount.
	bad := sampleLoanApplication()
	bad.Amount = MustParseDecimal("10.005")
	if _, err := s.Encode(nil, bad); !errors.Is(err, ErrInvalidValue) || !strings.Contains(err.Error(), "rounding") {
		t.Fatalf("encoding 10.005 at scale 2: %v", err)
	}
	bad.Amount = MustParseDecimal("12345678901234567.00")
	if _, err := s.Encode(nil, bad); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("encoding past precision 18: %v", err)
	}
}

// badUnion is a LoanApplication body whose customer_id union index is 5.
func badUnion(t *testing.T, s *Serde[LoanApplication]) []byte {
	t.Helper()
	app := sampleLoanApplication()
	b, err := s.Encode(nil, app)
	if err != nil {
		t.Fatal(err)
	}
	// After the header: application_id (len+36), pos_terminal_id, lender_id
	// strings, then the union index of customer_id.
	i := 5
	for range 3 {
		n := int(b[i]) >> 1 // zig-zag, short strings: one length byte
		i += 1 + n
	}
	b[i] = 10 // zig-zag 5
	return b
}

// TestRegistryDownIsRetryable: when the registry cannot be reached,
// decoding a record of an unseen schema id is a retryable error, and
// registering is too; the serde still decodes its own schema id.
func TestRegistryDownIsRetryable(t *testing.T) {
	cl := newRegistry(t)
	ctx := context.Background()
	s, err := Customer360Spec.NewSerde(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	own, err := s.Encode(nil, sampleCustomer360())
	if err != nil {
		t.Fatal(err)
	}
	down, err := NewClient(ClientConfig{URLs: []string{"http://127.0.0.1:1"}, RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewSerde[Customer360](ctx, down, Customer360Spec.Subject, Customer360Schema)
	if !errors.Is(err, ErrRegistryUnavailable) || !IsRetryable(err) {
		t.Fatalf("registering with the registry down: %v", err)
	}
	ro, err := NewSerde[Customer360](ctx, cl, Customer360Spec.Subject, Customer360Schema, ReadOnly())
	if err != nil || ro.ID() != s.ID() {
		t.Fatalf("read-only serde: id %d (%v)", ro.ID(), err)
	}
	// Swap the read-only serde onto the unreachable registry: its own id
	// still decodes, another id is retryable.
	ro.cl = down
	if _, err := ro.Decode(own); err != nil {
		t.Fatalf("decoding its own schema id without the registry: %v", err)
	}
	_, err = ro.Decode(append(AppendHeader(nil, s.ID()+1000), own[5:]...))
	if !errors.Is(err, ErrRegistryUnavailable) || !IsRetryable(err) || !errors.Is(err, pipeline.ErrRetryable) {
		t.Fatalf("unknown id with the registry down: %v", err)
	}
	// What the engine does with it: a retryable decode error fails the task
	// rather than dead-lettering the record; a corrupt record does not.
	wrapped := fmt.Errorf("decoding record from t/0@1: %w", err)
	if !errors.Is(wrapped, pipeline.ErrRetryable) {
		t.Fatal("wrapped registry error does not match pipeline.ErrRetryable")
	}
	if _, err := ro.Decode([]byte{1, 2, 3, 4, 5}); errors.Is(err, pipeline.ErrRetryable) {
		t.Fatalf("a corrupt record matches pipeline.ErrRetryable: %v", err)
	}
}

func TestReadOnlyUnregistered(t *testing.T) {
	cl := newRegistry(t)
	ctx := context.Background()
	ro, err := NewSerde[PortfolioMetric](ctx, cl, PortfolioMetricSpec.Subject, PortfolioMetricSchema, ReadOnly())
	if err != nil || ro.ID() != -1 {
		t.Fatalf("read-only serde of an unregistered schema: id %d (%v)", ro.ID(), err)
	}
	if _, err := ro.Encode(nil, samplePortfolioMetric()); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("encoding: %v", err)
	}
	w, err := PortfolioMetricSpec.NewSerde(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := w.Encode(nil, samplePortfolioMetric())
	got, err := ro.Decode(b)
	if err != nil || !reflect.DeepEqual(got, samplePortfolioMetric()) {
		t.Fatalf("read-only decode: %v", err)
	}
}

// sampleChangeMap is a change record of the loans table as the CDC reader
// would build it.
func sampleChangeMap() map[string]any {
	lsn, tx, ts := int64(0x16B3748), int64(771), int64(1767225600123)
	return map[string]any{
		"before": nil,
		"after": map[string]any{
			"id":         "loan-1",
			"lender_id":  "lender-7",
			"balance":    big.NewRat(190000, 100),
			"principal":  MustParseDecimal("2499.99"), // Decimal is accepted on encode
			"status":     "ACTIVE",
			"updated_at": time.UnixMilli(ts).UTC(),
			"note":       nil,
		},
		"source": map[string]any{
			"version": "0.1.0", "connector": "postgresql", "name": "cdc", "ts_ms": ts,
			"snapshot": "false", "db": "loanflow", "sequence": nil, "schema": "public", "table": "loans",
			"txId": tx, "lsn": lsn, "xmin": nil,
		},
		"op":    OpCreate,
		"ts_ms": ts + 5,
	}
}

// TestDynamicMapPath: the CDC reader's path, with a schema built at run
// time, map values, *big.Rat decimals and the envelope builder.
func TestDynamicMapPath(t *testing.T) {
	cl := newRegistry(t)
	ctx := context.Background()
	topic := "cdc.public.loans"
	env, err := CDCEnvelopeSchema(topic, loanColumns())
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSerde[map[string]any](ctx, cl, ValueSubject(topic), env.String())
	if err != nil {
		t.Fatal(err)
	}
	change := sampleChangeMap()
	after := change["after"].(map[string]any)
	lsn := change["source"].(map[string]any)["lsn"].(int64)
	b, err := s.Encode(nil, change)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	a := got["after"].(map[string]any)
	if r := a["balance"].(*big.Rat); r.Cmp(big.NewRat(1900, 1)) != 0 {
		t.Fatalf("balance %v", r)
	}
	if d, err := DecimalFromRat(a["principal"].(*big.Rat), 2); err != nil || d.String() != "2499.99" {
		t.Fatalf("principal %v (%v)", a["principal"], err)
	}
	if got["op"] != "c" || got["before"] != nil || got["source"].(map[string]any)["lsn"] != lsn {
		t.Fatalf("decoded %v", got)
	}

	// A typed consumer reads the same record as Change[R], with R holding
	// only the columns it needs.
	type loanRow struct {
		ID      string  `avro:"id"`
		Balance Decimal `avro:"balance"`
		Status  string  `avro:"status"`
	}
	reader, err := CDCEnvelopeSchema(topic, loanColumnsSubset())
	if err != nil {
		t.Fatal(err)
	}
	typed, err := NewSerde[Change[loanRow]](ctx, cl, ValueSubject(topic), reader.String(), ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	c, err := typed.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if c.Op != OpCreate || c.Before != nil || *c.After != (loanRow{"loan-1", MustParseDecimal("1900.00"), "ACTIVE"}) || *c.Source.LSN != lsn {
		t.Fatalf("typed change %+v after %+v", c, c.After)
	}

	// A schema change (new nullable column) registers a new version.
	cols := append(loanColumns(), nullable("days_past_due", intType()))
	env2, err := CDCEnvelopeSchema(topic, cols)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := NewSerde[map[string]any](ctx, cl, ValueSubject(topic), env2.String())
	if err != nil || s2.ID() == s.ID() {
		t.Fatalf("new column: id %d vs %d (%v)", s2.ID(), s.ID(), err)
	}
	vs, err := cl.SR().SubjectVersions(ctx, ValueSubject(topic))
	if err != nil || len(vs) != 2 {
		t.Fatalf("versions %v (%v)", vs, err)
	}
	// And the old typed reader still reads the new version's records.
	after["days_past_due"] = int32(3)
	b2, err := s2.Encode(nil, change)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := typed.Decode(b2); err != nil || c.After.ID != "loan-1" {
		t.Fatalf("old typed reader of a new version: %+v (%v)", c, err)
	}
}

// TestCorruptLengthsAllocateLittle: records claiming enormous string,
// bytes and array lengths fail without allocating what they claim.
func TestCorruptLengthsAllocateLittle(t *testing.T) {
	s := localSerde[LoanDecision](t, LoanDecisionSchema, 1)
	good, err := s.Encode(nil, sampleLoanDecision())
	if err != nil {
		t.Fatal(err)
	}
	huge := []byte{0xfe, 0xff, 0xff, 0xff, 0x0f} // zig-zag varint 2^31-1
	cases := map[string][]byte{
		// application_id claims a 2 GiB string.
		"string": append(AppendHeader(nil, 1), huge...),
		// reason_codes claims 2^31-1 items: keep the fields before it.
		"array": append(append([]byte(nil), good[:arrayStart(t, good)]...), huge...),
	}
	for name, rec := range cases {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := s.Decode(rec)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("%s: decoded", name)
		}
		t.Logf("%s: %v", name, err)
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Errorf("%s: decoding a %d-byte record allocated %d bytes (%v)", name, len(rec), n, err)
		}
	}
}

// arrayStart returns the offset of reason_codes' block count in a
// LoanDecision record: after application_id, lender_id, customer_id
// (union) and decision (enum).
func arrayStart(t *testing.T, b []byte) int {
	t.Helper()
	i := HeaderBytes
	str := func() { n := int(b[i]) >> 1; i += 1 + n }
	str()    // application_id
	str()    // lender_id
	i++      // union index (1: string)
	str()    // customer_id
	i++      // decision enum index
	return i // reason_codes block count
}

// TestWriterSchemaDecoder: a consumer without a reader schema decodes CDC
// keys and envelopes of any version with their own writer schemas.
func TestWriterSchemaDecoder(t *testing.T) {
	cl := newRegistry(t)
	ctx := context.Background()
	topic := "cdc.public.credit_profiles"
	key, err := CDCKeySchema(topic, []avro.SchemaField{column("customer_id", stringType())})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewSerde[map[string]any](ctx, cl, KeySubject(topic), key.String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ks.Encode(nil, map[string]any{"customer_id": "cust-9"})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := NewWriterSchemaDecoder[map[string]any](cl, KeySubject(topic))
	if err != nil {
		t.Fatal(err)
	}
	got, err := dec.Decode(b)
	if err != nil || got["customer_id"] != "cust-9" {
		t.Fatalf("key %v (%v)", got, err)
	}
	if _, err := dec.Encode(nil, got); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("encoding with a writer-schema decoder: %v", err)
	}
	if _, err := dec.Decode(append(AppendHeader(nil, 9999), b[5:]...)); !errors.Is(err, ErrUnknownSchemaID) {
		t.Fatalf("unknown id: %v", err)
	}
}

package schemas

import (
	"io/fs"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/avro"
)

func ptr[T any](v T) *T { return &v }

var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535_000_000, time.UTC)

func sampleLoanApplication() LoanApplication {
	return LoanApplication{
		ApplicationID:    "5b1f0c1e-7d7a-4d8e-9a51-2d2f3c0b9e11",
		POSTerminalID:    "pos-0042",
		LenderID:         "lender-7",
		CustomerID:       ptr("cust-1001"),
		Amount:           MustParseDecimal("2499.99"),
		Currency:         "USD",
		EventTime:        t0,
		ApplicantDetails: []byte("\x01\x02\x03ciphertext-of-pii\xff"),
		SSNIndex:         []byte("0123456789abcdef0123456789abcdef"),
	}
}

func sampleCustomer360() Customer360 {
	return Customer360{
		CustomerID:     "cust-1001",
		Status:         "ACTIVE",
		RiskTier:       "LOW",
		Score:          742,
		CreditLimit:    MustParseDecimal("15000.00"),
		CurrentBalance: MustParseDecimal("-12.34"),
		Delinquent:     true,
		Version:        17,
		UpdatedAt:      t0,
		SourceLSN:      ptr(int64(0x16B3748)),
	}
}

func sampleLoanDecision() LoanDecision {
	return LoanDecision{
		ApplicationID:      "5b1f0c1e-7d7a-4d8e-9a51-2d2f3c0b9e11",
		LenderID:           "lender-7",
		CustomerID:         ptr("cust-1001"),
		Decision:           DecisionDeclined,
		ReasonCodes:        []string{"SCORE_BELOW_MIN", "LIMIT_EXCEEDED"},
		Score:              512,
		Amount:             MustParseDecimal("2499.99"),
		Currency:           "USD",
		AvailableCredit:    MustParseDecimal("1000.50"),
		Basis:              BasisCustomer360,
		Customer360Version: ptr(int64(17)),
		BureauResponseID:   ptr("bureau-resp-9"),
		EventTime:          t0,
		DecidedAt:          t0.Add(42 * time.Millisecond),
		EngineLatencyMs:    42,
	}
}

func sampleLoanUpdatedEvent() LoanUpdatedEvent {
	return LoanUpdatedEvent{
		LoanID:        "loan-77",
		ApplicationID: ptr("5b1f0c1e-7d7a-4d8e-9a51-2d2f3c0b9e11"),
		CustomerID:    "cust-1001",
		LenderID:      "lender-7",
		Change:        LoanUpdated,
		OldStatus:     ptr("ACTIVE"),
		NewStatus:     ptr("DELINQUENT"),
		Amount:        MustParseDecimal("2499.99"),
		Currency:      "USD",
		OldBalance:    ptr(MustParseDecimal("2000.00")),
		Balance:       MustParseDecimal("1900.00"),
		DaysPastDue:   31,
		EventTime:     t0,
		SourceLSN:     0x16B3748,
	}
}

func samplePortfolioMetric() PortfolioMetric {
	return PortfolioMetric{
		LenderID:           "lender-7",
		WindowStart:        t0.Truncate(time.Minute),
		WindowEnd:          t0.Truncate(time.Minute).Add(time.Minute),
		Currency:           "USD",
		Originations:       12,
		OriginatedAmount:   MustParseDecimal("31000.00"),
		Approvals:          12,
		Declines:           3,
		Refers:             1,
		ActiveLoans:        900,
		OutstandingBalance: MustParseDecimal("1234567.89"),
		DelinquentBalance:  MustParseDecimal("23456.78"),
		DelinquencyRate:    0.019,
		DefaultRate:        0.001,
		ComputedAt:         t0,
	}
}

// record pairs a Go type with its schema for table-driven tests.
type record struct {
	name   string
	schema string
	file   string
	value  any // a pointer to a fully populated sample
	empty  any // a pointer to a sample with optional fields unset
	newPtr func() any
}

func records() []record {
	la, la0 := sampleLoanApplication(), sampleLoanApplication()
	la0.CustomerID = nil
	c, c0 := sampleCustomer360(), sampleCustomer360()
	c0.SourceLSN = nil
	d, d0 := sampleLoanDecision(), sampleLoanDecision()
	d0.CustomerID, d0.Customer360Version, d0.BureauResponseID, d0.ReasonCodes = nil, nil, nil, []string{}
	u, u0 := sampleLoanUpdatedEvent(), sampleLoanUpdatedEvent()
	u0.ApplicationID, u0.OldStatus, u0.NewStatus, u0.OldBalance = nil, nil, nil, nil
	p := samplePortfolioMetric()
	return []record{
		{"LoanApplication", LoanApplicationSchema, "loan_application.avsc", &la, &la0, func() any { return new(LoanApplication) }},
		{"Customer360", Customer360Schema, "customer_360.avsc", &c, &c0, func() any { return new(Customer360) }},
		{"LoanDecision", LoanDecisionSchema, "loan_decision.avsc", &d, &d0, func() any { return new(LoanDecision) }},
		{"LoanUpdatedEvent", LoanUpdatedEventSchema, "loan_updated_event.avsc", &u, &u0, func() any { return new(LoanUpdatedEvent) }},
		{"PortfolioMetric", PortfolioMetricSchema, "portfolio_metric.avsc", &p, &p, func() any { return new(PortfolioMetric) }},
	}
}

// TestGoTypesMatchSchemas checks every Go record type against its .avsc:
// every schema field has a Go field of a compatible type, every tagged Go
// field is in the schema, and a fully populated value (and one with its
// optional fields unset) survives an encode/decode round trip unchanged.
func TestGoTypesMatchSchemas(t *testing.T) {
	for _, r := range records() {
		t.Run(r.name, func(t *testing.T) {
			s, err := avro.Parse(r.schema, decimalCustomType)
			if err != nil {
				t.Fatalf("parsing %s: %v", r.file, err)
			}
			if s.Root().Name != r.name {
				t.Errorf("record name %q, want %q", s.Root().Name, r.name)
			}
			checkStruct(t, r.name, reflect.TypeOf(r.value).Elem(), s.Root())
			for _, v := range []any{r.value, r.empty} {
				b, err := s.Encode(v)
				if err != nil {
					t.Fatalf("encoding %+v: %v", v, err)
				}
				out := r.newPtr()
				rest, err := s.Decode(b, out)
				if err != nil || len(rest) != 0 {
					t.Fatalf("decoding: %v (%d bytes left)", err, len(rest))
				}
				if !reflect.DeepEqual(out, v) {
					t.Errorf("round trip:\n got %+v\nwant %+v", out, v)
				}
			}
		})
	}
}

func TestCDCSourceMatchesSchema(t *testing.T) {
	s := avro.MustParse(CDCSourceSchema)
	checkStruct(t, "Source", reflect.TypeFor[CDCSource](), s.Root())
}

// TestEveryAvscIsTested makes sure a new .avsc file gets a Go type.
func TestEveryAvscIsTested(t *testing.T) {
	known := []string{"cdc_envelope.avsc", "cdc_source.avsc"}
	for _, r := range records() {
		known = append(known, r.file)
	}
	files, err := fs.Glob(Files(), "*.avsc")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !slices.Contains(known, f) {
			t.Errorf("%s has no Go type in records()", f)
		}
		b, _ := fs.ReadFile(Files(), f)
		if _, err := avro.Parse(string(b)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestEnumSymbolsMatchGoConstants(t *testing.T) {
	root := avro.MustParse(LoanDecisionSchema).Root()
	want := map[string][]string{
		"decision": {string(DecisionApproved), string(DecisionDeclined), string(DecisionRefer)},
		"basis":    {string(BasisCustomer360), string(BasisCreditBureau), string(BasisFallback)},
	}
	for _, f := range root.Fields {
		if w, ok := want[f.Name]; ok && !slices.Equal(f.Type.Symbols, w) {
			t.Errorf("%s symbols %v, Go constants %v", f.Name, f.Type.Symbols, w)
		}
	}
	ev := avro.MustParse(LoanUpdatedEventSchema).Root()
	for _, f := range ev.Fields {
		if f.Name == "change" && !slices.Equal(f.Type.Symbols, []string{string(LoanCreated), string(LoanUpdated), string(LoanDeleted)}) {
			t.Errorf("change symbols %v", f.Type.Symbols)
		}
	}
}

func TestEveryFieldDocumented(t *testing.T) {
	files, _ := fs.Glob(Files(), "*.avsc")
	for _, f := range files {
		b, _ := fs.ReadFile(Files(), f)
		root := avro.MustParse(string(b)).Root()
		if root.Doc == "" {
			t.Errorf("%s: record %s has no doc", f, root.Name)
		}
		for _, fl := range root.Fields {
			if fl.Doc == "" {
				t.Errorf("%s: field %s has no doc", f, fl.Name)
			}
		}
	}
}

func avroFieldName(f reflect.StructField) string {
	tag := f.Tag.Get("avro")
	name, _, _ := strings.Cut(tag, ",")
	return name
}

// checkStruct checks that struct type st and record node rec have the same
// fields with compatible types.
func checkStruct(t *testing.T, path string, st reflect.Type, rec *avro.SchemaNode) {
	t.Helper()
	if st.Kind() != reflect.Struct || rec.Type != "record" {
		t.Errorf("%s: Go %v vs Avro %s", path, st, rec.Type)
		return
	}
	goFields := map[string]reflect.StructField{}
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		name := avroFieldName(f)
		if name == "" || name == "-" {
			t.Errorf("%s.%s: Go field has no avro tag", path, f.Name)
			continue
		}
		goFields[name] = f
	}
	for _, af := range rec.Fields {
		gf, ok := goFields[af.Name]
		if !ok {
			t.Errorf("%s.%s: schema field has no Go field", path, af.Name)
			continue
		}
		delete(goFields, af.Name)
		checkType(t, path+"."+af.Name, gf.Type, &af.Type)
	}
	for name := range goFields {
		t.Errorf("%s.%s: Go field is not in the schema", path, name)
	}
}

func checkType(t *testing.T, path string, gt reflect.Type, n *avro.SchemaNode) {
	t.Helper()
	if n.Type == "union" {
		if len(n.Branches) != 2 || n.Branches[0].Type != "null" {
			t.Errorf("%s: only [\"null\", T] unions are used, got %d branches", path, len(n.Branches))
			return
		}
		if gt.Kind() != reflect.Pointer {
			t.Errorf("%s: optional field needs a pointer, Go type is %v", path, gt)
			return
		}
		checkType(t, path, gt.Elem(), &n.Branches[1])
		return
	}
	ok := false
	switch {
	case n.LogicalType == "decimal":
		ok = gt == reflect.TypeFor[Decimal]()
	case n.LogicalType == "timestamp-millis":
		ok = gt == reflect.TypeFor[time.Time]()
	case n.Type == "string", n.Type == "enum":
		ok = gt.Kind() == reflect.String
	case n.Type == "bytes":
		ok = gt == reflect.TypeFor[[]byte]()
	case n.Type == "long":
		ok = gt.Kind() == reflect.Int64
	case n.Type == "int":
		ok = gt.Kind() == reflect.Int32
	case n.Type == "boolean":
		ok = gt.Kind() == reflect.Bool
	case n.Type == "double":
		ok = gt.Kind() == reflect.Float64
	case n.Type == "array":
		if ok = gt.Kind() == reflect.Slice; ok {
			checkType(t, path+"[]", gt.Elem(), n.Items)
		}
	case n.Type == "record":
		checkStruct(t, path, gt, n)
		return
	}
	if !ok {
		t.Errorf("%s: Go type %v does not match Avro %s (logical %q)", path, gt, n.Type, n.LogicalType)
	}
}

package schemas

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/twmb/avro"
)

func stringType() avro.SchemaNode { return avro.SchemaNode{Type: "string"} }
func intType() avro.SchemaNode    { return avro.SchemaNode{Type: "int"} }
func money() avro.SchemaNode {
	return avro.SchemaNode{Type: "bytes", LogicalType: "decimal", Precision: 18, Scale: 2}
}

func column(name string, t avro.SchemaNode) avro.SchemaField {
	return avro.SchemaField{Name: name, Type: t}
}

func nullable(name string, t avro.SchemaNode) avro.SchemaField {
	return avro.SchemaField{
		Name:       name,
		Type:       avro.SchemaNode{Type: "union", Branches: []avro.SchemaNode{{Type: "null"}, t}},
		HasDefault: true,
	}
}

// loanColumns is how the CDC reader would describe a loans table.
func loanColumns() []avro.SchemaField {
	return []avro.SchemaField{
		column("id", stringType()),
		column("lender_id", stringType()),
		column("balance", money()),
		column("principal", money()),
		column("status", stringType()),
		column("updated_at", avro.SchemaNode{Type: "long", LogicalType: "timestamp-millis"}),
		nullable("note", stringType()),
	}
}

func loanColumnsSubset() []avro.SchemaField {
	return []avro.SchemaField{column("id", stringType()), column("balance", money()), column("status", stringType())}
}

// TestGenericEnvelopeIsTheFile: the builder with no columns gives exactly
// cdc_envelope.avsc, so the file and the code cannot drift.
func TestGenericEnvelopeIsTheFile(t *testing.T) {
	built, err := CDCEnvelopeSchema("cdc.schema.table", nil)
	if err != nil {
		t.Fatal(err)
	}
	file := avro.MustParse(CDCEnvelopeGenericSchema)
	if !bytes.Equal(built.Canonical(), file.Canonical()) {
		t.Fatalf("built %s\nfile  %s", built.Canonical(), file.Canonical())
	}
	if !reflect.DeepEqual(built.Root().Fields[2].Type, file.Root().Fields[2].Type) {
		t.Fatal("source block differs from cdc_source.avsc")
	}
	src := avro.MustParse(CDCSourceSchema)
	if !bytes.Equal(avroOf(t, &file.Root().Fields[2].Type).Canonical(), src.Canonical()) {
		t.Fatal("the envelope's source is not cdc_source.avsc")
	}
}

func avroOf(t *testing.T, n *avro.SchemaNode) *avro.Schema {
	t.Helper()
	s, err := n.Schema()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEnvelopeOfATable(t *testing.T) {
	env, err := CDCEnvelopeSchema("cdc.public.loan-events", loanColumns())
	if err != nil {
		t.Fatal(err)
	}
	root := env.Root()
	if root.Name != "Envelope" || root.Namespace != "cdc.public.loan_events" {
		t.Fatalf("envelope name %s.%s", root.Namespace, root.Name)
	}
	row := root.Fields[0].Type.Branches[1]
	if row.Name != "Value" || len(row.Fields) != len(loanColumns()) || row.Fields[2].Type.LogicalType != "decimal" {
		t.Fatalf("row %+v", row)
	}
	if root.Fields[1].Type.Branches[1].Type != "cdc.public.loan_events.Value" {
		t.Fatalf("after does not reference the row: %+v", root.Fields[1].Type.Branches[1])
	}
	for _, f := range root.Fields {
		if f.Doc == "" {
			t.Errorf("field %s lost its doc", f.Name)
		}
	}
	// Building twice gives the same text, so re-registering after a
	// restart is the same schema and id.
	again, _ := CDCEnvelopeSchema("cdc.public.loan-events", loanColumns())
	if env.String() != again.String() {
		t.Fatal("envelope text is not deterministic")
	}

	key, err := CDCKeySchema("cdc.public.loans", []avro.SchemaField{column("id", stringType())})
	if err != nil {
		t.Fatal(err)
	}
	if k := key.Root(); k.Name != "Key" || k.Namespace != "cdc.public.loans" || len(k.Fields) != 1 {
		t.Fatalf("key %+v", k)
	}
	if _, err := CDCKeySchema("cdc.public.loans", nil); err == nil || !strings.Contains(err.Error(), "primary key") {
		t.Fatalf("key without columns: %v", err)
	}
	if _, err := CDCEnvelopeSchema("", nil); err == nil {
		t.Fatal("empty topic accepted")
	}
	if _, err := CDCEnvelopeSchema("cdc.public.t", []avro.SchemaField{column("x", avro.SchemaNode{Type: "nope"})}); err == nil {
		t.Fatal("invalid column type accepted")
	}
}

func TestSanitizeName(t *testing.T) {
	for in, want := range map[string]string{
		"loans": "loans", "loan-events": "loan_events", "1st": "_1st", "": "_", "a.b": "a_b", "Über": "__ber",
	} {
		if got := SanitizeName(in); got != want {
			t.Errorf("SanitizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

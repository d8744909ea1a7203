package jobs

import (
	"strings"
	"testing"

	"github.com/twmb/avro"

	"github.com/loanflow/loanflow/schemas"
)

// TestAvroStringKeys: the codec writes exactly the Confluent-framed Avro
// string an Avro library writes, and reads it back.
func TestAvroStringKeys(t *testing.T) {
	keys := AvroStringKeysWithID(42)
	str := avro.MustParse(`"string"`)
	for _, id := range []string{"", "c1", "customer-ü-" + strings.Repeat("x", 300)} {
		want, err := str.AppendEncode(schemas.AppendHeader(nil, 42), id)
		if err != nil {
			t.Fatal(err)
		}
		got := keys.EncodeKey(id)
		if got != string(want) {
			t.Fatalf("EncodeKey(%q) = %x, want %x", id, got, want)
		}
		back, err := keys.DecodeKey(got)
		if err != nil || back != id {
			t.Fatalf("DecodeKey = %q, %v", back, err)
		}
	}
	if keys.ID() != 42 {
		t.Fatalf("ID = %d", keys.ID())
	}
	for _, bad := range []string{"", "x", "\x00\x00\x00\x00\x2a", "\x00\x00\x00\x00\x2a\x06ab", "\x01\x00\x00\x00\x2a\x02a"} {
		if _, err := keys.DecodeKey(bad); err == nil {
			t.Errorf("DecodeKey(%x) accepted", bad)
		}
	}
}

package schemas

import (
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"testing"

	"github.com/twmb/avro"
)

func TestParseDecimal(t *testing.T) {
	for _, c := range []struct {
		in, out  string
		unscaled int64
		scale    int
	}{
		{"0", "0", 0, 0},
		{"1234.50", "1234.50", 123450, 2},
		{"-0.05", "-0.05", -5, 2},
		{"+7", "7", 7, 0},
		{".5", "0.5", 5, 1},
		{"5.", "5", 5, 0},
		{"-9223372036854775.80", "-9223372036854775.80", -922337203685477580, 2},
		{"0.000000000000000001", "0.000000000000000001", 1, 18},
	} {
		d, err := ParseDecimal(c.in)
		if err != nil || d.String() != c.out || d.Unscaled() != c.unscaled || d.Scale() != c.scale {
			t.Errorf("ParseDecimal(%q) = %s (%d, %d) %v", c.in, d, d.Unscaled(), d.Scale(), err)
		}
	}
	for _, bad := range []string{"", "-", ".", "1e3", "1,5", "NaN", "Inf", "0x10", "1.2.3", "--1", "99999999999999999999", "0.0000000000000000001", " 1"} {
		if _, err := ParseDecimal(bad); !errors.Is(err, ErrDecimal) {
			t.Errorf("ParseDecimal(%q): %v, want ErrDecimal", bad, err)
		}
	}
}

func TestDecimalArithmetic(t *testing.T) {
	a, b := MustParseDecimal("10.5"), MustParseDecimal("0.25")
	if s, _ := a.Add(b); s.String() != "10.75" {
		t.Errorf("add: %s", s)
	}
	if s, _ := b.Sub(a); s.String() != "-10.25" {
		t.Errorf("sub: %s", s)
	}
	if !MustParseDecimal("1.5").Equal(MustParseDecimal("1.50")) || a.Cmp(b) != 1 || b.Cmp(a) != -1 {
		t.Error("compare")
	}
	if _, err := NewDecimal(math.MaxInt64, 0).Add(NewDecimal(1, 0)); !errors.Is(err, ErrDecimal) {
		t.Errorf("overflow: %v", err)
	}
	if _, err := MustParseDecimal("1.005").Rescale(2); !errors.Is(err, ErrDecimal) {
		t.Errorf("rounding rescale: %v", err)
	}
	if r, err := MustParseDecimal("1.500").Rescale(1); err != nil || r.String() != "1.5" {
		t.Errorf("exact rescale: %s %v", r, err)
	}
	if d, err := DecimalFromRat(big.NewRat(1, 3), 2); err == nil {
		t.Errorf("1/3 at scale 2: %s", d)
	}
	if d, err := DecimalFromRat(big.NewRat(-7, 4), 2); err != nil || d.String() != "-1.75" {
		t.Errorf("-7/4: %s %v", d, err)
	}
	if f := MustParseDecimal("0.25").Float64(); f != 0.25 {
		t.Errorf("float %v", f)
	}
	var j struct {
		A Decimal `json:"a"`
	}
	if err := json.Unmarshal([]byte(`{"a":"12.30"}`), &j); err != nil || j.A.String() != "12.30" {
		t.Fatalf("json: %v %v", j, err)
	}
	if b, _ := json.Marshal(j); string(b) != `{"a":"12.30"}` {
		t.Fatalf("json out %s", b)
	}
}

// TestDecimalWire checks the two's-complement encoding against big.Int for
// edge values, through both the typed and the dynamic paths.
func TestDecimalWire(t *testing.T) {
	typed := avro.MustParse(`{"type":"bytes","logicalType":"decimal","precision":19,"scale":2}`, decimalCustomType)
	dynOpts := schemaOptsFor[map[string]any]()
	dyn := avro.MustParse(`{"type":"bytes","logicalType":"decimal","precision":40,"scale":2}`, dynOpts...)
	for _, u := range []int64{0, 1, -1, 127, 128, -128, -129, 255, 256, 32767, -32768, math.MaxInt64, math.MinInt64, 1 << 40, -(1 << 40)} {
		d := NewDecimal(u, 2)
		b, err := typed.Encode(d)
		if err != nil {
			t.Fatalf("%d: %v", u, err)
		}
		var got Decimal
		if _, err := typed.Decode(b, &got); err != nil || got != d {
			t.Fatalf("%d: got %s (%v)", u, got, err)
		}
		var r any
		if _, err := dyn.Decode(b, &r); err != nil || r.(*big.Rat).Cmp(d.Rat()) != 0 {
			t.Fatalf("%d dynamic: %v (%v)", u, r, err)
		}
	}
	// Values beyond int64 round-trip on the dynamic path.
	huge, _ := new(big.Rat).SetString("-123456789012345678901234567890.25")
	b, err := dyn.Encode(huge)
	if err != nil {
		t.Fatal(err)
	}
	var r any
	if _, err := dyn.Decode(b, &r); err != nil || r.(*big.Rat).Cmp(huge) != 0 {
		t.Fatalf("huge: %v (%v)", r, err)
	}
	// ...and are a clear error on the typed path.
	if _, err := typed.Decode(b, new(Decimal)); err == nil {
		t.Fatal("a 13-byte unscaled value decoded into a Decimal")
	}
	for _, v := range []any{0.1, "1e5", "1/3", "12.345"} {
		if _, err := dyn.Encode(v); err == nil {
			t.Errorf("encoding %v as decimal(40,2) succeeded", v)
		}
	}
	if b, err := dyn.Encode("12.30"); err != nil || string(b) != "\x04\x04\xce" { // length 2, 1230
		t.Errorf("decimal string: % x %v", b, err)
	}
}

// TestRatFastPathMatchesGeneral: the int64 fast path of *big.Rat encoding
// gives the same bytes (or the same refusal) as the big.Int path.
func TestRatFastPathMatchesGeneral(t *testing.T) {
	n := &avro.SchemaNode{Type: "bytes", LogicalType: "decimal", Precision: 18, Scale: 2}
	for _, s := range []string{"0", "1900", "2499.99", "-0.01", "0.5", "1/3", "7/8", "-92233720368547758.07", "92233720368547758.08", "1234567890123456.78", "12345678901234567.8"} {
		r, ok := new(big.Rat).SetString(s)
		if !ok {
			t.Fatal(s)
		}
		fast, fastErr := ratBytes(r, n)
		// The general path alone: a rational the fast path cannot take.
		num := new(big.Int).Mul(r.Num(), big.NewInt(100))
		u, rem := new(big.Int).QuoRem(num, r.Denom(), new(big.Int))
		generalOK := rem.Sign() == 0 && len(new(big.Int).Abs(u).String()) <= 18
		if (fastErr == nil) != generalOK {
			t.Errorf("%s: fast path err %v, general ok %v", s, fastErr, generalOK)
			continue
		}
		if generalOK && string(fast) != string(bigTwosComplement(u)) {
			t.Errorf("%s: fast % x, general % x", s, fast, bigTwosComplement(u))
		}
	}
}

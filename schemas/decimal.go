package schemas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	"github.com/twmb/avro"
)

// MaxDecimalScale is the largest scale a Decimal carries (18 digits after
// the point, the most an int64 unscaled value can hold).
const MaxDecimalScale = 18

// ErrDecimal is the sentinel of every Decimal parse, range and rounding
// error.
var ErrDecimal = errors.New("schemas: invalid decimal")

// Decimal is an exact decimal number, Unscaled × 10^-Scale, for money. It is
// what the typed records use for Avro decimal fields; it never rounds: a
// value that does not fit the schema's scale or precision is an encode
// error, not a silently different amount.
//
// The zero value is 0. Decimals compare by value (Cmp, Equal), so 1.5 and
// 1.50 are equal although their scales differ. JSON and text forms are the
// plain decimal string ("1234.50"), never a float.
type Decimal struct {
	unscaled int64
	scale    int8
}

var pow10Table = func() [MaxDecimalScale + 1]int64 {
	var t [MaxDecimalScale + 1]int64
	t[0] = 1
	for i := 1; i < len(t); i++ {
		t[i] = t[i-1] * 10
	}
	return t
}()

// NewDecimal returns unscaled × 10^-scale; it panics if scale is outside
// [0, MaxDecimalScale] (a programming error).
func NewDecimal(unscaled int64, scale int) Decimal {
	if scale < 0 || scale > MaxDecimalScale {
		panic(fmt.Sprintf("schemas: decimal scale %d out of range [0,%d]", scale, MaxDecimalScale))
	}
	return Decimal{unscaled: unscaled, scale: int8(scale)}
}

// ParseDecimal parses a plain decimal string such as "1234.50", "-0.5" or
// "100". Exponents, "NaN" and "Inf" are rejected; the scale is the number of
// digits after the point.
func ParseDecimal(s string) (Decimal, error) {
	orig := s
	if len(s) > 40 {
		return Decimal{}, fmt.Errorf("%w: %q is too long", ErrDecimal, orig[:40]+"...")
	}
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	intPart, frac, _ := strings.Cut(s, ".")
	if intPart == "" && frac == "" {
		return Decimal{}, fmt.Errorf("%w: %q is not a decimal number", ErrDecimal, orig)
	}
	if len(frac) > MaxDecimalScale {
		return Decimal{}, fmt.Errorf("%w: %q has more than %d digits after the point", ErrDecimal, orig, MaxDecimalScale)
	}
	var u uint64
	for _, part := range [2]string{intPart, frac} {
		for i := 0; i < len(part); i++ {
			c := part[i]
			if c < '0' || c > '9' {
				return Decimal{}, fmt.Errorf("%w: %q is not a decimal number", ErrDecimal, orig)
			}
			if u > (math.MaxInt64-9)/10 {
				return Decimal{}, fmt.Errorf("%w: %q is out of range", ErrDecimal, orig)
			}
			u = u*10 + uint64(c-'0')
		}
	}
	v := int64(u)
	if neg {
		v = -v
	}
	return Decimal{unscaled: v, scale: int8(len(frac))}, nil
}

// MustParseDecimal is ParseDecimal for constants; it panics on error.
func MustParseDecimal(s string) Decimal {
	d, err := ParseDecimal(s)
	if err != nil {
		panic(err)
	}
	return d
}

// Unscaled returns the unscaled integer value.
func (d Decimal) Unscaled() int64 { return d.unscaled }

// Scale returns the number of digits after the point.
func (d Decimal) Scale() int { return int(d.scale) }

// Sign returns -1, 0 or +1.
func (d Decimal) Sign() int {
	switch {
	case d.unscaled < 0:
		return -1
	case d.unscaled > 0:
		return 1
	}
	return 0
}

// IsZero reports whether d is 0 at any scale.
func (d Decimal) IsZero() bool { return d.unscaled == 0 }

// String formats d with exactly Scale digits after the point.
func (d Decimal) String() string {
	return string(d.AppendText(nil))
}

// AppendText appends the String form of d to b.
func (d Decimal) AppendText(b []byte) []byte {
	u := uint64(d.unscaled)
	if d.unscaled < 0 {
		b = append(b, '-')
		u = -u
	}
	var buf [24]byte
	digits := strconv.AppendUint(buf[:0], u, 10)
	scale := int(d.scale)
	if scale == 0 {
		return append(b, digits...)
	}
	if len(digits) <= scale {
		b = append(b, '0', '.')
		for i := len(digits); i < scale; i++ {
			b = append(b, '0')
		}
		return append(b, digits...)
	}
	b = append(b, digits[:len(digits)-scale]...)
	b = append(b, '.')
	return append(b, digits[len(digits)-scale:]...)
}

// MarshalText implements encoding.TextMarshaler (JSON strings, never floats).
func (d Decimal) MarshalText() ([]byte, error) { return d.AppendText(nil), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseDecimal.
func (d *Decimal) UnmarshalText(b []byte) error {
	v, err := ParseDecimal(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Rescale returns d with the given scale, exactly: growing the scale
// multiplies the unscaled value, shrinking it is allowed only when the
// dropped digits are zero. Rounding is an error, as is overflow.
func (d Decimal) Rescale(scale int) (Decimal, error) {
	if scale < 0 || scale > MaxDecimalScale {
		return Decimal{}, fmt.Errorf("%w: scale %d out of range [0,%d]", ErrDecimal, scale, MaxDecimalScale)
	}
	diff := scale - int(d.scale)
	switch {
	case diff == 0:
		return d, nil
	case diff > 0:
		m := pow10Table[diff]
		if d.unscaled > math.MaxInt64/m || d.unscaled < math.MinInt64/m {
			return Decimal{}, fmt.Errorf("%w: %s overflows at scale %d", ErrDecimal, d, scale)
		}
		return Decimal{unscaled: d.unscaled * m, scale: int8(scale)}, nil
	default:
		m := pow10Table[-diff]
		if d.unscaled%m != 0 {
			return Decimal{}, fmt.Errorf("%w: %s cannot be represented at scale %d without rounding", ErrDecimal, d, scale)
		}
		return Decimal{unscaled: d.unscaled / m, scale: int8(scale)}, nil
	}
}

// align brings a and b to the larger of their scales.
func align(a, b Decimal) (Decimal, Decimal, error) {
	s := max(a.scale, b.scale)
	a, err := a.Rescale(int(s))
	if err != nil {
		return a, b, err
	}
	b, err = b.Rescale(int(s))
	return a, b, err
}

// Add returns d + o at the larger of the two scales, or an error on
// overflow.
func (d Decimal) Add(o Decimal) (Decimal, error) {
	a, b, err := align(d, o)
	if err != nil {
		return Decimal{}, err
	}
	s := a.unscaled + b.unscaled
	if (s > a.unscaled) != (b.unscaled > 0) {
		return Decimal{}, fmt.Errorf("%w: %s + %s overflows", ErrDecimal, d, o)
	}
	return Decimal{unscaled: s, scale: a.scale}, nil
}

// Sub returns d - o at the larger of the two scales, or an error on
// overflow.
func (d Decimal) Sub(o Decimal) (Decimal, error) {
	if o.unscaled == math.MinInt64 {
		return Decimal{}, fmt.Errorf("%w: %s - %s overflows", ErrDecimal, d, o)
	}
	return d.Add(o.Neg())
}

// Neg returns -d. The negation of the smallest int64 unscaled value
// saturates.
func (d Decimal) Neg() Decimal {
	if d.unscaled == math.MinInt64 {
		return Decimal{unscaled: math.MaxInt64, scale: d.scale}
	}
	return Decimal{unscaled: -d.unscaled, scale: d.scale}
}

// Cmp compares d and o by value: -1 if d < o, 0 if equal, +1 if d > o.
func (d Decimal) Cmp(o Decimal) int {
	if a, b, err := align(d, o); err == nil {
		switch {
		case a.unscaled < b.unscaled:
			return -1
		case a.unscaled > b.unscaled:
			return 1
		}
		return 0
	}
	return d.Rat().Cmp(o.Rat())
}

// Equal reports whether d and o have the same value (1.5 equals 1.50).
func (d Decimal) Equal(o Decimal) bool { return d.Cmp(o) == 0 }

// Rat returns d as an exact rational.
func (d Decimal) Rat() *big.Rat {
	return new(big.Rat).SetFrac(big.NewInt(d.unscaled), big.NewInt(pow10Table[d.scale]))
}

// Float64 returns the nearest float64, for ratios and metrics only; never
// use it for amounts.
func (d Decimal) Float64() float64 {
	f, _ := d.Rat().Float64()
	return f
}

// DecimalFromRat converts an exact rational (as decoded from dynamic Avro
// records) to a Decimal at the given scale; it fails rather than round.
func DecimalFromRat(r *big.Rat, scale int) (Decimal, error) {
	if scale < 0 || scale > MaxDecimalScale {
		return Decimal{}, fmt.Errorf("%w: scale %d out of range [0,%d]", ErrDecimal, scale, MaxDecimalScale)
	}
	num := new(big.Int).Mul(r.Num(), big.NewInt(pow10Table[scale]))
	q, rem := new(big.Int).QuoRem(num, r.Denom(), new(big.Int))
	if rem.Sign() != 0 {
		return Decimal{}, fmt.Errorf("%w: %s cannot be represented at scale %d without rounding", ErrDecimal, r.RatString(), scale)
	}
	if !q.IsInt64() {
		return Decimal{}, fmt.Errorf("%w: %s is out of range", ErrDecimal, r.RatString())
	}
	return Decimal{unscaled: q.Int64(), scale: int8(scale)}, nil
}

// digits returns the number of decimal digits of |u| (1 for 0).
func digits(u int64) int {
	if u < 0 {
		if u == math.MinInt64 {
			return 19
		}
		u = -u
	}
	n := 1
	for u >= 10 {
		u /= 10
		n++
	}
	return n
}

// decimalCustomType wires Decimal to Avro bytes/decimal fields: encode
// rescales exactly to the field's scale and checks its precision; decode
// reads the big-endian two's-complement unscaled value. Encode also takes
// *big.Rat and plain decimal strings (the dynamic path), exactly; a value
// that needs rounding is an error, never a different amount.
var decimalCustomType = avro.CustomType{
	LogicalType: "decimal",
	AvroType:    "bytes",
	Encode:      encodeDecimal,
	Decode:      decodeDecimal,
}

func encodeDecimal(v any, n *avro.SchemaNode) (any, error) {
	switch x := v.(type) {
	case Decimal:
		return decimalBytes(x, n)
	case *Decimal:
		if x == nil {
			return nil, avro.ErrSkipCustomType
		}
		return decimalBytes(*x, n)
	case *big.Rat:
		if x == nil {
			return nil, avro.ErrSkipCustomType
		}
		return ratBytes(x, n)
	case big.Rat:
		return ratBytes(&x, n)
	case string:
		r, err := parseDecimalRat(x)
		if err != nil {
			return nil, err
		}
		return ratBytes(r, n)
	case float32, float64:
		return nil, fmt.Errorf("%w: %v is a float; money is exact, use Decimal, *big.Rat or a decimal string", ErrDecimal, x)
	}
	return nil, avro.ErrSkipCustomType // []byte: raw unscaled bytes
}

func decimalBytes(d Decimal, n *avro.SchemaNode) ([]byte, error) {
	r, err := d.Rescale(n.Scale)
	if err != nil {
		return nil, err
	}
	if n.Precision > 0 && digits(r.unscaled) > n.Precision && r.unscaled != 0 {
		return nil, fmt.Errorf("%w: %s has more than %d digits (decimal(%d,%d))", ErrDecimal, d, n.Precision, n.Precision, n.Scale)
	}
	return unscaledBytes(r.unscaled), nil
}

// ratBytes is the unscaled two's-complement form of r at n's scale.
func ratBytes(r *big.Rat, n *avro.SchemaNode) ([]byte, error) {
	if n.Scale < 0 || n.Scale > 1<<10 {
		return nil, fmt.Errorf("%w: schema scale %d out of range", ErrDecimal, n.Scale)
	}
	if d, ok := ratDecimalFast(r, n.Scale); ok {
		return decimalBytes(d, n)
	}
	num := new(big.Int).Mul(r.Num(), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n.Scale)), nil))
	u, rem := new(big.Int).QuoRem(num, r.Denom(), new(big.Int))
	if rem.Sign() != 0 {
		return nil, fmt.Errorf("%w: %s cannot be represented at scale %d without rounding", ErrDecimal, r.FloatString(n.Scale+2), n.Scale)
	}
	if d := len(new(big.Int).Abs(u).String()); n.Precision > 0 && d > n.Precision && u.Sign() != 0 {
		return nil, fmt.Errorf("%w: %s has more than %d digits (decimal(%d,%d))", ErrDecimal, r.FloatString(n.Scale), n.Precision, n.Precision, n.Scale)
	}
	if u.IsInt64() {
		return unscaledBytes(u.Int64()), nil
	}
	return bigTwosComplement(u), nil
}

// ratDecimalFast converts r to a Decimal at scale with int64 arithmetic,
// when r's numerator and denominator are small and the denominator divides
// 10^scale (every amount parsed from a decimal string); ok is false when
// the general path is needed.
func ratDecimalFast(r *big.Rat, scale int) (Decimal, bool) {
	if scale > MaxDecimalScale || !r.Num().IsInt64() || !r.Denom().IsInt64() {
		return Decimal{}, false
	}
	num, den := r.Num().Int64(), r.Denom().Int64()
	p := pow10Table[scale]
	if den <= 0 || p%den != 0 {
		return Decimal{}, false
	}
	m := p / den
	if num > math.MaxInt64/m || num < math.MinInt64/m {
		return Decimal{}, false
	}
	return Decimal{unscaled: num * m, scale: int8(scale)}, true
}

// bigTwosComplement is the minimal big-endian two's-complement form of u.
func bigTwosComplement(u *big.Int) []byte {
	if u.Sign() == 0 {
		return []byte{0}
	}
	if u.Sign() > 0 {
		b := u.Bytes()
		if b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
		return b
	}
	// -u - 1 in bytes, inverted.
	m := new(big.Int).Neg(u)
	m.Sub(m, big.NewInt(1))
	b := m.Bytes()
	for i := range b {
		b[i] = ^b[i]
	}
	if len(b) == 0 || b[0]&0x80 == 0 {
		b = append([]byte{0xff}, b...)
	}
	return b
}

// parseDecimalRat parses a plain decimal string (digits, one point, a
// sign; no exponent, so no huge allocation) of at most 80 characters.
func parseDecimalRat(s string) (*big.Rat, error) {
	if len(s) == 0 || len(s) > 80 {
		return nil, fmt.Errorf("%w: %q is not a decimal number of at most 80 characters", ErrDecimal, s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c == '.' || (c == '-' || c == '+') && i == 0) {
			return nil, fmt.Errorf("%w: %q is not a plain decimal number", ErrDecimal, s)
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return nil, fmt.Errorf("%w: %q is not a decimal number", ErrDecimal, s)
	}
	return r, nil
}

// unscaledBytes is the minimal big-endian two's-complement form of u.
func unscaledBytes(u int64) []byte {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(u))
	i := 0
	for i < 7 {
		if u >= 0 && buf[i] == 0 && buf[i+1]&0x80 == 0 ||
			u < 0 && buf[i] == 0xff && buf[i+1]&0x80 != 0 {
			i++
			continue
		}
		break
	}
	return append([]byte(nil), buf[i:]...)
}

func decodeDecimal(v any, n *avro.SchemaNode) (any, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, avro.ErrSkipCustomType
	}
	if n.Scale < 0 || n.Scale > MaxDecimalScale {
		return nil, fmt.Errorf("%w: schema scale %d out of range [0,%d]", ErrDecimal, n.Scale, MaxDecimalScale)
	}
	if len(b) == 0 {
		return Decimal{scale: int8(n.Scale)}, nil
	}
	if len(b) > 8 {
		// A longer encoding may still be a sign-extended int64.
		ext := byte(0)
		if b[0]&0x80 != 0 {
			ext = 0xff
		}
		for _, c := range b[:len(b)-8] {
			if c != ext {
				return nil, fmt.Errorf("%w: unscaled value of %d bytes does not fit 64 bits", ErrDecimal, len(b))
			}
		}
		if (b[len(b)-8]^ext)&0x80 != 0 {
			return nil, fmt.Errorf("%w: unscaled value of %d bytes does not fit 64 bits", ErrDecimal, len(b))
		}
		b = b[len(b)-8:]
	}
	var u int64
	if b[0]&0x80 != 0 {
		u = -1
	}
	for _, c := range b {
		u = u<<8 | int64(c)
	}
	return Decimal{unscaled: u, scale: int8(n.Scale)}, nil
}

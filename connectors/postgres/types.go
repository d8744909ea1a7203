package postgres

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// PostgreSQL type OIDs the reader maps (pg_type.h).
const (
	oidBool        = 16
	oidBytea       = 17
	oidChar        = 18
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidJSON        = 114
	oidXML         = 142
	oidFloat4      = 700
	oidFloat8      = 701
	oidMoney       = 790
	oidInet        = 869
	oidCidr        = 650
	oidMacaddr     = 829
	oidBpchar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTime        = 1083
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidInterval    = 1186
	oidTimetz      = 1266
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
)

// arrayElem maps array type OIDs to their element type.
var arrayElem = map[uint32]uint32{
	1000: oidBool, 1001: oidBytea, 1005: oidInt2, 1007: oidInt4, 1016: oidInt8,
	1009: oidText, 1015: oidVarchar, 1014: oidBpchar, 1021: oidFloat4,
	1022: oidFloat8, 1231: oidNumeric, 2951: oidUUID, 199: oidJSON,
	3807: oidJSONB, 1182: oidDate, 1115: oidTimestamp, 1185: oidTimestamptz,
}

// textTypes are carried as their text representation (Avro string).
var textTypes = map[uint32]bool{
	oidText: true, oidVarchar: true, oidBpchar: true, oidName: true, oidChar: true,
	oidXML: true, oidMoney: true, oidInet: true, oidCidr: true, oidMacaddr: true,
	oidInterval: true, oidTimetz: true,
}

// converter turns a column's text representation into the Go value the
// Avro encoder expects for the column's Avro type.
type converter func(text []byte) (any, error)

// colType is the mapping of one column: its Avro type (JSON schema
// fragment, never nullable) and its converter.
type colType struct {
	avro any
	conv converter
}

// mapType maps a column type. Unknown scalar types (enums, domains over
// unknown types, extension types) are carried as their text representation;
// arrays of unmapped element types and multi-dimensional arrays are errors.
func mapType(oid uint32, typMod int32) (colType, error) {
	if elem, ok := arrayElem[oid]; ok {
		et, err := mapType(elem, typMod)
		if err != nil {
			return colType{}, err
		}
		return colType{
			avro: map[string]any{"type": "array", "items": []any{"null", et.avro}},
			conv: arrayConverter(et.conv),
		}, nil
	}
	switch oid {
	case oidBool:
		return colType{"boolean", convBool}, nil
	case oidInt2, oidInt4:
		return colType{"int", convInt32}, nil
	case oidInt8, oidOID:
		return colType{"long", convInt64}, nil
	case oidFloat4:
		return colType{"float", convFloat32}, nil
	case oidFloat8:
		return colType{"double", convFloat64}, nil
	case oidNumeric:
		return numericType(typMod), nil
	case oidUUID:
		return colType{map[string]any{"type": "string", "logicalType": "uuid"}, convString}, nil
	case oidJSON, oidJSONB:
		return colType{map[string]any{"type": "string", "connect.name": "io.debezium.data.Json"}, convString}, nil
	case oidBytea:
		return colType{"bytes", convBytea}, nil
	case oidTimestamptz:
		return colType{map[string]any{"type": "long", "logicalType": "timestamp-micros"}, convTimestamptz}, nil
	case oidTimestamp:
		return colType{map[string]any{"type": "long", "logicalType": "local-timestamp-micros"}, convTimestamp}, nil
	case oidDate:
		return colType{map[string]any{"type": "int", "logicalType": "date"}, convDate}, nil
	case oidTime:
		return colType{map[string]any{"type": "long", "logicalType": "time-micros"}, convTime}, nil
	}
	if isArrayOID(oid) {
		return colType{}, fmt.Errorf("%w: array type oid %d (supported arrays: bool, bytea, int2/4/8, text, varchar, bpchar, float4/8, numeric, uuid, json, jsonb, date, timestamp, timestamptz)", ErrUnsupportedType, oid)
	}
	return colType{"string", convString}, nil
}

// isArrayOID reports the built-in array types not in arrayElem (their
// OIDs are known; user-defined array types are caught by their name in the
// Type message or catalog, see relation.go).
func isArrayOID(oid uint32) bool {
	switch oid {
	case 1002, 1003, 1006, 1008, 1010, 1011, 1012, 1013, 1017, 1018, 1019,
		1020, 1023, 1024, 1025, 1027, 1028, 1034, 1040, 1041, 651, 1183,
		1270, 1187, 1561, 1563, 2201, 143, 791:
		return true
	}
	return false
}

// numericType maps numeric(p,s) to an Avro decimal; unconstrained numeric
// (and negative scales) to the exact text as a string, since an Avro
// decimal needs one scale for every value.
func numericType(typMod int32) colType {
	if typMod < 4 {
		return colType{"string", convString}
	}
	m := typMod - 4
	prec := int(m>>16) & 0xffff
	scale := int(((m & 0x7ff) ^ 1024) - 1024)
	if scale < 0 || scale > prec {
		return colType{"string", convString}
	}
	return colType{
		avro: map[string]any{"type": "bytes", "logicalType": "decimal", "precision": prec, "scale": scale},
		conv: decimalConverter(scale),
	}
}

func convString(b []byte) (any, error) { return string(b), nil }

// specialValue is a value the column's Avro type cannot hold (numeric NaN
// and ±Infinity in an Avro decimal). The field is written as null and the
// record carries the value in the loanflow.special header (see doc.go), as
// Debezium's precise decimal mode writes null for them.
type specialValue string

func convBool(b []byte) (any, error) {
	switch string(b) {
	case "t", "true":
		return true, nil
	case "f", "false":
		return false, nil
	}
	return nil, fmt.Errorf("%w: boolean %q", ErrValue, b)
}

func convInt32(b []byte) (any, error) {
	v, err := strconv.ParseInt(string(b), 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%w: integer %q", ErrValue, b)
	}
	return int32(v), nil
}

func convInt64(b []byte) (any, error) {
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: bigint %q", ErrValue, b)
	}
	return v, nil
}

func convFloat32(b []byte) (any, error) {
	v, err := strconv.ParseFloat(string(b), 32)
	if err != nil {
		return nil, fmt.Errorf("%w: real %q", ErrValue, b)
	}
	return float32(v), nil
}

func convFloat64(b []byte) (any, error) {
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return nil, fmt.Errorf("%w: double precision %q", ErrValue, b)
	}
	return v, nil
}

// decimalConverter parses numeric text into an exact rational at the
// column's scale; NaN and infinities have no Avro decimal form.
func decimalConverter(scale int) converter {
	return func(b []byte) (any, error) {
		if u, ok := decimalBytes(b, scale); ok {
			return u, nil
		}
		switch string(b) {
		case "NaN", "Infinity", "-Infinity":
			return specialValue(b), nil
		}
		r, ok := new(big.Rat).SetString(string(b))
		if !ok {
			return nil, fmt.Errorf("%w: numeric %q", ErrValue, b)
		}
		return r, nil
	}
}

func convBytea(b []byte) (any, error) {
	if len(b) < 2 || b[0] != '\\' || b[1] != 'x' {
		return nil, fmt.Errorf("%w: bytea not in hex format (set bytea_output = hex)", ErrValue)
	}
	out := make([]byte, hex.DecodedLen(len(b)-2))
	if _, err := hex.Decode(out, b[2:]); err != nil {
		return nil, fmt.Errorf("%w: bytea: %v", ErrValue, err)
	}
	return out, nil
}

// Sentinels for PostgreSQL's infinite timestamps and dates, which have no
// instant. The timestamp values are Debezium's (the PostgreSQL JDBC
// driver's PGStatement.DATE_POSITIVE_INFINITY/NEGATIVE_INFINITY), written
// as is into the timestamp-micros and local-timestamp-micros longs; dates
// (int days) use the int extremes.
const (
	TimestampPosInfinity int64 = 9223372036825200000
	TimestampNegInfinity int64 = -9223372036832400000
	DatePosInfinity      int32 = math.MaxInt32
	DateNegInfinity      int32 = math.MinInt32
)

// parseDateTime parses PostgreSQL's ISO output of a date, timestamp or
// timestamptz (TimeZone UTC, or any numeric offset), including BC dates
// ("0044-03-15 BC": astronomical year -43) and years past 9999, which
// time.Parse does not take. withTime and withZone say what the text holds.
func parseDateTime(b []byte, withTime, withZone bool) (time.Time, bool) {
	s := string(b)
	bc := strings.HasSuffix(s, " BC")
	s = strings.TrimSuffix(s, " BC")
	i := strings.IndexByte(s, '-')
	if i < 4 {
		return time.Time{}, false
	}
	year, err := strconv.Atoi(s[:i])
	if err != nil {
		return time.Time{}, false
	}
	if bc {
		year = 1 - year
	}
	// Parse the rest in year 2000 (a leap year, so Feb 29 parses), then
	// rebuild the time in the real year.
	rest := "2000" + s[i:]
	var t time.Time
	switch {
	case !withTime:
		t, err = time.Parse("2006-01-02", rest)
	case !withZone:
		t, err = time.Parse("2006-01-02 15:04:05.999999", rest)
	default:
		for _, l := range tsLayouts {
			if t, err = time.Parse(l, rest); err == nil {
				break
			}
		}
	}
	if err != nil {
		return time.Time{}, false
	}
	_, off := t.Zone()
	out := time.Date(year, t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
	if t.Month() == time.February && t.Day() == 29 && out.Month() != time.February {
		return time.Time{}, false // Feb 29 of a year that has none
	}
	return out.Add(-time.Duration(off) * time.Second), true
}

var tsLayouts = []string{
	"2006-01-02 15:04:05.999999-07",
	"2006-01-02 15:04:05.999999-07:00",
	"2006-01-02 15:04:05.999999-07:00:00",
}

// convTimestampMicros converts a timestamptz (zoned) or timestamp to
// microseconds since the epoch (a timestamp's wall clock read as UTC),
// with the infinity sentinels.
func convTimestampMicros(zoned bool) converter {
	name := "timestamp"
	if zoned {
		name = "timestamptz"
	}
	return func(b []byte) (any, error) {
		switch string(b) {
		case "infinity":
			return TimestampPosInfinity, nil
		case "-infinity":
			return TimestampNegInfinity, nil
		}
		t, ok := parseDateTime(b, true, zoned)
		if !ok || t.Year() > 294000 || t.Year() < -290000 {
			// Past ~294,000 AD (PostgreSQL's limit is 294,276 AD)
			// microseconds since 1970 overflow a long.
			return nil, fmt.Errorf("%w: %s %q", ErrValue, name, b)
		}
		return t.UnixMicro(), nil
	}
}

var (
	convTimestamptz = convTimestampMicros(true)
	convTimestamp   = convTimestampMicros(false)
)

// convDate converts a date to days since the epoch, with the infinity
// sentinels.
func convDate(b []byte) (any, error) {
	switch string(b) {
	case "infinity":
		return DatePosInfinity, nil
	case "-infinity":
		return DateNegInfinity, nil
	}
	t, ok := parseDateTime(b, false, false)
	if !ok {
		return nil, fmt.Errorf("%w: date %q", ErrValue, b)
	}
	days := t.Unix() / 86400
	if t.Unix()%86400 < 0 {
		days--
	}
	return int32(days), nil
}

func convTime(b []byte) (any, error) {
	t, err := time.Parse("15:04:05.999999", string(b))
	if err != nil {
		if string(b) == "24:00:00" {
			return 24 * time.Hour, nil
		}
		return nil, fmt.Errorf("%w: time %q", ErrValue, b)
	}
	return t.Sub(time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)), nil
}

// arrayConverter parses a one-dimensional array literal ({a,"b c",NULL}).
func arrayConverter(elem converter) converter {
	return func(b []byte) (any, error) {
		s := string(b)
		if i := strings.IndexByte(s, '='); i >= 0 && strings.HasPrefix(s, "[") {
			s = s[i+1:] // explicit bounds: [0:2]={...}
		}
		if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
			return nil, fmt.Errorf("%w: array literal %q", ErrValue, truncate(s))
		}
		items, err := splitArray(s[1 : len(s)-1])
		if err != nil {
			return nil, err
		}
		out := make([]any, len(items))
		for i, it := range items {
			if it == nil {
				continue
			}
			if out[i], err = elem(it); err != nil {
				return nil, err
			}
			if _, ok := out[i].(specialValue); ok {
				return specialValue(b), nil // the whole array, as text
			}
		}
		return out, nil
	}
}

// splitArray splits the inside of an array literal; nil items are NULL.
func splitArray(s string) ([][]byte, error) {
	var items [][]byte
	if s == "" {
		return items, nil
	}
	for i := 0; i <= len(s); {
		if i < len(s) && s[i] == '{' {
			return nil, fmt.Errorf("%w: multi-dimensional arrays are not supported", ErrUnsupportedType)
		}
		var item []byte
		quoted := false
		if i < len(s) && s[i] == '"' {
			quoted = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				item = append(item, s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("%w: unterminated quoted array element", ErrValue)
			}
			i++
		} else {
			j := strings.IndexByte(s[i:], ',')
			if j < 0 {
				j = len(s) - i
			}
			item = []byte(s[i : i+j])
			i += j
		}
		if !quoted && string(item) == "NULL" {
			item = nil
		} else if item == nil {
			item = []byte{}
		}
		items = append(items, item)
		if i < len(s) && s[i] != ',' {
			return nil, fmt.Errorf("%w: malformed array literal near %q", ErrValue, truncate(s[i:]))
		}
		i++
	}
	return items, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// decimalBytes parses numeric text into the unscaled two's-complement
// big-endian bytes of an Avro decimal at scale (the encoder writes them as
// is). Values wider than int64 go through math/big.
func decimalBytes(b []byte, scale int) ([]byte, bool) {
	neg := false
	if len(b) > 0 && (b[0] == '-' || b[0] == '+') {
		neg = b[0] == '-'
		b = b[1:]
	}
	var u uint64
	digits, frac, dot := 0, 0, false
	for _, c := range b {
		switch {
		case c == '.' && !dot:
			dot = true
		case c >= '0' && c <= '9':
			if dot {
				frac++
			}
			digits++
			if digits > 18 {
				return nil, false
			}
			u = u*10 + uint64(c-'0')
		default:
			return nil, false
		}
	}
	if digits == 0 || frac > scale {
		return nil, false
	}
	for ; frac < scale; frac++ {
		if u > (1<<63-1)/10 {
			return nil, false
		}
		u *= 10
	}
	v := int64(u)
	if neg {
		v = -v
	}
	return minimalTwos(v), true
}

// minimalTwos is v's shortest big-endian two's-complement encoding.
func minimalTwos(v int64) []byte {
	var buf [8]byte
	for i := 7; i >= 0; i-- {
		buf[i] = byte(v)
		v >>= 8
	}
	i := 0
	for i < 7 && ((buf[i] == 0 && buf[i+1]&0x80 == 0) || (buf[i] == 0xff && buf[i+1]&0x80 != 0)) {
		i++
	}
	return append([]byte(nil), buf[i:]...)
}

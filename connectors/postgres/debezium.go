package postgres

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// TypeMode says how column types map to Avro.
type TypeMode string

const (
	// TypesNative maps types to Avro's own logical types (timestamp-micros,
	// uuid, decimal; unconstrained numeric as its text). Default.
	TypesNative TypeMode = "native"
	// TypesDebezium maps types as Debezium's PostgreSQL connector does
	// (time.precision.mode adaptive, decimal.handling.mode precise) through
	// Confluent's AvroConverter: the Kafka Connect semantic types with
	// their connect.name and connect.version properties, so consumers
	// written for Debezium (Flink's debezium-avro-confluent, Connect sinks)
	// read the values as they would Debezium's. See debeziumType.
	TypesDebezium TypeMode = "debezium"
)

// Connect semantic type names Debezium writes.
const (
	dbzZonedTimestamp = "io.debezium.time.ZonedTimestamp"
	dbzTimestamp      = "io.debezium.time.Timestamp"
	dbzMicroTimestamp = "io.debezium.time.MicroTimestamp"
	dbzDate           = "io.debezium.time.Date"
	dbzTime           = "io.debezium.time.Time"
	dbzMicroTime      = "io.debezium.time.MicroTime"
	dbzUUID           = "io.debezium.data.Uuid"
	dbzJSON           = "io.debezium.data.Json"
	dbzVariableScale  = "io.debezium.data.VariableScaleDecimal"
	connectDecimal    = "org.apache.kafka.connect.data.Decimal"
)

// connectType is an Avro type carrying a Connect semantic type, as
// AvroConverter writes it.
func connectType(avroType, name string) map[string]any {
	return map[string]any{"type": avroType, "connect.version": 1, "connect.name": name}
}

// variableScaleDecimalSchema is the Avro form of Debezium's
// VariableScaleDecimal struct (a named record: the second use in one
// schema refers to it by name, see dedupeNamed).
func variableScaleDecimalSchema() map[string]any {
	return map[string]any{
		"type": "record", "name": "VariableScaleDecimal", "namespace": "io.debezium.data",
		"fields": []any{
			map[string]any{"name": "scale", "type": "int"},
			map[string]any{"name": "value", "type": "bytes"},
		},
		"connect.doc": "Variable scaled decimal", "connect.version": 1, "connect.name": dbzVariableScale,
	}
}

// timePrecision is the fractional-second precision of a timestamp or time
// column (its typmod; 6 when unconstrained).
func timePrecision(typMod int32) int {
	if typMod < 0 {
		return 6
	}
	return int(typMod)
}

// mapTypeFor maps a column type in the given mode.
func mapTypeFor(oid uint32, typMod int32, mode TypeMode) (colType, error) {
	if mode != TypesDebezium {
		return mapType(oid, typMod)
	}
	if elem, ok := arrayElem[oid]; ok {
		et, err := mapTypeFor(elem, typMod, mode)
		if err != nil {
			return colType{}, err
		}
		return colType{
			avro: map[string]any{"type": "array", "items": []any{"null", et.avro}},
			conv: arrayConverter(et.conv),
		}, nil
	}
	if ct, ok := debeziumType(oid, typMod); ok {
		return ct, nil
	}
	return mapType(oid, typMod)
}

// debeziumType is Debezium's mapping of the types where it differs from
// the native one (types not listed map alike).
func debeziumType(oid uint32, typMod int32) (colType, bool) {
	switch oid {
	case oidInt2:
		return colType{map[string]any{"type": "int", "connect.type": "int16"}, convInt16}, true
	case oidTimestamptz:
		return colType{connectType("string", dbzZonedTimestamp), convZonedTimestamp}, true
	case oidTimestamp:
		if timePrecision(typMod) <= 3 {
			return colType{connectType("long", dbzTimestamp), convScaled(convTimestamp, 1000)}, true
		}
		return colType{connectType("long", dbzMicroTimestamp), convTimestamp}, true
	case oidDate:
		return colType{connectType("int", dbzDate), convDate}, true
	case oidTime:
		if timePrecision(typMod) <= 3 {
			return colType{connectType("int", dbzTime), convTimeMillis}, true
		}
		return colType{connectType("long", dbzMicroTime), convTimeMicros}, true
	case oidUUID:
		return colType{connectType("string", dbzUUID), convString}, true
	case oidJSON, oidJSONB:
		return colType{connectType("string", dbzJSON), convString}, true
	case oidNumeric:
		nt := numericType(typMod)
		if m, ok := nt.avro.(map[string]any); ok {
			p, s := m["precision"].(int), m["scale"].(int)
			t := map[string]any{"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s,
				"connect.version": 1, "connect.name": connectDecimal,
				"connect.parameters": map[string]any{"scale": strconv.Itoa(s), "connect.decimal.precision": strconv.Itoa(p)}}
			return colType{t, nt.conv}, true
		}
		return colType{variableScaleDecimalSchema(), convVariableScale}, true
	}
	return colType{}, false
}

func convInt16(b []byte) (any, error) {
	v, err := strconv.ParseInt(string(b), 10, 16)
	if err != nil {
		return nil, fmt.Errorf("%w: smallint %q", ErrValue, b)
	}
	return int32(v), nil
}

// convScaled divides a converter's int64 result (micros) by div, keeping
// the infinity sentinels.
func convScaled(conv converter, div int64) converter {
	return func(b []byte) (any, error) {
		v, err := conv(b)
		if err != nil {
			return nil, err
		}
		x := v.(int64)
		if x == TimestampPosInfinity || x == TimestampNegInfinity {
			return x, nil
		}
		q := x / div
		if x%div < 0 {
			q--
		}
		return q, nil
	}
}

func convTimeMicros(b []byte) (any, error) {
	v, err := convTime(b)
	if err != nil {
		return nil, err
	}
	return int64(v.(time.Duration) / time.Microsecond), nil
}

func convTimeMillis(b []byte) (any, error) {
	v, err := convTime(b)
	if err != nil {
		return nil, err
	}
	return int32(v.(time.Duration) / time.Millisecond), nil
}

// convZonedTimestamp formats a timestamptz as Debezium's ZonedTimestamp:
// ISO-8601 in UTC (Java's ISO_OFFSET_DATE_TIME: fraction without trailing
// zeros, offset Z; years past 9999 with a sign, BC years as negative
// astronomical years). PostgreSQL's infinities are "infinity" and
// "-infinity", as Debezium writes them.
func convZonedTimestamp(b []byte) (any, error) {
	switch string(b) {
	case "infinity", "-infinity":
		return string(b), nil
	}
	t, ok := parseDateTime(b, true, true)
	if !ok {
		return nil, fmt.Errorf("%w: timestamptz %q", ErrValue, b)
	}
	return isoYear(t.Year()) + t.Format("-01-02T15:04:05.999999999Z07:00"), nil
}

// isoYear is a year as java.time's ISO formatter writes it: four digits,
// a sign past 9999 or before 0.
func isoYear(y int) string {
	switch {
	case y > 9999:
		return "+" + strconv.Itoa(y)
	case y < 0:
		return fmt.Sprintf("-%04d", -y)
	}
	return fmt.Sprintf("%04d", y)
}

// convVariableScale converts an unconstrained numeric to Debezium's
// VariableScaleDecimal {scale, value}: value is the unscaled
// two's-complement big-endian integer and scale the digits after the
// point as PostgreSQL wrote them. NaN and infinities have no such form.
func convVariableScale(b []byte) (any, error) {
	s := string(b)
	switch s {
	case "NaN", "Infinity", "-Infinity":
		return specialValue(b), nil
	}
	scale := 0
	if i := strings.IndexByte(s, '.'); i >= 0 {
		scale = len(s) - i - 1
		s = s[:i] + s[i+1:]
	}
	u, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil, fmt.Errorf("%w: numeric %q", ErrValue, b)
	}
	return map[string]any{"scale": int32(scale), "value": twosComplement(u)}, nil
}

// twosComplement is u's shortest big-endian two's-complement encoding
// (Java's BigInteger.toByteArray).
func twosComplement(u *big.Int) []byte {
	if u.Sign() >= 0 {
		b := u.Bytes()
		if len(b) == 0 || b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
		return b
	}
	// -u - 1, inverted, is the two's complement of u.
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

// dedupeNamed replaces the second and later definitions of a named Avro
// type (VariableScaleDecimal, used by several columns) in fields with its
// full name: Avro allows one definition per name and schema.
func dedupeNamed(fields []any) {
	seen := map[string]bool{}
	var walk func(n any) any
	walk = func(n any) any {
		switch x := n.(type) {
		case []any:
			for i := range x {
				x[i] = walk(x[i])
			}
		case map[string]any:
			if x["type"] == "record" {
				full := fmt.Sprint(x["namespace"], ".", x["name"])
				if seen[full] {
					return full
				}
				seen[full] = true
				return x
			}
			if it, ok := x["items"]; ok {
				x["items"] = walk(it)
			}
			if t, ok := x["type"]; ok {
				x["type"] = walk(t)
			}
		}
		return n
	}
	for _, f := range fields {
		m := f.(map[string]any)
		m["type"] = walk(deepCopy(m["type"]))
	}
}

// deepCopy copies the maps and slices of a JSON-like value (a column's
// type is shared by every schema built for it).
func deepCopy(n any) any {
	switch x := n.(type) {
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = deepCopy(x[i])
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, v := range x {
			out[k] = deepCopy(v)
		}
		return out
	}
	return n
}

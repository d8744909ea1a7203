package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr"
)

// rowFieldTypes are the non-null types of the row record's fields (Value)
// of the latest schema registered under subject, as JSON values.
func (e *cdcEnv) rowFieldTypes(subject string) map[string]any {
	e.t.Helper()
	text := e.latestSchema(subject)
	var root map[string]any
	if err := json.Unmarshal([]byte(text), &root); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]any{}
	for _, f := range root["fields"].([]any) {
		fm := f.(map[string]any)
		if fm["name"] != "before" {
			continue
		}
		row := fm["type"].([]any)[1].(map[string]any)
		for _, c := range row["fields"].([]any) {
			cm := c.(map[string]any)
			typ := cm["type"]
			if u, ok := typ.([]any); ok && len(u) == 2 && u[0] == "null" {
				typ = u[1]
			}
			out[cm["name"].(string)] = typ
		}
	}
	if len(out) == 0 {
		e.t.Fatalf("%s: no before record in %s", subject, text)
	}
	return out
}

// latestSchema is the text of the latest schema registered under subject.
func (e *cdcEnv) latestSchema(subject string) string {
	e.t.Helper()
	cl, err := sr.NewClient(sr.URLs(e.regURL))
	if err != nil {
		e.t.Fatal(err)
	}
	ss, err := cl.SchemaByVersion(context.Background(), subject, -1)
	if err != nil {
		e.t.Fatalf("schema of %s: %v", subject, err)
	}
	return ss.Schema.Schema
}

// canonJSON renders a JSON value with sorted keys (json.Marshal sorts map
// keys), so equal schemas compare equal.
func canonJSON(t *testing.T, v any) string {
	t.Helper()
	if s, ok := v.(string); ok && len(s) > 0 && (s[0] == '{' || s[0] == '[' || s[0] == '"') {
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDebeziumTypes: the Avro type of each column and its value, in the
// native mode and in the debezium mode, against hand-written expectations:
// for debezium mode the schemas Debezium's PostgreSQL connector produces
// through Confluent's AvroConverter (Debezium's documented mappings with
// time.precision.mode adaptive and decimal.handling.mode precise: Connect
// semantic types with connect.name/connect.version, Decimal with
// connect.parameters, int16 as connect.type), and the values as Debezium
// writes them (ZonedTimestamp ISO strings in UTC with the fraction's
// trailing zeros dropped, VariableScaleDecimal {scale, unscaled bytes}).
// Numeric expectations come from PostgreSQL itself (extract epoch), not
// from the converters. Rows are read by the snapshot and by streaming.
func TestDebeziumTypes(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, `CREATE TABLE ty (id int PRIMARY KEY, s smallint, ts timestamptz, t timestamp, t3 timestamp(3), d date,
		tm time, tm3 time(3), u uuid, j jsonb, n numeric(10,2), nv numeric, nv2 numeric, na numeric[])`)
	e.exec(c, "ALTER TABLE ty REPLICA IDENTITY FULL")
	rows := []string{
		`(1, 7, '2021-03-04 05:06:07.123456+00', '2021-03-04 05:06:07.5', '2021-03-04 05:06:07.123', '2021-03-04',
			'01:02:03.000004', '01:02:03.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1}', 12.34, 12.345, -1, '{0.0100, NULL}')`,
		`(2, -3, '2021-03-04 05:06:07+02', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '-123456789012345678901234567890.5', NULL, NULL)`,
		`(3, 0, 'infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'NaN', NULL, NULL)`,
		`(4, 0, '10000-01-01 00:00:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`,
		`(5, 0, '0044-03-15 12:00:00.25+00 BC', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`,
	}
	e.exec(c, "INSERT INTO ty VALUES "+rows[0]+", "+rows[1]+", "+rows[2])
	pg := func(sql string) int64 {
		var v int64
		if err := c.QueryRow(context.Background(), sql).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	tsMicros := pg("SELECT (extract(epoch FROM timestamptz '2021-03-04 05:06:07.123456+00') * 1000000)::bigint")
	tMicros := pg("SELECT (extract(epoch FROM timestamp '2021-03-04 05:06:07.5') * 1000000)::bigint")
	t3Millis := pg("SELECT (extract(epoch FROM timestamp '2021-03-04 05:06:07.123') * 1000)::bigint")
	days := pg("SELECT date '2021-03-04' - date '1970-01-01'")
	tmMicros := pg("SELECT (extract(epoch FROM time '01:02:03.000004') * 1000000)::bigint")
	tm3Millis := pg("SELECT (extract(epoch FROM time '01:02:03.5') * 1000)::bigint")

	type want struct{ schema, value string } // schema JSON; value fmt'd (id 1)
	const vsd = `{"type":"record","name":"VariableScaleDecimal","namespace":"io.debezium.data","fields":[{"name":"scale","type":"int"},{"name":"value","type":"bytes"}],"connect.doc":"Variable scaled decimal","connect.version":1,"connect.name":"io.debezium.data.VariableScaleDecimal"}`
	modes := map[TypeMode]map[string]want{
		TypesNative: {
			"s":   {`"int"`, "7"},
			"ts":  {`{"type":"long","logicalType":"timestamp-micros"}`, ""},
			"t":   {`{"type":"long","logicalType":"local-timestamp-micros"}`, ""},
			"d":   {`{"type":"int","logicalType":"date"}`, ""}, // decoded as a time.Time
			"tm":  {`{"type":"long","logicalType":"time-micros"}`, fmt.Sprint(tmMicros)},
			"u":   {`{"type":"string","logicalType":"uuid"}`, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
			"j":   {`{"type":"string","connect.name":"io.debezium.data.Json"}`, `{"a": 1}`},
			"n":   {`{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}`, "12.34"},
			"nv":  {`"string"`, "12.345"},
			"nv2": {`"string"`, "-1"},
			"na":  {`{"type":"array","items":["null","string"]}`, "[0.0100 <nil>]"},
		},
		TypesDebezium: {
			"s":   {`{"type":"int","connect.type":"int16"}`, "7"},
			"ts":  {`{"type":"string","connect.version":1,"connect.name":"io.debezium.time.ZonedTimestamp"}`, "2021-03-04T05:06:07.123456Z"},
			"t":   {`{"type":"long","connect.version":1,"connect.name":"io.debezium.time.MicroTimestamp"}`, fmt.Sprint(tMicros)},
			"t3":  {`{"type":"long","connect.version":1,"connect.name":"io.debezium.time.Timestamp"}`, fmt.Sprint(t3Millis)},
			"d":   {`{"type":"int","connect.version":1,"connect.name":"io.debezium.time.Date"}`, fmt.Sprint(days)},
			"tm":  {`{"type":"long","connect.version":1,"connect.name":"io.debezium.time.MicroTime"}`, fmt.Sprint(tmMicros)},
			"tm3": {`{"type":"int","connect.version":1,"connect.name":"io.debezium.time.Time"}`, fmt.Sprint(tm3Millis)},
			"u":   {`{"type":"string","connect.version":1,"connect.name":"io.debezium.data.Uuid"}`, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
			"j":   {`{"type":"string","connect.version":1,"connect.name":"io.debezium.data.Json"}`, `{"a": 1}`},
			"n": {`{"type":"bytes","scale":2,"precision":10,"connect.version":1,"connect.parameters":{"scale":"2","connect.decimal.precision":"10"},"connect.name":"org.apache.kafka.connect.data.Decimal","logicalType":"decimal"}`,
				"12.34"},
			"nv":  {vsd, "scale=3 value=3039"},
			"nv2": {`"io.debezium.data.VariableScaleDecimal"`, "scale=0 value=ff"},
			"na":  {`{"type":"array","items":["null","io.debezium.data.VariableScaleDecimal"]}`, "[scale=4 value=64 <nil>]"},
		},
	}
	// Debezium's ZonedTimestamp of the other rows (id → text).
	zoned := map[int32]string{1: "2021-03-04T05:06:07.123456Z", 2: "2021-03-04T03:06:07Z", 3: "infinity", 4: "+10000-01-01T00:00:00Z", 5: "-0043-03-15T12:00:00.25Z"}
	i := 0
	for _, mode := range []TypeMode{TypesNative, TypesDebezium} {
		i++
		cfg := e.cfg
		cfg.Name = fmt.Sprintf("%s_%d", e.cfg.Name[:min(len(e.cfg.Name), 55)], i)
		cfg.TopicPrefix = cfg.Name
		cfg.Tables = []TableConfig{{Table: "ty"}}
		cfg.Types = mode
		e.runReader(cfg)
		e.waitSlotStreaming(c, cfg.Name) // the second beside the first
		if mode == TypesNative {
			e.exec(c, "INSERT INTO ty VALUES "+rows[3]+", "+rows[4]) // streamed (and snapshotted by the second reader)
		} else {
			e.exec(c, "UPDATE ty SET s = s WHERE id = 5") // streamed in this mode too
		}
		e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
		topic := cfg.TopicPrefix + ".public.ty"
		got := e.rowFieldTypes(topic + "-value")
		for col, w := range modes[mode] {
			if g := canonJSON(t, got[col]); g != canonJSON(t, w.schema) {
				t.Errorf("%s %s: schema %s, want %s", mode, col, g, canonJSON(t, w.schema))
			}
		}
		seen := map[int32]bool{}
		for _, r := range e.readAll(topic) {
			if r.value == nil || r.heartbeat() {
				continue
			}
			after := r.value["after"].(map[string]any)
			id := after["id"].(int32)
			seen[id] = true
			if mode == TypesDebezium && after["ts"] != zoned[id] {
				t.Errorf("debezium ts of id %d: %v, want %s", id, after["ts"], zoned[id])
			}
			if mode == TypesDebezium && id == 2 {
				// -123456789012345678901234567890.5: scale 1, unscaled from PostgreSQL's digits.
				u, _ := new(big.Int).SetString("-1234567890123456789012345678905", 10)
				m := after["nv"].(map[string]any)
				if m["scale"] != int32(1) || !bytes.Equal(m["value"].([]byte), javaBytes(u)) {
					t.Errorf("debezium nv of id 2: %v", m)
				}
			}
			if id == 3 && mode == TypesDebezium && after["nv"] != nil {
				t.Errorf("debezium: NaN numeric: %v, want null (with the special header)", after["nv"])
			}
			if id == 3 && mode == TypesNative && after["nv"] != "NaN" {
				t.Errorf("native: NaN numeric: %v, want its text", after["nv"])
			}
			if id != 1 {
				continue
			}
			if mode == TypesNative {
				if ts, _ := after["ts"].(time.Time); ts.UnixMicro() != tsMicros {
					t.Errorf("native ts: %v, want %d µs", after["ts"], tsMicros)
				}
			}
			for col, w := range modes[mode] {
				if w.value == "" {
					continue
				}
				if g := fmt_(after[col]); g != w.value {
					t.Errorf("%s %s: value %s, want %s", mode, col, g, w.value)
				}
			}
		}
		if len(seen) != 5 {
			t.Errorf("%s: rows %v, want 5", mode, seen)
		}
	}
}

// fmt_ renders a decoded value for comparison.
func fmt_(v any) string {
	switch x := v.(type) {
	case *big.Rat:
		return x.FloatString(2)
	case map[string]any:
		return fmt.Sprintf("scale=%v value=%x", x["scale"], x["value"])
	case []any:
		out := "["
		for i, y := range x {
			if i > 0 {
				out += " "
			}
			if y == nil {
				out += "<nil>"
			} else {
				out += fmt_(y)
			}
		}
		return out + "]"
	case time.Time:
		return fmt.Sprint(x.UnixMicro())
	case time.Duration:
		return fmt.Sprint(x.Microseconds())
	}
	return fmt.Sprint(v)
}

// javaBytes is BigInteger.toByteArray, computed independently of
// twosComplement: (2^(8n) + u) mod 2^(8n) for the smallest n whose sign
// bit is right.
func javaBytes(u *big.Int) []byte {
	for n := 1; ; n++ {
		mod := new(big.Int).Lsh(big.NewInt(1), uint(8*n))
		half := new(big.Int).Rsh(mod, 1)
		if u.Cmp(half) < 0 && u.Cmp(new(big.Int).Neg(half)) >= 0 {
			v := new(big.Int).Add(u, mod)
			v.Mod(v, mod)
			b := v.Bytes()
			for len(b) < n {
				b = append([]byte{0}, b...)
			}
			return b
		}
	}
}

package postgres

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/loanflow/loanflow/schemas"
	"github.com/twmb/avro"
)

// Version of the reader, written to source.version.
const Version = "0.1.0"

func field(name string, typ any) map[string]any { return map[string]any{"name": name, "type": typ} }

func optField(name string, typ any) map[string]any {
	return map[string]any{"name": name, "type": []any{"null", typ}, "default": nil}
}

// rowSchema is the record of a table's row: key columns keep their type,
// the others are nullable (a before-image under REPLICA IDENTITY DEFAULT
// carries only the key).
func rowSchema(t *table, name, ns string) map[string]any {
	fields := make([]any, 0, len(t.cols))
	for i, c := range t.cols {
		if isKey(t, i) {
			fields = append(fields, field(c.field, c.typ.avro))
		} else {
			fields = append(fields, optField(c.field, c.typ.avro))
		}
	}
	dedupeNamed(fields)
	return map[string]any{"type": "record", "name": name, "namespace": ns, "fields": fields}
}

func isKey(t *table, i int) bool {
	for _, k := range t.keyIdx {
		if k == i {
			return true
		}
	}
	return false
}

// keySchema is the record of a table's primary key.
func keySchema(t *table, ns string) map[string]any {
	fields := make([]any, 0, len(t.keyIdx))
	for _, i := range t.keyIdx {
		fields = append(fields, field(t.cols[i].field, t.cols[i].typ.avro))
	}
	dedupeNamed(fields)
	return map[string]any{"type": "record", "name": "Key", "namespace": ns, "fields": fields}
}

// Registry registers schemas and returns their ids. The reader uses a
// Confluent-compatible schema registry through franz-go's sr client.
type Registry interface {
	// Register registers schema (Avro JSON) under subject and returns its
	// id; registering an already registered schema returns its id.
	Register(ctx context.Context, subject, schema string) (int, error)
}

// NewRegistry returns a Registry on the project's registry client
// (schemas.Client, franz-go's sr underneath), which caches ids.
func NewRegistry(url string) (Registry, error) {
	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{url}})
	if err != nil {
		return nil, fmt.Errorf("%w: schema registry client: %v", ErrConfig, err)
	}
	return registryAdapter{cl}, nil
}

// registryAdapter turns the client's incompatibility error into ErrSchema
// with the registry's message (which names the field).
type registryAdapter struct{ cl *schemas.Client }

func (r registryAdapter) Register(ctx context.Context, subject, schema string) (int, error) {
	id, err := r.cl.Register(ctx, subject, schema)
	if err != nil {
		if errors.Is(err, schemas.ErrIncompatible) {
			return 0, fmt.Errorf("%w: registry rejected a new version of %s as incompatible: %v; set the subject's compatibility level or use a new topic", ErrSchema, subject, err)
		}
		var se *schemas.Error
		if errors.As(err, &se) && se.Retryable() {
			return 0, fmt.Errorf("registering %s: %w", subject, err)
		}
		return 0, fmt.Errorf("%w: registering %s: %v", ErrSchema, subject, err)
	}
	return id, nil
}

// codec encodes the records of one table version: Avro with the Confluent
// framing (magic byte 0, 4-byte big-endian schema id).
type codec struct {
	key, value     *avro.Schema
	keyID, valueID int
	fields         []string // Avro field per column
	// Scratch maps reused across records (the encoder copies what it
	// reads); a codec is used by the writer goroutine only.
	keyMap, beforeMap, afterMap, envMap, srcMap map[string]any
}

// newCodec builds and registers the key and value schemas of t under the
// TopicNameStrategy subjects <topic>-key and <topic>-value.
func newCodec(ctx context.Context, reg Registry, t *table) (*codec, error) {
	ns := avroNamespace(t.route.topic)
	val, err := valueSchema(t, ns)
	if err != nil {
		return nil, err
	}
	c := &codec{fields: make([]string, len(t.cols)), keyMap: map[string]any{}, beforeMap: map[string]any{},
		afterMap: map[string]any{}, envMap: map[string]any{}, srcMap: map[string]any{}}
	for i, col := range t.cols {
		c.fields[i] = col.field
	}
	if c.value, c.valueID, err = register(ctx, reg, schemas.ValueSubject(t.route.topic), val); err != nil {
		return nil, err
	}
	if len(t.keyIdx) > 0 {
		if c.key, c.keyID, err = register(ctx, reg, schemas.KeySubject(t.route.topic), keySchema(t, ns)); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// valueSchema is the envelope (schemas.CDCEnvelopeSchema around the row
// record) or, in upsert mode, the row record itself.
func valueSchema(t *table, ns string) (any, error) {
	row := rowSchema(t, "Value", ns)
	if t.route.mode == ModeUpsert {
		return row, nil
	}
	parsed, err := parseJSON(row)
	if err != nil {
		return nil, fmt.Errorf("%w: row schema of %s: %v", ErrSchema, t.qualified(), err)
	}
	env, err := schemas.CDCEnvelopeSchema(t.route.topic, parsed.Root().Fields)
	if err != nil {
		return nil, fmt.Errorf("%w: envelope of %s: %v", ErrSchema, t.qualified(), err)
	}
	if t.route.txmeta {
		if env, err = withTxBlock(env); err != nil { // txmeta.go
			return nil, fmt.Errorf("%w: envelope of %s: %v", ErrSchema, t.qualified(), err)
		}
	}
	return env, nil
}

func parseJSON(schema map[string]any) (*avro.Schema, error) {
	b, err := json.Marshal(schema)
	if err != nil {
		return nil, err
	}
	return avro.Parse(string(b))
}

func register(ctx context.Context, reg Registry, subject string, schema any) (*avro.Schema, int, error) {
	var s *avro.Schema
	var err error
	switch v := schema.(type) {
	case *avro.Schema:
		s = v
	case map[string]any:
		s, err = parseJSON(v)
	}
	if err != nil || s == nil {
		return nil, 0, fmt.Errorf("%w: %s: built an invalid schema: %v", ErrSchema, subject, err)
	}
	id, err := reg.Register(ctx, subject, s.String())
	if err != nil {
		return nil, 0, err
	}
	return s, id, nil
}

// opNames are the envelope's op strings.
var opNames = map[byte]string{opCreate: "c", opUpdate: "u", opDelete: "d", opRead: "r", opTruncate: "t"}

// frame appends the Confluent wire header for schema id.
func frame(dst []byte, id int) []byte {
	dst = append(dst, 0)
	return binary.BigEndian.AppendUint32(dst, uint32(id))
}

// encodeKey encodes the key columns of row (a full row, or a key-only
// before-image); nil when the table has no key.
func (c *codec) encodeKey(dst []byte, t *table, row []any) ([]byte, error) {
	if c.key == nil {
		return nil, nil
	}
	m := c.keyMap
	for _, i := range t.keyIdx {
		if row[i] == nil {
			return nil, fmt.Errorf("%w: key column %s of %s is null", ErrValue, t.cols[i].name, t.qualified())
		}
		m[c.fields[i]] = row[i]
	}
	out, err := c.key.AppendEncode(frame(dst, c.keyID), m)
	if err != nil {
		return nil, fmt.Errorf("%w: key of %s: %v", ErrValue, t.qualified(), err)
	}
	return out, nil
}

func (c *codec) rowMap(m map[string]any, row []any) map[string]any {
	if row == nil {
		return nil
	}
	for i, v := range row {
		m[c.fields[i]] = v
	}
	return m
}

// encodeValue encodes ev as an envelope or, in upsert mode, as the row.
func (c *codec) encodeValue(dst []byte, t *table, ev *event) ([]byte, error) {
	var v any
	if t.route.mode == ModeUpsert {
		v = c.rowMap(c.afterMap, ev.after)
	} else {
		env := c.envMap
		env["before"], env["after"], env["op"], env["ts_ms"], env["source"] = nil, nil, opNames[ev.op], ev.processedMs, ev.source(t, c.srcMap)
		if ev.before != nil {
			env["before"] = c.rowMap(c.beforeMap, ev.before)
		}
		if ev.after != nil {
			env["after"] = c.rowMap(c.afterMap, ev.after)
		}
		if t.route.txmeta {
			env["transaction"] = nil
			if ev.txBlock != nil {
				env["transaction"] = ev.txBlock
			}
		}
		v = env
	}
	out, err := c.value.AppendEncode(frame(dst, c.valueID), v)
	if err != nil {
		return nil, fmt.Errorf("%w: %s change at %s: %v", ErrValue, t.qualified(), ev.lsn, err)
	}
	return out, nil
}

// heartbeatKeyValue is the key value of heartbeat records in a table's
// topic: per key column a sentinel no row is expected to hold
// (HeartbeatKey for strings, the type's minimum for integers, the nil UUID
// for uuid). ok is false for key types without a safe sentinel (the topic
// then gets no heartbeats).
func heartbeatKeyValue(t *table) (map[string]any, bool) {
	if len(t.keyIdx) == 0 {
		return nil, false
	}
	m := map[string]any{}
	for _, i := range t.keyIdx {
		c := t.cols[i]
		typ, logical := c.typ.avro, ""
		if x, ok := typ.(map[string]any); ok {
			typ = x["type"]
			logical, _ = x["logicalType"].(string)
		}
		connect, _ := c.typ.avro.(map[string]any)
		switch {
		case logical == "uuid" || (connect != nil && connect["connect.name"] == dbzUUID):
			m[c.field] = "00000000-0000-0000-0000-000000000000"
		case connect != nil && connect["connect.name"] != nil && connect["connect.type"] == nil:
			return nil, false // a Debezium semantic type (timestamps, dates, decimals)
		case logical != "":
			return nil, false // dates, timestamps, decimals: any value may be a real key
		case typ == "string":
			m[c.field] = HeartbeatKey
		case typ == "int" && connect != nil && connect["connect.type"] == "int16":
			m[c.field] = int32(math.MinInt16) // Debezium's smallint (TypesDebezium)
		case typ == "int":
			m[c.field] = int32(math.MinInt32)
		case typ == "long":
			m[c.field] = int64(math.MinInt64)
		default:
			return nil, false
		}
	}
	return m, true
}

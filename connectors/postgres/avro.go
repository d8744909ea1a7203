package postgres

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/sr"
)

// Version of the reader, written to source.version.
const Version = "0.1.0"

// sourceSchema is the source block of the envelope; it matches
// schemas/avro/cdc_source.avsc field for field.
var sourceSchema = map[string]any{
	"type": "record", "name": "Source", "namespace": "io.loanflow.cdc",
	"fields": []any{
		field("version", "string"),
		field("connector", "string"),
		field("name", "string"),
		field("ts_ms", "long"),
		map[string]any{"name": "snapshot", "type": "string", "default": "false"},
		field("db", "string"),
		optField("sequence", "string"),
		field("schema", "string"),
		field("table", "string"),
		optField("txId", "long"),
		optField("lsn", "long"),
		optField("xmin", "long"),
	},
}

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
	return map[string]any{"type": "record", "name": "Key", "namespace": ns, "fields": fields}
}

// envelopeSchema is the Debezium-style envelope of a table; it is
// schemas/avro/cdc_envelope.avsc with the table's row as Value.
func envelopeSchema(t *table, ns string) map[string]any {
	return map[string]any{
		"type": "record", "name": "Envelope", "namespace": ns,
		"fields": []any{
			optField("before", rowSchema(t, "Value", ns)),
			optField("after", "Value"),
			field("source", sourceSchema),
			field("op", "string"),
			optField("ts_ms", "long"),
		},
	}
}

// Registry registers schemas and returns their ids. The reader uses a
// Confluent-compatible schema registry through franz-go's sr client.
type Registry interface {
	// Register registers schema (Avro JSON) under subject and returns its
	// id; registering an already registered schema returns its id.
	Register(ctx context.Context, subject, schema string) (int, error)
}

// SRRegistry is a Registry on franz-go's sr.Client, caching ids.
type SRRegistry struct {
	cl *sr.Client
	mu struct {
		sync.Mutex
		ids map[[2]string]int
	}
}

// NewSRRegistry returns a Registry talking to the registry at url.
func NewSRRegistry(url string) (*SRRegistry, error) {
	cl, err := sr.NewClient(sr.URLs(url))
	if err != nil {
		return nil, fmt.Errorf("%w: schema registry client: %v", ErrConfig, err)
	}
	r := &SRRegistry{cl: cl}
	r.mu.ids = map[[2]string]int{}
	return r, nil
}

// Register implements Registry.
func (r *SRRegistry) Register(ctx context.Context, subject, schema string) (int, error) {
	k := [2]string{subject, schema}
	r.mu.Lock()
	id, ok := r.mu.ids[k]
	r.mu.Unlock()
	if ok {
		return id, nil
	}
	ss, err := r.cl.CreateSchema(ctx, subject, sr.Schema{Schema: schema, Type: sr.TypeAvro})
	if err != nil {
		var re *sr.ResponseError
		if errors.As(err, &re) && re.StatusCode == 409 {
			return 0, fmt.Errorf("%w: registry rejected a new version of %s as incompatible (%s); set the subject's compatibility or rename the topic", ErrSchema, subject, re.Message)
		}
		return 0, fmt.Errorf("%w: registering %s: %v", ErrSchema, subject, err)
	}
	r.mu.Lock()
	r.mu.ids[k] = ss.ID
	r.mu.Unlock()
	return ss.ID, nil
}

// codec encodes the records of one table version: Avro with the Confluent
// framing (magic byte 0, 4-byte big-endian schema id).
type codec struct {
	key, value     *avro.Schema
	keyID, valueID int
	fields         []string // Avro field per column
}

// newCodec builds and registers the key and value schemas of t under the
// TopicNameStrategy subjects <topic>-key and <topic>-value.
func newCodec(ctx context.Context, reg Registry, t *table) (*codec, error) {
	ns := avroNamespace(t.route.topic)
	var val map[string]any
	if t.route.mode == ModeUpsert {
		val = rowSchema(t, "Value", ns)
	} else {
		val = envelopeSchema(t, ns)
	}
	c := &codec{fields: make([]string, len(t.cols))}
	for i, col := range t.cols {
		c.fields[i] = col.field
	}
	var err error
	if c.value, c.valueID, err = register(ctx, reg, t.route.topic+"-value", val); err != nil {
		return nil, err
	}
	if len(t.keyIdx) > 0 {
		if c.key, c.keyID, err = register(ctx, reg, t.route.topic+"-key", keySchema(t, ns)); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func register(ctx context.Context, reg Registry, subject string, schema map[string]any) (*avro.Schema, int, error) {
	b, err := json.Marshal(schema)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %s: %v", ErrSchema, subject, err)
	}
	s, err := avro.Parse(string(b))
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %s: built an invalid schema: %v", ErrSchema, subject, err)
	}
	id, err := reg.Register(ctx, subject, string(b))
	if err != nil {
		return nil, 0, err
	}
	return s, id, nil
}

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
	m := make(map[string]any, len(t.keyIdx))
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

func (c *codec) rowMap(row []any) map[string]any {
	if row == nil {
		return nil
	}
	m := make(map[string]any, len(row))
	for i, v := range row {
		m[c.fields[i]] = v
	}
	return m
}

// encodeValue encodes ev as an envelope or, in upsert mode, as the row.
func (c *codec) encodeValue(dst []byte, t *table, ev *event) ([]byte, error) {
	var v any
	if t.route.mode == ModeUpsert {
		v = c.rowMap(ev.after)
	} else {
		env := map[string]any{"before": nil, "after": nil, "op": string(ev.op), "ts_ms": ev.processedMs, "source": ev.source(t)}
		if ev.before != nil {
			env["before"] = c.rowMap(ev.before)
		}
		if ev.after != nil {
			env["after"] = c.rowMap(ev.after)
		}
		v = env
	}
	out, err := c.value.AppendEncode(frame(dst, c.valueID), v)
	if err != nil {
		return nil, fmt.Errorf("%w: %s change at %s: %v", ErrValue, t.qualified(), ev.lsn, err)
	}
	return out, nil
}

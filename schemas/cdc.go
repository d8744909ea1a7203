package schemas

import (
	"fmt"
	"strings"

	"github.com/twmb/avro"
)

// CDC operations, the values of the envelope's op field (Debezium's codes).
const (
	OpCreate   = "c" // insert
	OpUpdate   = "u" // update
	OpDelete   = "d" // delete (a tombstone follows it)
	OpRead     = "r" // snapshot read
	OpTruncate = "t" // truncate (before and after are null)
)

// CDCSource is the source block of a change record
// (schemas/avro/cdc_source.avsc).
type CDCSource struct {
	Version   string  `avro:"version" json:"version"`
	Connector string  `avro:"connector" json:"connector"`
	Name      string  `avro:"name" json:"name"`
	TsMs      int64   `avro:"ts_ms" json:"ts_ms"`
	Snapshot  string  `avro:"snapshot" json:"snapshot"`
	DB        string  `avro:"db" json:"db"`
	Sequence  *string `avro:"sequence" json:"sequence,omitempty"`
	Schema    string  `avro:"schema" json:"schema"`
	Table     string  `avro:"table" json:"table"`
	TxID      *int64  `avro:"txId" json:"txId,omitempty"`
	LSN       *int64  `avro:"lsn" json:"lsn,omitempty"`
	Xmin      *int64  `avro:"xmin" json:"xmin,omitempty"`
}

// Change is a typed Debezium-style change record of a table whose rows
// decode into R (a struct with avro tags naming the columns it needs).
// Decode it with a Serde whose schema is CDCEnvelopeSchema of the table's
// topic and R's columns; columns the writer has and R lacks are skipped by
// schema resolution.
type Change[R any] struct {
	Before *R        `avro:"before" json:"before"`
	After  *R        `avro:"after" json:"after"`
	Source CDCSource `avro:"source" json:"source"`
	Op     string    `avro:"op" json:"op"`
	TsMs   *int64    `avro:"ts_ms" json:"ts_ms,omitempty"`
}

// CDCEnvelopeSchema builds the Debezium-style envelope schema of one table
// from its row schema: the generic envelope of cdc_envelope.avsc (docs
// included) with the row record Value holding columns, and both records in
// the namespace named by topic (cdc.<schema>.<table>, each part passed
// through SanitizeName).
//
// columns are the table's columns in order: Name is the column name
// (SanitizeName it), Type its Avro type. A nullable column should be a
// ["null", T] union with Default nil and HasDefault true, so that adding
// it later is a compatible change; columns absent from a REPLICA IDENTITY
// DEFAULT before-image are then null too. Register the result's String()
// under ValueSubject(topic); a new Relation message (schema change) gives a
// new schema and so a new registered version.
func CDCEnvelopeSchema(topic string, columns []avro.SchemaField) (*avro.Schema, error) {
	ns, err := topicNamespace(topic)
	if err != nil {
		return nil, err
	}
	generic, err := avro.Parse(CDCEnvelopeGenericSchema)
	if err != nil {
		return nil, fmt.Errorf("schemas: parsing the generic envelope: %w", err)
	}
	env := generic.Root()
	env.Namespace = ns
	for i := range env.Fields {
		f := &env.Fields[i]
		switch f.Name {
		case "before":
			row := &f.Type.Branches[1]
			row.Namespace = ns
			row.Fields = append([]avro.SchemaField(nil), columns...)
		case "after":
			f.Type.Branches[1] = avro.SchemaNode{Type: ns + ".Value"}
		}
	}
	s, err := env.Schema()
	if err != nil {
		return nil, fmt.Errorf("schemas: building the envelope schema of %s: %w", topic, err)
	}
	return s, nil
}

// CDCKeySchema builds the key schema of a table's change records: record
// Key in the topic's namespace with the primary-key columns. Register its
// String() under KeySubject(topic).
func CDCKeySchema(topic string, keyColumns []avro.SchemaField) (*avro.Schema, error) {
	ns, err := topicNamespace(topic)
	if err != nil {
		return nil, err
	}
	if len(keyColumns) == 0 {
		return nil, fmt.Errorf("schemas: key schema of %s: no key columns (a table needs a primary key or REPLICA IDENTITY to be keyed)", topic)
	}
	key := avro.SchemaNode{
		Type:      "record",
		Name:      "Key",
		Namespace: ns,
		Doc:       "Primary key of a row of " + topic + ".",
		Fields:    append([]avro.SchemaField(nil), keyColumns...),
	}
	s, err := key.Schema()
	if err != nil {
		return nil, fmt.Errorf("schemas: building the key schema of %s: %w", topic, err)
	}
	return s, nil
}

func topicNamespace(topic string) (string, error) {
	if topic == "" {
		return "", fmt.Errorf("schemas: empty CDC topic name")
	}
	parts := strings.Split(topic, ".")
	for i, p := range parts {
		parts[i] = SanitizeName(p)
	}
	return strings.Join(parts, "."), nil
}

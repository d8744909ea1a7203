package postgres

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Replica identity settings (pg_class.relreplident).
const (
	identityDefault = 'd'
	identityNothing = 'n'
	identityFull    = 'f'
	identityIndex   = 'i'
)

// table is one version of a published relation: its columns as of a
// Relation message (or the catalog, for the snapshot) and how it is routed.
// A table is immutable once built; a schema change builds a new version, so
// a change always carries the exact version it was decoded with.
type table struct {
	relID        uint32
	schema, name string
	identity     byte
	cols         []tableCol
	// keyIdx are the primary-key columns, the Kafka record key; empty when
	// the table has no primary key (records then have a null key).
	keyIdx []int
	route  *route
	// src are the positions in the relation (and in pgoutput tuples) of
	// cols when a column filter drops some (see filter.go); nil when every
	// column is written.
	src []int
	// version counts the versions of this relation seen by this process.
	version int
	// err, when set, says why no change of this version can be written
	// (e.g. two columns map to one Avro field): its changes go to the
	// dead-letter topic while the other tables flow. Its columns carry
	// names only.
	err error
	// fallbacks name the columns whose type has no mapping and are carried
	// as their text form (logged once per version).
	fallbacks []string
}

// poisonedTable is the version of a relation that newTable rejected.
func poisonedTable(rel *msgRelation, rt *route, err error) *table {
	t := &table{relID: rel.id, schema: rel.namespace, name: rel.name, identity: rel.replicaIdentity, route: rt}
	for i, c := range rel.columns {
		if rt != nil && !rt.columns.keeps(c.name) {
			continue
		}
		t.cols = append(t.cols, tableCol{name: c.name, field: avroName(c.name), oid: c.typOID, typMod: c.typMod})
		t.src = append(t.src, i)
	}
	if len(t.src) == len(rel.columns) {
		t.src = nil
	}
	t.err = fmt.Errorf("%w: %s cannot be written (%v); its changes go to the dead-letter topic until the table is fixed", ErrSchema, t.qualified(), err)
	return t
}

type tableCol struct {
	name   string // PostgreSQL column name
	field  string // Avro field name
	oid    uint32
	typMod int32
	typ    colType
}

// qualified is schema.table.
func (t *table) qualified() string { return t.schema + "." + t.name }

// sameShape reports whether two versions have the same columns and key,
// in which case no new schema version is needed.
func (t *table) sameShape(o *table) bool {
	if o == nil || len(t.cols) != len(o.cols) || !slices.Equal(t.keyIdx, o.keyIdx) || !slices.Equal(t.src, o.src) {
		return false
	}
	for i := range t.cols {
		a, b := t.cols[i], o.cols[i]
		if a.name != b.name || a.oid != b.oid || a.typMod != b.typMod {
			return false
		}
	}
	return t.identity == o.identity
}

// newTable builds a table version from relation metadata. pk names the
// primary-key columns (from the catalog); when nil, the relation's key
// flags are used if the replica identity is the default (the primary key).
func newTable(rel *msgRelation, pk []string, rt *route) (*table, error) {
	t := &table{relID: rel.id, schema: rel.namespace, name: rel.name, identity: rel.replicaIdentity, route: rt}
	seen := map[string]string{}
	for i, c := range rel.columns {
		if rt != nil && !rt.columns.keeps(c.name) {
			if c.key && rel.replicaIdentity == identityDefault {
				return nil, fmt.Errorf("%w: key column %s.%s is excluded by the table's column filter", ErrConfig, t.qualified(), c.name)
			}
			continue
		}
		t.src = append(t.src, i)
		mode := TypesNative
		if rt != nil {
			mode = rt.types
		}
		ct, err := mapTypeFor(c.typOID, c.typMod, mode)
		if errors.Is(err, ErrUnsupportedType) {
			ct = colType{"string", convString}
			t.fallbacks = append(t.fallbacks, c.name)
		} else if err != nil {
			return nil, fmt.Errorf("column %s.%s: %w", t.qualified(), c.name, err)
		}
		f := avroName(c.name)
		if prev, dup := seen[f]; dup {
			return nil, fmt.Errorf("%w: columns %q and %q of %s both map to Avro field %q", ErrSchema, prev, c.name, t.qualified(), f)
		}
		seen[f] = c.name
		t.cols = append(t.cols, tableCol{name: c.name, field: f, oid: c.typOID, typMod: c.typMod, typ: ct})
		if pk == nil && rel.replicaIdentity == identityDefault && c.key {
			t.keyIdx = append(t.keyIdx, len(t.cols)-1)
		}
	}
	for _, name := range pk {
		i := slices.IndexFunc(t.cols, func(c tableCol) bool { return c.name == name })
		if i < 0 && rt != nil && !rt.columns.keeps(name) {
			return nil, fmt.Errorf("%w: primary-key column %s.%s is excluded by the table's column filter", ErrConfig, t.qualified(), name)
		}
		if i < 0 {
			return nil, fmt.Errorf("%w: primary-key column %q of %s not in the relation", ErrSchema, name, t.qualified())
		}
		t.keyIdx = append(t.keyIdx, i)
	}
	if len(t.src) == len(rel.columns) {
		t.src = nil
	}
	if rt != nil && rt.mode == ModeUpsert && len(t.keyIdx) == 0 {
		return nil, fmt.Errorf("%w: table %s is routed in upsert mode but has no primary key", ErrConfig, t.qualified())
	}
	return t, nil
}

// avroName turns a column name into a valid Avro name: letters, digits and
// underscores, not starting with a digit.
func avroName(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z'):
			b.WriteRune(r)
		case r >= '0' && r <= '9':
			if i == 0 {
				b.WriteByte('_')
			}
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "_"
	}
	return b.String()
}

// avroNamespace turns a topic name into an Avro namespace.
func avroNamespace(topic string) string {
	parts := strings.Split(topic, ".")
	for i, p := range parts {
		parts[i] = avroName(p)
	}
	return strings.Join(parts, ".")
}

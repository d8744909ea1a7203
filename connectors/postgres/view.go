package postgres

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/schemas"
)

// ViewConfig is a flattened upsert topic built from several tables, such as
// customer_360 (customers + credit_profiles + loans). Whenever a change of
// a source table touches a key, the reader runs Query for the touched keys
// and writes each result row, keyed by KeyColumn, to Topic (compacted); a
// key the query no longer returns gets a tombstone.
//
// The query reads the database's current state when the reader processes
// the change, which may include transactions committed after the change
// that triggered it (always so when the reader works through a backlog).
// Stamp says which time a row carries, as updated_at and as the record
// timestamp (docs/design.md, customer_360 stamps): the triggering change's
// commit time (commit, the default: exact while the reader keeps up, but a
// row replayed from a backlog shows later state under an older time), or
// the time its query ran (query: the key's state as of that time, never a
// later one, but a version becomes valid only when the reader read it).
// Fields of the value schema the query does not return are filled from
// the triggering change: source_lsn (its commit LSN), else the field's
// default.
type ViewConfig struct {
	// Topic is the compacted topic, e.g. customer_360. Required.
	Topic string `yaml:"topic"`
	// Query selects the rows of the keys in $1 (a text[]), e.g.
	// "... WHERE c.customer_id = ANY($1)". Required.
	Query string `yaml:"query"`
	// KeyColumn is the result column holding the key (written as an Avro
	// string under <topic>-key). Required.
	KeyColumn string `yaml:"key_column"`
	// ValueSchema is the Avro schema of the value (JSON), or
	// ValueSchemaFile a file holding it. One is required.
	ValueSchema     string `yaml:"value_schema"`
	ValueSchemaFile string `yaml:"value_schema_file"`
	// Sources are the tables whose changes refresh the view, and the column
	// of each holding the view's key.
	Sources []ViewSource `yaml:"sources"`
	// Stamp is commit (default) or query: see above.
	Stamp string `yaml:"stamp"`
}

// View stamps (ViewConfig.Stamp).
const (
	StampCommit = "commit"
	StampQuery  = "query"
)

// Customer360Query builds customer_360 rows (schemas.Customer360Schema)
// from the tables of the API's migration: customers, credit_profiles and
// loans.
const Customer360Query = `SELECT c.customer_id, c.status, c.risk_tier, p.current_score AS score,
	c.credit_limit, c.current_balance,
	EXISTS (SELECT 1 FROM loans l WHERE l.customer_id = c.customer_id AND l.days_past_due > 0) AS delinquent,
	c.version
FROM customers c JOIN credit_profiles p USING (customer_id)
WHERE c.customer_id = ANY($1)`

// Customer360View is the customer_360 view of the API's tables: upsert
// rows in the Customer360 schema keyed by customer_id, refreshed by changes
// of customers, credit_profiles and loans. A customer without a credit
// profile has no row (a tombstone if it had one).
func Customer360View() ViewConfig {
	return ViewConfig{
		Topic: "customer_360", Query: Customer360Query, KeyColumn: "customer_id", ValueSchema: schemas.Customer360Schema,
		Sources: []ViewSource{
			{Table: "public.customers", Column: "customer_id"},
			{Table: "public.credit_profiles", Column: "customer_id"},
			{Table: "public.loans", Column: "customer_id"},
		},
	}
}

// ViewSource is a table feeding a view.
type ViewSource struct {
	Table  string `yaml:"table"`  // schema.table
	Column string `yaml:"column"` // column holding the view key
}

// validate checks v and loads its schema file.
func (v *ViewConfig) validate() error {
	switch {
	case v.Topic == "" || v.Query == "" || v.KeyColumn == "":
		return fmt.Errorf("%w: views: topic, query and key_column are required", ErrConfig)
	case !strings.Contains(v.Query, "$1"):
		return fmt.Errorf("%w: views: %s: the query must select the keys in $1 (e.g. WHERE id = ANY($1))", ErrConfig, v.Topic)
	case len(v.Sources) == 0:
		return fmt.Errorf("%w: views: %s: at least one source table is required", ErrConfig, v.Topic)
	}
	if v.ValueSchema == "" && v.ValueSchemaFile != "" {
		b, err := os.ReadFile(v.ValueSchemaFile)
		if err != nil {
			return fmt.Errorf("%w: views: %s: %v", ErrConfig, v.Topic, err)
		}
		v.ValueSchema = string(b)
	}
	switch v.Stamp {
	case "":
		v.Stamp = StampCommit
	case StampCommit, StampQuery:
	default:
		return fmt.Errorf("%w: views: %s: stamp %q: use %s or %s", ErrConfig, v.Topic, v.Stamp, StampCommit, StampQuery)
	}
	if _, err := avro.Parse(v.ValueSchema); err != nil {
		return fmt.Errorf("%w: views: %s: value schema: %v", ErrConfig, v.Topic, err)
	}
	for i := range v.Sources {
		s := &v.Sources[i]
		if !strings.Contains(s.Table, ".") {
			s.Table = "public." + s.Table
		}
		if s.Column == "" {
			return fmt.Errorf("%w: views: %s: source %s needs a column", ErrConfig, v.Topic, s.Table)
		}
	}
	return nil
}

// viewState is a view's codec and the keys touched in the open Kafka
// transaction. Owned by the writer goroutine.
type viewState struct {
	cfg            *ViewConfig
	value, key     *avro.Schema
	valueID, keyID int
	dirty          map[string]viewTouch
}

type viewTouch struct {
	lsn pglogrepl.LSN
	at  time.Time
}

// touch records the keys a change touches in the views it feeds.
func (w *writer) touchViews(ev *event) {
	q := ev.t.qualified()
	for _, vs := range w.views {
		for _, src := range vs.cfg.Sources {
			if src.Table != q {
				continue
			}
			i := slices.IndexFunc(ev.t.cols, func(c tableCol) bool { return c.name == src.Column })
			if i < 0 {
				continue
			}
			for _, tuple := range [][]colValue{ev.old, ev.new} {
				if i < len(tuple) && tuple[i].kind == kindText {
					vs.dirty[string(tuple[i].data)] = viewTouch{lsn: ev.commitLSN, at: ev.commitTime}
				}
			}
		}
	}
}

// refreshViews writes the current rows of the touched keys, inside the
// Kafka transaction about to commit.
func (w *writer) refreshViews(ctx context.Context) error {
	for _, vs := range w.views {
		if len(vs.dirty) == 0 {
			continue
		}
		if err := w.refreshView(ctx, vs); err != nil {
			return err
		}
		clear(vs.dirty)
	}
	return nil
}

func (w *writer) refreshView(ctx context.Context, vs *viewState) error {
	if err := w.viewCodec(ctx, vs); err != nil {
		return err
	}
	keys := make([]string, 0, len(vs.dirty))
	for k := range vs.dirty {
		keys = append(keys, k)
	}
	rows, err := w.viewConn.Query(ctx, viewQuery(vs.cfg.Query), pgx.QueryResultFormats{pgx.TextFormatCode}, keys)
	if err != nil {
		return fmt.Errorf("view %s: query: %w", vs.cfg.Topic, err)
	}
	seen, asOf, err := w.viewRows(ctx, vs, rows)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if seen[k] {
			continue
		}
		key, err := vs.key.AppendEncode(frame(nil, vs.keyID), k)
		if err != nil {
			return fmt.Errorf("%w: view %s key %q: %v", ErrValue, vs.cfg.Topic, k, err)
		}
		if err := w.produce(ctx, &kgo.Record{Topic: vs.cfg.Topic, Key: key, Timestamp: vs.stamp(k, asOf)}); err != nil {
			return err
		}
	}
	return nil
}

// stamp is the time a row (or tombstone) of key k carries.
func (vs *viewState) stamp(k string, asOf time.Time) time.Time {
	if vs.cfg.Stamp == StampQuery {
		return asOf
	}
	return vs.dirty[k].at
}

// viewAsOfColumn is the column viewQuery adds: the time the query ran.
const viewAsOfColumn = "__loanflow_as_of"

// viewQuery wraps a view's query so that it also returns the time it ran,
// read after its snapshot was taken (every transaction the rows reflect
// committed before it), on one row even when the query returns none.
func viewQuery(q string) string {
	q = strings.TrimRight(strings.TrimSpace(q), ";")
	return "SELECT v.*, s." + viewAsOfColumn + " FROM (SELECT clock_timestamp() AS " + viewAsOfColumn + ") s LEFT JOIN (" + q + ") v ON true"
}

// viewRows encodes and produces the query's rows; it returns the keys seen
// and the time the query ran.
func (w *writer) viewRows(ctx context.Context, vs *viewState, rows pgx.Rows) (map[string]bool, time.Time, error) {
	defer rows.Close()
	fds := rows.FieldDescriptions()
	convs := make([]colType, len(fds))
	keyIdx, asOfIdx := -1, len(fds)-1
	for i, fd := range fds {
		ct, err := mapType(fd.DataTypeOID, fd.TypeModifier)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("view %s column %s: %w", vs.cfg.Topic, fd.Name, err)
		}
		convs[i] = ct
		if fd.Name == vs.cfg.KeyColumn {
			keyIdx = i
		}
	}
	if keyIdx < 0 || keyIdx == asOfIdx {
		return nil, time.Time{}, fmt.Errorf("%w: view %s: query returns no column %s", ErrConfig, vs.cfg.Topic, vs.cfg.KeyColumn)
	}
	seen := map[string]bool{}
	var asOf time.Time
	for rows.Next() {
		raw := rows.RawValues()
		v, err := convs[asOfIdx].conv(raw[asOfIdx])
		if err != nil {
			return nil, asOf, fmt.Errorf("view %s: the query's time: %w", vs.cfg.Topic, err)
		}
		us, ok := v.(int64)
		if !ok {
			return nil, asOf, fmt.Errorf("view %s: the query's time %q", vs.cfg.Topic, raw[asOfIdx])
		}
		asOf = time.UnixMicro(us)
		if raw[keyIdx] == nil {
			continue // the LEFT JOIN's row when the query returns none
		}
		k := string(raw[keyIdx])
		seen[k] = true
		if err := w.viewRow(ctx, vs, fds[:asOfIdx], convs, raw, k, asOf); err != nil {
			return nil, asOf, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, asOf, fmt.Errorf("view %s: %w", vs.cfg.Topic, err)
	}
	return seen, asOf, nil
}

func (w *writer) viewRow(ctx context.Context, vs *viewState, fds []pgconn.FieldDescription, convs []colType, raw [][]byte, k string, asOf time.Time) error {
	touch, stamp := vs.dirty[k], vs.stamp(k, asOf)
	m := map[string]any{"updated_at": stamp, "source_lsn": int64(touch.lsn)}
	for i, fd := range fds {
		if raw[i] == nil {
			m[fd.Name] = nil
			continue
		}
		v, err := convs[i].conv(raw[i])
		if err != nil {
			return w.viewDeadLetter(ctx, vs, k, err)
		}
		m[fd.Name] = v
	}
	key, err := vs.key.AppendEncode(frame(nil, vs.keyID), k)
	if err != nil {
		return w.viewDeadLetter(ctx, vs, k, err)
	}
	val, err := vs.value.AppendEncode(frame(nil, vs.valueID), m)
	if err != nil {
		return w.viewDeadLetter(ctx, vs, k, fmt.Errorf("%w: %v", ErrValue, err))
	}
	return w.produce(ctx, &kgo.Record{Topic: vs.cfg.Topic, Key: key, Value: val, Timestamp: stamp})
}

func (w *writer) viewDeadLetter(ctx context.Context, vs *viewState, key string, cause error) error {
	w.m.deadLetters.Inc()
	w.cfg.Logger.Warn("cdc: view row sent to dead-letter topic", "view", vs.cfg.Topic, "key", key, "error", cause)
	return w.produce(ctx, &kgo.Record{
		Topic: w.cfg.DeadLetterTopic, Key: []byte(key), Value: []byte(cause.Error()),
		Headers: []kgo.RecordHeader{{Key: "error", Value: []byte(cause.Error())}, {Key: "source.topic", Value: []byte(vs.cfg.Topic)}},
	})
}

// viewCodec creates the view's topic and registers its schemas once.
func (w *writer) viewCodec(ctx context.Context, vs *viewState) error {
	if vs.value != nil {
		return nil
	}
	if err := w.ensureTopic(ctx, vs.cfg.Topic, true); err != nil {
		return err
	}
	val, err := avro.Parse(vs.cfg.ValueSchema)
	if err != nil {
		return fmt.Errorf("%w: view %s: %v", ErrConfig, vs.cfg.Topic, err)
	}
	key := avro.MustParse(`"string"`)
	if vs.value, vs.valueID, err = register(ctx, w.reg, schemas.ValueSubject(vs.cfg.Topic), val); err != nil {
		return err
	}
	vs.key, vs.keyID, err = register(ctx, w.reg, schemas.KeySubject(vs.cfg.Topic), key)
	return err
}

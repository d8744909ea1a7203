package postgres

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// columnFilter is a table's column allow-list or deny-list.
type columnFilter struct {
	allow, deny []string
}

func newColumnFilter(allow, deny []string) *columnFilter {
	if len(allow) == 0 && len(deny) == 0 {
		return nil
	}
	return &columnFilter{allow: allow, deny: deny}
}

// keeps reports whether column name is written.
func (f *columnFilter) keeps(name string) bool {
	if f == nil {
		return true
	}
	if len(f.allow) > 0 {
		return slices.Contains(f.allow, name)
	}
	return !slices.Contains(f.deny, name)
}

// names are the columns the filter names (to check they exist).
func (f *columnFilter) names() []string {
	if f == nil {
		return nil
	}
	return append(slices.Clone(f.allow), f.deny...)
}

// project keeps the values of a relation tuple (as pgoutput sends it: one
// value per column of the Relation message) whose columns the table
// writes. Snapshots select only those columns and need no projection.
func (t *table) project(vals []colValue) []colValue {
	if t.src == nil || vals == nil {
		return vals
	}
	out := make([]colValue, 0, len(t.src))
	for _, i := range t.src {
		if i < len(vals) {
			out = append(out, vals[i])
		}
	}
	return out
}

// tableRE compiles a table pattern anchored to the whole schema.table.
func tableRE(p string) (*regexp.Regexp, error) { return regexp.Compile(`^(?:` + p + `)$`) }

// validateFilters checks the table patterns and column lists.
func (c Config) validateFilters() []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	var excl []*regexp.Regexp
	for _, list := range []struct {
		name string
		pats []string
	}{{"include_tables", c.IncludeTables}, {"exclude_tables", c.ExcludeTables}} {
		for _, p := range list.pats {
			re, err := tableRE(p)
			if err != nil {
				bad("%s: %q is not a regular expression: %v", list.name, p, err)
				continue
			}
			if list.name == "exclude_tables" {
				excl = append(excl, re)
			}
		}
	}
	for _, t := range c.Tables {
		if len(t.Columns) > 0 && len(t.ExcludeColumns) > 0 {
			bad("tables: %s: set columns (an allow-list) or exclude_columns, not both", t.Table)
		}
		for _, re := range excl {
			if re.MatchString(t.Table) {
				bad("tables: %s is listed but matches exclude_tables %q; remove one of them", t.Table, re.String())
			}
		}
		if t.Truncate && t.Mode == ModeUpsert {
			bad("tables: %s: truncate: true needs envelope mode (an upsert topic holds no per-key delete for a TRUNCATE)", t.Table)
		}
	}
	return errs
}

// matchedTables lists the ordinary and partitioned tables (not
// partitions, not system schemas) matching IncludeTables and no
// ExcludeTables, in name order.
func matchedTables(ctx context.Context, conn *pgx.Conn, cfg *Config) ([]pubTable, error) {
	if len(cfg.IncludeTables) == 0 {
		return nil, nil
	}
	var incl, excl []*regexp.Regexp
	for _, p := range cfg.IncludeTables {
		re, err := tableRE(p)
		if err != nil {
			return nil, fmt.Errorf("%w: include_tables %q: %v", ErrConfig, p, err)
		}
		incl = append(incl, re)
	}
	for _, p := range cfg.ExcludeTables {
		re, err := tableRE(p)
		if err != nil {
			return nil, fmt.Errorf("%w: exclude_tables %q: %v", ErrConfig, p, err)
		}
		excl = append(excl, re)
	}
	rows, err := conn.Query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema')
		AND n.nspname NOT LIKE 'pg\_%' ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("listing tables for include_tables: %w", err)
	}
	var out []pubTable
	for rows.Next() {
		var t pubTable
		if err := rows.Scan(&t.schema, &t.name); err != nil {
			return nil, err
		}
		q := t.schema + "." + t.name
		match := func(res []*regexp.Regexp) bool {
			return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(q) })
		}
		if match(incl) && !match(excl) {
			out = append(out, t)
		}
	}
	return out, rows.Err()
}

// checkColumns makes sure every column a table's filter names exists and
// that the filter keeps the primary key (the record key): a typo in an
// allow-list would silently drop a column, one in a deny-list would
// silently send it.
func checkColumns(ctx context.Context, conn *pgx.Conn, cfg *Config, pub []pubTable) error {
	for _, p := range pub {
		rt := cfg.routeFor(p.schema, p.name)
		if rt.columns == nil {
			continue
		}
		rel, pk, err := catalogRelation(ctx, conn, p)
		if err != nil {
			return err
		}
		var missing []string
		for _, n := range rt.columns.names() {
			if !slices.ContainsFunc(rel.columns, func(c relColumn) bool { return c.name == n }) {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%w: tables: %s has no column %s (columns/exclude_columns name columns of the table; fix the name or drop it from the list)",
				ErrConfig, p.ident(), strings.Join(missing, ", "))
		}
		for _, k := range pk {
			if !rt.columns.keeps(k) {
				return fmt.Errorf("%w: tables: %s: primary-key column %s must be written (it is the record key): add it to columns or remove it from exclude_columns",
					ErrConfig, p.ident(), k)
			}
		}
	}
	return nil
}

// skipTruncate logs a TRUNCATE of a table whose topic does not take them
// (TableConfig.Truncate false, the default): Debezium consumers such as
// Flink's debezium-avro-confluent format fail on op "t", so it is not
// written; the rows it removed stay in the topic until re-snapshotted.
func (w *writer) skipTruncate(ev *event) error {
	w.cfg.Logger.Warn("cdc: TRUNCATE not written to the topic (set truncate: true on the table to write it as op t)",
		"table", ev.t.qualified(), "topic", ev.t.route.topic, "lsn", ev.lsn.String())
	return nil
}

// publishedOnly drops from a snapshot signal the tables this reader does
// not publish: signals are logical messages that every slot of the
// database decodes, so they also reach readers that do not capture the
// table (and must not send it, whatever its columns hold).
func (w *writer) publishedOnly(tables []string) []string {
	var out []string
	for _, t := range tables {
		q := t
		if !strings.Contains(q, ".") {
			q = "public." + q
		}
		if w.published[q] {
			out = append(out, q)
			continue
		}
		w.cfg.Logger.Warn("cdc: snapshot signal for a table this reader does not publish; ignored", "table", q, "publication", w.cfg.Publication)
	}
	return out
}

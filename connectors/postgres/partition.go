package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Partitioned tables are published as their root (publish_via_partition_root):
// the changes of every partition, present or attached later, are decoded
// with the root's relation and go to the root's one topic, keyed by the
// root's primary key, and the snapshot reads the root (which reads every
// partition). Without it pgoutput would publish each leaf partition under
// its own name, and so to a topic per partition.

// publishViaRoot sets publish_via_partition_root on the publication when
// a table it should hold is partitioned (before its tables are listed:
// pg_publication_tables lists the root only with it set).
func publishViaRoot(ctx context.Context, conn *pgx.Conn, cfg *Config, want []pubTable) error {
	partitioned := false
	for _, t := range want {
		var kind string
		err := conn.QueryRow(ctx, "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", t.ident()).Scan(&kind)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("looking up %s: %w", t.ident(), err)
		}
		if kind == "p" {
			partitioned = true
			break
		}
	}
	if !partitioned {
		return nil
	}
	var viaRoot bool
	if err := conn.QueryRow(ctx, "SELECT pubviaroot FROM pg_publication WHERE pubname = $1", cfg.Publication).Scan(&viaRoot); err != nil {
		return fmt.Errorf("reading publication %s: %w", cfg.Publication, err)
	}
	if viaRoot {
		return nil
	}
	if _, err := conn.Exec(ctx, "ALTER PUBLICATION "+pgx.Identifier{cfg.Publication}.Sanitize()+" SET (publish_via_partition_root = true)"); err != nil {
		return fmt.Errorf("setting publish_via_partition_root on publication %s: %w", cfg.Publication, err)
	}
	cfg.Logger.Info("cdc: partitioned tables are published as their root (publish_via_partition_root)", "publication", cfg.Publication)
	return nil
}

// withPartitions returns tables followed by the leaf partitions of the
// partitioned ones: under publish_via_partition_root the old tuple of an
// update or delete is still built with the partition's replica identity.
func withPartitions(ctx context.Context, conn *pgx.Conn, tables []pubTable) ([]pubTable, error) {
	out := append([]pubTable{}, tables...)
	for _, t := range tables {
		rows, err := conn.Query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_partition_tree(to_regclass($1)) p
			JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE p.isleaf AND p.level > 0 ORDER BY 1, 2`, t.ident())
		if err != nil {
			return nil, fmt.Errorf("listing the partitions of %s: %w", t.ident(), err)
		}
		for rows.Next() {
			var p pubTable
			if err := rows.Scan(&p.schema, &p.name); err != nil {
				rows.Close()
				return nil, err
			}
			out = append(out, p)
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

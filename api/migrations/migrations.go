package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed sql/*.sql
var embedded embed.FS

// FS returns the embedded migration files.
func FS() fs.FS {
	sub, err := fs.Sub(embedded, "sql")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	return sub
}

// Up applies every pending migration to the database at dsn and returns the
// schema version reached.
func Up(ctx context.Context, dsn string) (int64, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return 0, fmt.Errorf("migrations: opening %s: %w", redact(dsn), err)
	}
	defer db.Close()
	return UpDB(ctx, db)
}

// UpTo applies the pending migrations up to version (tests of a migration
// start from the schema before it).
func UpTo(ctx context.Context, dsn string, version int64) (int64, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return 0, fmt.Errorf("migrations: opening %s: %w", redact(dsn), err)
	}
	defer db.Close()
	return upDB(ctx, db, version)
}

// UpDB applies every pending migration through db.
func UpDB(ctx context.Context, db *sql.DB) (int64, error) { return upDB(ctx, db, -1) }

func upDB(ctx context.Context, db *sql.DB, version int64) (int64, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return 0, fmt.Errorf("migrations: creating lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, FS(), goose.WithSessionLocker(locker))
	if err != nil {
		return 0, fmt.Errorf("migrations: creating provider: %w", err)
	}
	if version >= 0 {
		_, err = p.UpTo(ctx, version)
	} else {
		_, err = p.Up(ctx)
	}
	if err != nil {
		return 0, fmt.Errorf("migrations: applying: %w", err)
	}
	v, err := p.GetDBVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrations: reading version: %w", err)
	}
	return v, nil
}

var _ = stdlib.GetDefaultDriver // registers the "pgx" database/sql driver

func redact(dsn string) string {
	if len(dsn) > 24 {
		return dsn[:24] + "…"
	}
	return dsn
}

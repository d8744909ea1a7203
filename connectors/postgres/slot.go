package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sessionParams make text output parseable whatever the server defaults.
var sessionParams = map[string]string{"TimeZone": "UTC", "DateStyle": "ISO, YMD", "bytea_output": "hex", "extra_float_digits": "3", "IntervalStyle": "iso_8601"}

func connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: database_url: %v", ErrConfig, err)
	}
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to postgres: %w", err)
	}
	return conn, nil
}

func connectReplication(ctx context.Context, dsn string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: database_url: %v", ErrConfig, err)
	}
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening replication connection: %w", err)
	}
	return conn, nil
}

// slotInfo is a row of pg_replication_slots.
type slotInfo struct {
	exists         bool
	plugin         string
	confirmedFlush pglogrepl.LSN
	activePID      *int32
	walStatus      string
}

func querySlot(ctx context.Context, conn *pgx.Conn, name string) (slotInfo, error) {
	var (
		s       slotInfo
		flush   *string
		plugin  *string
		status  *string
		slotTyp string
	)
	err := conn.QueryRow(ctx, `SELECT slot_type, plugin, confirmed_flush_lsn::text, active_pid, wal_status
		FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, name).
		Scan(&slotTyp, &plugin, &flush, &s.activePID, &status)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("querying slot %s: %w", name, err)
	}
	s.exists = true
	if plugin != nil {
		s.plugin = *plugin
	}
	if status != nil {
		s.walStatus = *status
	}
	if flush != nil {
		if s.confirmedFlush, err = pglogrepl.ParseLSN(*flush); err != nil {
			return s, fmt.Errorf("slot %s: %w", name, err)
		}
	}
	if slotTyp != "logical" || s.plugin != "pgoutput" {
		return s, fmt.Errorf("%w: slot %s is a %s slot with plugin %q; the reader needs a logical pgoutput slot (drop it or pick another name)", ErrConfig, name, slotTyp, s.plugin)
	}
	return s, nil
}

// terminateSlotUser ends the walsender still attached to the slot (a killed
// predecessor whose connection the server has not noticed yet). The
// predecessor is already fenced in Kafka, so it can no longer commit.
func terminateSlotUser(ctx context.Context, conn *pgx.Conn, name string) error {
	for i := 0; i < 50; i++ {
		s, err := querySlot(ctx, conn, name)
		if err != nil || !s.exists || s.activePID == nil {
			return err
		}
		if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", *s.activePID); err != nil {
			return fmt.Errorf("terminating walsender %d of slot %s: %w", *s.activePID, name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("slot %s stays in use by another process", name)
}

func dropSlot(ctx context.Context, conn *pgx.Conn, name string) error {
	if err := terminateSlotUser(ctx, conn, name); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name); err != nil {
		return fmt.Errorf("dropping slot %s: %w", name, err)
	}
	return nil
}

// checkSlot compares the slot with the position committed in Kafka: the
// reader never moves the slot past that position, so a slot that is gone
// or ahead of it lost WAL the reader has not written.
func checkSlot(s slotInfo, pos Position, name string) error {
	if !s.exists {
		return fmt.Errorf("%w: slot %s does not exist, but Kafka holds position %s for it: the WAL after %s is gone; to start over with a new snapshot, delete the position of reader %q (or use a new reader name)",
			ErrSlotGone, name, pos.FlushLSN, pos.FlushLSN, pos.Slot)
	}
	if s.walStatus == "lost" {
		return fmt.Errorf("%w: slot %s was invalidated (wal_status lost, max_slot_wal_keep_size exceeded); WAL after %s is gone", ErrSlotGone, name, pos.FlushLSN)
	}
	if s.confirmedFlush > pos.FlushLSN {
		return fmt.Errorf("%w: slot %s confirmed_flush_lsn is %s but Kafka's committed position is %s: the slot was dropped and recreated or advanced by someone else, and the %d bytes of WAL in between were never read; start over with a new snapshot (new reader name) after checking what happened",
			ErrSlotGap, name, s.confirmedFlush, pos.FlushLSN, uint64(s.confirmedFlush-pos.FlushLSN))
	}
	return nil
}

// serverIdent is what IDENTIFY_SYSTEM says about the server, plus its
// major version.
type serverIdent struct {
	systemID string
	timeline int32
	walEnd   pglogrepl.LSN // flushed WAL end when the session started
	major    int
}

func identify(ctx context.Context, repl *pgconn.PgConn) (serverIdent, error) {
	res, err := pglogrepl.IdentifySystem(ctx, repl)
	if err != nil {
		return serverIdent{}, fmt.Errorf("identifying the server: %w", err)
	}
	id := serverIdent{systemID: res.SystemID, timeline: res.Timeline, walEnd: res.XLogPos}
	v := repl.ParameterStatus("server_version")
	if i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' }); i > 0 {
		v = v[:i]
	}
	id.major, _ = strconv.Atoi(v)
	return id, nil
}

// checkServer compares the server with the identity stored in the
// position: resuming against another cluster (or a restored copy, or
// another timeline) would skip that server's changes whose LSNs happen to
// lie below the position, and confirm an LSN the server never wrote.
func checkServer(id serverIdent, pos Position, slot string, allowTimeline bool) error {
	const fix = "the position in Kafka was read from another server's WAL; if this server is a restored or different cluster, start over with a new snapshot (a new reader name, or `loanflow cdc reset` to delete the position) after checking what happened"
	if pos.SystemID != "" && pos.SystemID != id.systemID {
		return fmt.Errorf("%w: slot %s: the server's system identifier is %s but the committed position (%s) was read from system %s; %s",
			ErrSlotMismatch, slot, id.systemID, pos.FlushLSN, pos.SystemID, fix)
	}
	if pos.Timeline != 0 && pos.Timeline != id.timeline && !allowTimeline {
		return fmt.Errorf("%w: slot %s: the server is on timeline %d but the committed position (%s) was read on timeline %d (point-in-time recovery or a promotion forked the history); if this is a failover to a standby whose slot was synchronized (failover slots, PostgreSQL 17) start once with allow_timeline_change: true, otherwise %s",
			ErrSlotMismatch, slot, id.timeline, pos.FlushLSN, pos.Timeline, fix)
	}
	if pos.FlushLSN > id.walEnd {
		return fmt.Errorf("%w: slot %s: the server's WAL ends at %s, before the committed position %s; %s",
			ErrSlotMismatch, slot, id.walEnd, pos.FlushLSN, fix)
	}
	return nil
}

// createSlotCommand is CREATE_REPLICATION_SLOT with an exported snapshot;
// on PostgreSQL 17 and later the slot is created with failover = true so
// standbys synchronise it and it survives a promotion.
func createSlotCommand(slot string, major int) string {
	name := pgx.Identifier{slot}.Sanitize()
	if major >= 17 {
		return "CREATE_REPLICATION_SLOT " + name + " LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"
	}
	return "CREATE_REPLICATION_SLOT " + name + " LOGICAL pgoutput EXPORT_SNAPSHOT"
}

// slotPrefix is the prefix of the logical message that carries a slot's
// nonce, written right after the reader creates the slot.
const slotPrefix = "loanflow.slot"

// newNonce returns a random slot nonce.
func newNonce() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// emitNonce writes the slot's nonce into the WAL (a non-transactional
// logical message, decoded by the slot as its first message) as
// "<slot>:<nonce>": logical messages reach every slot of the database, and
// another reader's slot must not take it for its own (nonceFor).
func emitNonce(ctx context.Context, conn *pgx.Conn, slot, nonce string) error {
	if _, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(false, $1, $2)", slotPrefix, slot+":"+nonce); err != nil {
		return fmt.Errorf("writing the slot nonce: %w", err)
	}
	return nil
}

// nonceFor returns the nonce of a slot nonce message if it is slot's: a
// message of another slot of the database is not (ok false); one without
// a slot name (written before they carried it) is.
func nonceFor(slot, content string) (string, bool) {
	name, nonce, found := strings.Cut(content, ":")
	if !found {
		return content, true
	}
	return nonce, name == slot
}

// pubTable is a published table.
type pubTable struct{ schema, name string }

func (p pubTable) ident() string { return pgx.Identifier{p.schema, p.name}.Sanitize() }

// setupPublication creates the publication for the configured tables, or
// adopts an existing one and adds configured tables it lacks; it returns
// the published tables.
func setupPublication(ctx context.Context, conn *pgx.Conn, cfg *Config) ([]pubTable, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", cfg.Publication).Scan(&exists); err != nil {
		return nil, fmt.Errorf("querying publication %s: %w", cfg.Publication, err)
	}
	want := make([]pubTable, 0, len(cfg.Tables))
	for _, t := range cfg.Tables {
		s, n, _ := strings.Cut(t.Table, ".")
		want = append(want, pubTable{s, n})
	}
	matched, err := matchedTables(ctx, conn, cfg) // include_tables (filter.go)
	if err != nil {
		return nil, err
	}
	for _, t := range matched {
		if !containsTable(want, t) {
			want = append(want, t)
		}
	}
	for _, v := range cfg.Views {
		for _, src := range v.Sources {
			s, n, _ := strings.Cut(src.Table, ".")
			if !containsTable(want, pubTable{s, n}) {
				want = append(want, pubTable{s, n})
			}
		}
	}
	if !exists {
		if len(want) == 0 {
			return nil, fmt.Errorf("%w: publication %s does not exist and no tables are configured", ErrConfig, cfg.Publication)
		}
		idents := make([]string, len(want))
		for i, t := range want {
			idents[i] = t.ident()
		}
		sql := "CREATE PUBLICATION " + pgx.Identifier{cfg.Publication}.Sanitize() + " FOR TABLE " + strings.Join(idents, ", ")
		if _, err := conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("creating publication %s: %w", cfg.Publication, err)
		}
	}
	if err := publishViaRoot(ctx, conn, cfg, want); err != nil { // partition.go
		return nil, err
	}
	have, err := publishedTables(ctx, conn, cfg.Publication)
	if err != nil {
		return nil, err
	}
	for _, t := range want {
		if !containsTable(have, t) {
			sql := "ALTER PUBLICATION " + pgx.Identifier{cfg.Publication}.Sanitize() + " ADD TABLE " + t.ident()
			if _, err := conn.Exec(ctx, sql); err != nil {
				return nil, fmt.Errorf("adding %s to publication %s: %w", t.ident(), cfg.Publication, err)
			}
			have = append(have, t)
		}
	}
	if len(want) == 0 {
		return have, nil // an adopted publication: its tables are the config
	}
	// A table removed from the config leaves the publication, so its WAL
	// is no longer decoded for the slot.
	kept := have[:0]
	for _, t := range have {
		if containsTable(want, t) {
			kept = append(kept, t)
			continue
		}
		sql := "ALTER PUBLICATION " + pgx.Identifier{cfg.Publication}.Sanitize() + " DROP TABLE " + t.ident()
		if _, err := conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("removing %s from publication %s: %w", t.ident(), cfg.Publication, err)
		}
		cfg.Logger.Info("cdc: table removed from the publication (no longer configured)", "table", t.ident(), "publication", cfg.Publication)
	}
	return kept, nil
}

func containsTable(ts []pubTable, t pubTable) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}

func publishedTables(ctx context.Context, conn *pgx.Conn, pub string) ([]pubTable, error) {
	rows, err := conn.Query(ctx, "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2", pub)
	if err != nil {
		return nil, fmt.Errorf("listing tables of publication %s: %w", pub, err)
	}
	var out []pubTable
	for rows.Next() {
		var t pubTable
		if err := rows.Scan(&t.schema, &t.name); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// checkIdentity makes sure every published table's REPLICA IDENTITY lets
// the reader emit complete rows: a table with TOAST-able columns needs FULL,
// so an UPDATE that leaves a TOASTed value unchanged still carries it in the
// old tuple (the reader never emits such a value as null).
func checkIdentity(ctx context.Context, conn *pgx.Conn, cfg *Config, tables []pubTable) error {
	tables, err := withPartitions(ctx, conn, tables) // partition.go: a partition's identity makes the old tuple
	if err != nil {
		return err
	}
	for _, t := range tables {
		var ident string
		var toastable []string
		err := conn.QueryRow(ctx, `SELECT c.relreplident::text, coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE ty.typstorage <> 'p'), '{}')
			FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
			JOIN pg_type ty ON ty.oid = a.atttypid
			WHERE c.oid = $1::regclass GROUP BY c.relreplident`, t.ident()).Scan(&ident, &toastable)
		if err != nil {
			return fmt.Errorf("checking replica identity of %s: %w", t.ident(), err)
		}
		if ident == string(identityNothing) {
			return fmt.Errorf("%w: %s has REPLICA IDENTITY NOTHING, so deletes and updates carry no key; set REPLICA IDENTITY DEFAULT (with a primary key) or FULL", ErrReplicaIdentity, t.ident())
		}
		if ident == string(identityFull) || len(toastable) == 0 {
			continue
		}
		if !cfg.EnsureReplicaIdentityFull {
			return fmt.Errorf("%w: %s has TOAST-able columns (%s) but REPLICA IDENTITY is not FULL, so an UPDATE that leaves a large value unchanged would not carry it; run ALTER TABLE %s REPLICA IDENTITY FULL, or set ensure_replica_identity_full: true",
				ErrReplicaIdentity, t.ident(), strings.Join(toastable, ", "), t.ident())
		}
		if _, err := conn.Exec(ctx, "ALTER TABLE "+t.ident()+" REPLICA IDENTITY FULL"); err != nil {
			return fmt.Errorf("setting REPLICA IDENTITY FULL on %s: %w", t.ident(), err)
		}
		cfg.Logger.Info("cdc: set REPLICA IDENTITY FULL", "table", t.ident())
	}
	return nil
}

// catalogRelation builds the relation of a table from the catalog, as a
// Relation message would describe it (used by the snapshot, which reads
// before any Relation message arrives).
func catalogRelation(ctx context.Context, q catalogQuerier, t pubTable) (*msgRelation, []string, error) {
	rel := &msgRelation{namespace: t.schema, name: t.name}
	var ident string
	if err := q.QueryRow(ctx, "SELECT c.oid, c.relreplident::text FROM pg_class c WHERE c.oid = $1::regclass", t.ident()).Scan(&rel.id, &ident); err != nil {
		return nil, nil, fmt.Errorf("looking up %s: %w", t.ident(), err)
	}
	rel.replicaIdentity = ident[0]
	rows, err := q.Query(ctx, `SELECT attname, atttypid, atttypmod FROM pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum`, rel.id)
	if err != nil {
		return nil, nil, fmt.Errorf("columns of %s: %w", t.ident(), err)
	}
	for rows.Next() {
		var c relColumn
		if err := rows.Scan(&c.name, &c.typOID, &c.typMod); err != nil {
			return nil, nil, err
		}
		rel.columns = append(rel.columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	pk, err := primaryKey(ctx, q, rel.id)
	return rel, pk, err
}

// catalogQuerier is a connection or a transaction.
type catalogQuerier interface {
	querier
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// querier is what primaryKey needs (a connection or a transaction).
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// primaryKey returns the primary-key columns of relation relid in key
// order (an empty, non-nil slice when there is none).
func primaryKey(ctx context.Context, q querier, relid uint32) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT a.attname FROM pg_index i
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)`, relid)
	if err != nil {
		return nil, fmt.Errorf("primary key of relation %d: %w", relid, err)
	}
	pk := []string{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		pk = append(pk, n)
	}
	return pk, rows.Err()
}

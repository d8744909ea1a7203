package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// snapshotter reads every published table inside the snapshot exported by
// slot creation, so the rows it emits (op r) are exactly the state at the
// slot's consistent point and streaming continues with the first
// transaction after it: a row committed during the snapshot is either in
// the snapshot or in the stream, never both, never neither.
type snapshotter struct {
	cfg       *Config
	m         *metrics
	out       chan<- []item
	tables    map[uint32]*table
	db        string
	lsn       pglogrepl.LSN
	at        time.Time
	batch     []item
	rows      int64
	expected  int64
	prev      *event
	lastLog   time.Time
	xid       uint32
	cur       *table // the table being read
	prevRow   []colValue
	prevTable *table
	done      []string // tables read completely
}

// createSlotWithSnapshot creates the slot on the replication connection and
// returns its consistent point and exported snapshot. The snapshot lives
// until the next command on repl, so it must be imported before repl is
// used again.
func createSlotWithSnapshot(ctx context.Context, repl *pgconn.PgConn, slot string, major int) (pglogrepl.LSN, string, error) {
	res, err := pglogrepl.ParseCreateReplicationSlot(repl.Exec(ctx, createSlotCommand(slot, major)))
	if err != nil {
		return 0, "", fmt.Errorf("creating slot %s: %w", slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, "", fmt.Errorf("slot %s consistent point: %w", slot, err)
	}
	return lsn, res.SnapshotName, nil
}

// run reads the tables in the imported snapshot and queues their rows,
// committing a position mark every snapshot_txn_max_rows rows and a final
// mark that moves the position to the consistent point.
func (s *snapshotter) run(ctx context.Context, conn *pgx.Conn, snapshotName string, pub []pubTable) error {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("beginning snapshot transaction: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+strings.ReplaceAll(snapshotName, "'", "''")+"'"); err != nil {
		return fmt.Errorf("importing snapshot %s: %w", snapshotName, err)
	}
	tabs, counts, err := s.prepare(ctx, tx, pub)
	if err != nil {
		return err
	}
	if err := tx.QueryRow(ctx, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").Scan(&s.xid); err != nil {
		return fmt.Errorf("reading the snapshot's xmin: %w", err)
	}
	s.cfg.Logger.Info("cdc: snapshot started", "slot", s.cfg.Slot, "lsn", s.lsn.String(), "tables", len(tabs), "rows", s.expected)
	for i, t := range tabs {
		s.cur = t
		if err := s.table(ctx, tx, t, counts[i]); err != nil {
			return err
		}
		s.done = append(s.done, t.qualified())
	}
	if s.prev != nil {
		s.prev.snapshot = "last"
		s.add(ctx, item{kind: itChange, ev: s.prev})
	}
	names := make([]string, len(pub))
	for i, p := range pub {
		names[i] = p.schema + "." + p.name
	}
	s.batch = append(s.batch, item{kind: itSnapMark, final: true, tables: names, pos: &Position{LSN: s.lsn, Complete: true, FlushLSN: s.lsn}})
	if err := s.flush(ctx); err != nil {
		return err
	}
	s.m.snapProgress.Set(1)
	s.cfg.Logger.Info("cdc: snapshot read", "slot", s.cfg.Slot, "rows", s.rows)
	return tx.Commit(ctx)
}

func (s *snapshotter) prepare(ctx context.Context, tx pgx.Tx, pub []pubTable) ([]*table, []int64, error) {
	var (
		tabs   []*table
		counts []int64
	)
	for _, p := range pub {
		rel, pk, err := catalogRelation(ctx, tx, p)
		if err != nil {
			return nil, nil, err
		}
		rt := s.cfg.routeFor(p.schema, p.name)
		t, err := newTable(rel, pk, rt)
		if err != nil {
			s.cfg.Logger.Error("cdc: table cannot be written; its rows go to the dead-letter topic", "table", p.ident(), "error", err)
			t = poisonedTable(rel, rt, err)
		}
		warnFallbacks(s.cfg, t)
		s.tables[rel.id] = t
		var n int64
		// The planner's estimate, not count(*): counting a 10 GB table
		// would read it twice. Progress is therefore approximate.
		if err := tx.QueryRow(ctx, "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::regclass", p.ident()).Scan(&n); err != nil {
			return nil, nil, fmt.Errorf("estimating the rows of %s: %w", p.ident(), err)
		}
		s.m.snapExpected.WithLabelValues(t.qualified()).Set(float64(n))
		s.expected += n
		tabs, counts = append(tabs, t), append(counts, n)
	}
	return tabs, counts, nil
}

// table streams the rows of one table (text format, one row at a time) in
// key order, so an interrupted snapshot can continue after the last key
// committed.
func (s *snapshotter) table(ctx context.Context, tx pgx.Tx, t *table, expected int64) error {
	cols := make([]string, len(t.cols))
	for i, c := range t.cols {
		cols[i] = pgx.Identifier{c.name}.Sanitize()
	}
	sql := "SELECT " + strings.Join(cols, ", ") + " FROM " + pgx.Identifier{t.schema, t.name}.Sanitize()
	if len(t.keyIdx) > 0 {
		keys := make([]string, len(t.keyIdx))
		for i, k := range t.keyIdx {
			keys[i] = cols[k]
		}
		sql += " ORDER BY " + strings.Join(keys, ", ")
	}
	rr := tx.Conn().PgConn().ExecParams(ctx, sql, nil, nil, nil, nil)
	counter := s.m.snapRows.WithLabelValues(t.qualified())
	for rr.NextRow() {
		if err := s.row(ctx, t, rr.Values()); err != nil {
			rr.Close()
			return err
		}
		counter.Inc()
	}
	if _, err := rr.Close(); err != nil {
		return fmt.Errorf("reading %s in the snapshot: %w", t.qualified(), err)
	}
	s.cfg.Logger.Info("cdc: snapshot table done", "table", t.qualified(), "rows", expected)
	return nil
}

// row queues one row (holding the previous back so the last row of the
// snapshot can be marked "last").
func (s *snapshotter) row(ctx context.Context, t *table, vals [][]byte) error {
	tuple := copyTuple(vals)
	ev := &event{op: opRead, t: t, new: tuple, lsn: s.lsn, commitLSN: s.lsn, xid: s.xid, commitTime: s.at, snapshot: "true", db: s.db}
	_ = ev.convert()
	if s.prev != nil {
		if err := s.add(ctx, item{kind: itChange, ev: s.prev}); err != nil {
			return err
		}
	}
	s.prev = ev
	s.rows++
	if s.rows%int64(s.cfg.SnapshotTxnMaxRows) == 0 {
		// A chunk boundary: everything up to the previous row is queued,
		// so the mark commits through it.
		prog := &SnapshotProgress{ConsistentLSN: s.lsn, Rows: s.rows - 1, XID: s.xid, Done: slices.Clone(s.done)}
		if pt := s.prevTuple(); pt != nil {
			prog.Table, prog.LastKey = s.prevTable.qualified(), keyText(s.prevTable, pt)
		}
		s.batch = append(s.batch, item{kind: itSnapMark, pos: &Position{Snapshot: prog}})
	}
	s.prevRow, s.prevTable = tuple, t
	s.progress()
	return nil
}

// prevTuple is the row queued last (before the current one), if it is of
// a table with a key: a mark's last key.
func (s *snapshotter) prevTuple() []colValue {
	if s.prevTable == nil || len(s.prevTable.keyIdx) == 0 {
		return nil
	}
	return s.prevRow
}

func (s *snapshotter) progress() {
	if s.expected > 0 {
		s.m.snapProgress.Set(float64(s.rows) / float64(s.expected))
	}
	if time.Since(s.lastLog) >= 5*time.Second {
		s.lastLog = time.Now()
		s.cfg.Logger.Info("cdc: snapshot progress", "slot", s.cfg.Slot, "rows", s.rows, "of", s.expected)
	}
}

func (s *snapshotter) add(ctx context.Context, it item) error {
	s.batch = append(s.batch, it)
	if len(s.batch) >= batchMaxItems {
		return s.flush(ctx)
	}
	return nil
}

func (s *snapshotter) flush(ctx context.Context) error {
	if len(s.batch) == 0 {
		return nil
	}
	select {
	case s.out <- s.batch:
		s.batch = make([]item, 0, batchMaxItems)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

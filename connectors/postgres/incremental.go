package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Incremental (watermark-based) snapshots, the DBLog approach: while the
// slot streams, a chunker goroutine writes a low watermark (a logical
// message), reads the next chunk of a table in key order, hands it to the
// writer and writes a high watermark. The writer, which sees the stream in
// WAL order, notes the keys of that table changed between the two
// watermarks; at the high watermark it writes the chunk's other rows as
// snapshot reads (op r, source.snapshot "incremental") and commits the
// chunk's last key in the position. A change inside the window is newer
// than (or equal to) the chunk's row, so dropping that row loses nothing;
// a change after the high watermark comes after the row in the topic. An
// interrupted chunk is read again after the last committed key.

const (
	// watermarkPrefix is the prefix of chunk watermarks ("low:<id>",
	// "high:<id>").
	watermarkPrefix = "loanflow.snapshot"
	// SignalPrefix is the prefix of signals to a running reader, written
	// with pg_logical_emit_message(false, 'loanflow.signal', <json>):
	// {"snapshot": ["schema.table", ...]} queues incremental snapshots.
	SignalPrefix = "loanflow.signal"
)

// chunkReq asks the chunker for the rows of table after key after.
type chunkReq struct {
	id    string
	table string   // schema.table
	after []string // text of the key columns; nil from the start
}

// chunk is a chunk read between its watermarks.
type chunk struct {
	id      string
	t       *table
	rows    [][]colValue
	lastKey []string
	done    bool // fewer rows than asked: the table is complete
	xid     uint32
	err     error // the table cannot be read (gone, no access): skipped
	// estimate is the table's row count as estimated before its first
	// chunk (0 for later chunks).
	estimate int64
}

// signalMsg is the content of a loanflow.signal message.
type signalMsg struct {
	Snapshot []string `json:"snapshot"`
}

// SignalSnapshot asks the reader streaming dsn's database to snapshot
// tables incrementally (`loanflow cdc snapshot --table`): the request is a
// logical message, so the reader sees it in WAL order and records it in
// its position exactly once.
func SignalSnapshot(ctx context.Context, dsn string, tables []string) error {
	_, err := RequestSnapshot(ctx, dsn, tables)
	return err
}

// RequestSnapshot is SignalSnapshot returning the signal's LSN: the
// reader's position names it in Completed (Request) once every table it
// asked for is read (WatchPositions follows it).
func RequestSnapshot(ctx context.Context, dsn string, tables []string) (pglogrepl.LSN, error) {
	for i, t := range tables {
		if !strings.Contains(t, ".") {
			tables[i] = "public." + t
		}
	}
	conn, err := connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, t := range tables {
		s, n, _ := strings.Cut(t, ".")
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{s, n}.Sanitize()).Scan(&ok); err != nil || !ok {
			return 0, fmt.Errorf("%w: table %s does not exist (%v)", ErrConfig, t, err)
		}
	}
	b, _ := json.Marshal(signalMsg{Snapshot: tables})
	var lsnText string
	if err := conn.QueryRow(ctx, "SELECT pg_logical_emit_message(false, $1, $2)::text", SignalPrefix, string(b)).Scan(&lsnText); err != nil {
		return 0, fmt.Errorf("writing the snapshot signal: %w", err)
	}
	return pglogrepl.ParseLSN(lsnText)
}

// chunker reads chunks on its own connection. One goroutine (run), owned
// by the session.
type chunker struct {
	cfg    *Config
	reqs   <-chan chunkReq
	out    chan<- *chunk
	conn   *pgx.Conn
	tables map[string]*table // last version per table, so codecs are reused
}

func (c *chunker) run(ctx context.Context) error {
	conn, err := connect(ctx, c.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	c.conn = conn
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-c.reqs:
			if err := c.one(ctx, req); err != nil {
				return err
			}
		}
	}
}

// one writes the low watermark, reads the chunk, hands it over and writes
// the high watermark (the writer takes the chunk when the high watermark
// reaches it in the stream).
func (c *chunker) one(ctx context.Context, req chunkReq) error {
	if err := c.mark(ctx, "low:"+req.id); err != nil {
		return err
	}
	ch := c.read(ctx, req)
	if ch.err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	select {
	case c.out <- ch:
	case <-ctx.Done():
		return nil
	}
	return c.mark(ctx, "high:"+req.id)
}

func (c *chunker) mark(ctx context.Context, content string) error {
	if _, err := c.conn.Exec(ctx, "SELECT pg_logical_emit_message(false, $1, $2)", watermarkPrefix, content); err != nil {
		return fmt.Errorf("writing snapshot watermark: %w", err)
	}
	return nil
}

// read selects the chunk (text format) in key order.
func (c *chunker) read(ctx context.Context, req chunkReq) *chunk {
	ch := &chunk{id: req.id}
	s, n, _ := strings.Cut(req.table, ".")
	rel, pk, err := catalogRelation(ctx, c.conn, pubTable{s, n})
	if err != nil {
		ch.err = err
		return ch
	}
	t, err := newTable(rel, pk, c.cfg.routeFor(s, n))
	if err != nil {
		t = poisonedTable(rel, c.cfg.routeFor(s, n), err)
	}
	if old := c.tables[req.table]; old != nil && old.sameShape(t) {
		t = old
	}
	c.tables[req.table] = t
	ch.t = t
	if req.after == nil {
		ch.estimate = c.estimate(ctx, t)
	}
	sql, args := chunkQuery(t, req.after, c.cfg.SnapshotTxnMaxRows)
	if ch.err = c.query(ctx, ch, sql, args); ch.err != nil {
		ch.err = fmt.Errorf("reading a chunk of %s: %w", req.table, ch.err)
		return ch
	}
	ch.done = len(ch.rows) < c.cfg.SnapshotTxnMaxRows
	if len(ch.rows) > 0 {
		ch.lastKey = keyText(t, ch.rows[len(ch.rows)-1])
	}
	return ch
}

// estimate is t's row count as pg_class.reltuples has it, or count(*)
// when the table was never analyzed (reltuples -1 since PostgreSQL 14, 0
// before); 0 when neither answers.
func (c *chunker) estimate(ctx context.Context, t *table) int64 {
	ident := pgx.Identifier{t.schema, t.name}.Sanitize()
	var n float64
	var pages int64
	if err := c.conn.QueryRow(ctx, "SELECT reltuples::float8, relpages::int8 FROM pg_class WHERE oid = $1::regclass", ident).Scan(&n, &pages); err != nil {
		return 0
	}
	if n > 0 || (n == 0 && pages > 0) {
		return int64(n)
	}
	var count int64
	if err := c.conn.QueryRow(ctx, "SELECT count(*) FROM "+ident).Scan(&count); err != nil {
		return 0
	}
	return count
}

// query runs the chunk's query in a REPEATABLE READ transaction whose
// snapshot sees every transaction whose commit is recorded: a snapshot
// that still counts a committed transaction (pg_xact_status) as in
// progress, which happens for an instant after its commit record (longer
// while it waits for a synchronous standby), is taken again.
func (c *chunker) query(ctx context.Context, ch *chunk, sql string, args [][]byte) error {
	for attempt := 0; ; attempt++ {
		tx, err := c.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return err
		}
		var racing int
		err = tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
			(SELECT count(*) FROM pg_snapshot_xip(pg_current_snapshot()) x WHERE pg_xact_status(x) = 'committed')`).Scan(&ch.xid, &racing)
		if err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		if racing > 0 && attempt < 200 {
			_ = tx.Rollback(ctx)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		rr := c.conn.PgConn().ExecParams(ctx, sql, args, nil, nil, nil)
		for rr.NextRow() {
			ch.rows = append(ch.rows, copyTuple(rr.Values()))
		}
		_, err = rr.Close()
		_ = tx.Rollback(ctx)
		return err
	}
}

// chunkQuery selects up to n rows of t after key after, in key order
// (tables without a primary key: in ctid order).
func chunkQuery(t *table, after []string, n int) (string, [][]byte) {
	cols := make([]string, len(t.cols))
	for i, c := range t.cols {
		cols[i] = pgx.Identifier{c.name}.Sanitize()
	}
	var keys []string
	for _, i := range t.keyIdx {
		keys = append(keys, pgx.Identifier{t.cols[i].name}.Sanitize())
	}
	if len(keys) == 0 {
		keys = []string{"ctid"}
	}
	sql := "SELECT " + strings.Join(cols, ", ") + " FROM " + pgx.Identifier{t.schema, t.name}.Sanitize()
	var args [][]byte
	if after != nil && len(after) == len(keys) {
		ph := make([]string, len(after))
		for i, a := range after {
			ph[i] = fmt.Sprintf("$%d", i+1)
			if keys[0] == "ctid" {
				ph[i] += "::tid"
			}
			args = append(args, []byte(a))
		}
		sql += " WHERE (" + strings.Join(keys, ", ") + ") > (" + strings.Join(ph, ", ") + ")"
	}
	sql += " ORDER BY " + strings.Join(keys, ", ") + fmt.Sprintf(" LIMIT %d", n)
	if keys[0] == "ctid" {
		// ctid is not a column of the row: select it last, as the key.
		sql = strings.Replace(sql, "SELECT "+strings.Join(cols, ", "), "SELECT "+strings.Join(cols, ", ")+", ctid", 1)
	}
	return sql, args
}

// copyTuple copies a row's text values (the connection reuses its buffer).
func copyTuple(vals [][]byte) []colValue {
	size := 0
	for _, v := range vals {
		size += len(v)
	}
	buf := make([]byte, 0, size)
	tuple := make([]colValue, len(vals))
	for i, v := range vals {
		if v == nil {
			tuple[i] = colValue{kind: kindNull}
			continue
		}
		buf = append(buf, v...)
		tuple[i] = colValue{kind: kindText, data: buf[len(buf)-len(v) : len(buf) : len(buf)]}
	}
	return tuple
}

// keyText is the text of a row's key columns (its ctid, the extra last
// value, for a table without a primary key).
func keyText(t *table, row []colValue) []string {
	if len(t.keyIdx) == 0 {
		if len(row) > len(t.cols) {
			return []string{string(row[len(t.cols)].data)}
		}
		return nil
	}
	out := make([]string, len(t.keyIdx))
	for i, k := range t.keyIdx {
		out[i] = string(row[k].data)
	}
	return out
}

// rowKey joins key text into a map key.
func rowKey(parts []string) string { return strings.Join(parts, "\x00") }

// incremental is the writer's side of incremental snapshots. Owned by the
// writer goroutine.
type incremental struct {
	reqs    chan<- chunkReq
	chunks  <-chan *chunk
	pending *chunkReq       // asked, high watermark not seen yet
	window  map[string]bool // keys changed since the low watermark; nil outside a window
	nextID  int
	prefix  string // per-session prefix of chunk ids
}

// requestChunk asks for the next chunk when none is in flight.
func (w *writer) requestChunk() {
	inc := &w.inc
	if inc.reqs == nil || inc.pending != nil || w.pending.Snapshot != nil || !w.incPos.active() {
		return
	}
	p := w.incPos
	if p.Table == "" {
		p.Table, p.Queue, p.LastKey, p.Rows = p.Queue[0], p.Queue[1:], nil, 0
		p.Read, p.Chunks, p.Estimate, p.Started = 0, 0, 0, time.Now().UTC()
		w.dirty = true
	}
	inc.nextID++
	req := chunkReq{id: fmt.Sprintf("%s-%d", inc.prefix, inc.nextID), table: p.Table, after: slices.Clone(p.LastKey)}
	select {
	case inc.reqs <- req:
		// The window opens now, not at the low watermark: a transaction
		// whose commit record precedes the low watermark may still be
		// invisible to the chunk's query (it leaves the proc array just
		// after its commit record), and its change must not be followed
		// by the older chunk row. Widening the window only drops rows
		// whose key the stream carries anyway.
		inc.pending, inc.window = &req, map[string]bool{}
	default:
	}
}

// watermark handles a chunk watermark from the stream.
func (w *writer) watermark(ctx context.Context, it *item) error {
	kind, id, _ := strings.Cut(it.text, ":")
	inc := &w.inc
	if inc.pending == nil || id != inc.pending.id || it.lsn <= w.resume.FlushLSN {
		return nil // an earlier session's chunk
	}
	if kind == "low" {
		return nil
	}
	var ch *chunk
	select {
	case ch = <-inc.chunks:
	case <-ctx.Done():
		return ctx.Err()
	}
	if ch.id != id {
		return fmt.Errorf("%w: chunk %s arrived at the high watermark of %s", ErrProtocol, ch.id, id)
	}
	err := w.writeChunk(ctx, ch, it.lsn)
	inc.pending, inc.window = nil, nil
	return err
}

// writeChunk writes a chunk's rows that did not change inside its window
// and moves the snapshot's progress.
func (w *writer) writeChunk(ctx context.Context, ch *chunk, lsn pglogrepl.LSN) error {
	p := w.incPos
	if ch.err != nil {
		w.cfg.Logger.Error("cdc: incremental snapshot of a table failed; skipping it", "table", p.Table, "error", ch.err)
		w.complete(CompletedSnapshot{LSN: lsn, Error: ch.err.Error()})
		w.dirty = true
		return nil
	}
	if ch.estimate > 0 || p.Chunks == 0 {
		p.Estimate = ch.estimate
	}
	counter := w.m.snapRows.WithLabelValues(ch.t.qualified())
	for i, row := range ch.rows {
		if w.inc.window[rowKey(keyText(ch.t, row))] {
			continue
		}
		ev := &event{op: opRead, t: ch.t, new: row[:len(ch.t.cols)], lsn: lsn, commitLSN: lsn, xid: ch.xid, commitTime: time.Now(), snapshot: "incremental", db: w.db}
		if ch.done && i == len(ch.rows)-1 {
			ev.snapshot = "last_in_data_collection"
		}
		if err := w.writeEvent(ctx, ev); err != nil {
			return err
		}
		counter.Inc()
		p.Rows++
	}
	p.Read += int64(len(ch.rows))
	p.Chunks++
	if ch.done {
		p.Estimate = p.Read // the count is known now
	}
	w.m.incProgress(p, w.cfg.SnapshotTxnMaxRows)
	if ch.done {
		w.cfg.Logger.Info("cdc: incremental snapshot of a table done", "table", p.Table, "rows", p.Rows, "read", p.Read, "chunks", p.Chunks)
		if !slices.Contains(w.tables, p.Table) {
			w.tables = append(w.tables, p.Table)
		}
		w.complete(CompletedSnapshot{LSN: lsn, Rows: p.Rows, Read: p.Read, Chunks: p.Chunks})
	} else {
		p.LastKey = ch.lastKey
	}
	w.m.incRemaining.Set(float64(len(p.Queue) + map[bool]int{true: 1, false: 0}[p.Table != ""]))
	w.dirty = true
	return nil
}

// complete records the outcome of the current table's snapshot (its
// request from incPos.Requested) and clears the table.
func (w *writer) complete(c CompletedSnapshot) {
	p := w.incPos
	c.Request = p.Requested[p.Table]
	c.Started, c.Finished = p.Started, time.Now().UTC()
	delete(p.Requested, p.Table)
	w.recordCompleted(p.Table, c)
	p.Table, p.LastKey, p.Rows, p.Read, p.Chunks, p.Estimate, p.Started = "", nil, 0, 0, 0, 0, time.Time{}
}

// recordCompleted sets w.completed[table], dropping the entry with the
// oldest request past maxCompleted.
func (w *writer) recordCompleted(table string, c CompletedSnapshot) {
	if w.completed == nil {
		w.completed = map[string]CompletedSnapshot{}
	}
	w.completed[table] = c
	for len(w.completed) > maxCompleted {
		oldest := ""
		for t, o := range w.completed {
			if oldest == "" || o.Request < w.completed[oldest].Request {
				oldest = t
			}
		}
		delete(w.completed, oldest)
	}
}

// noteWindow records the key of a change of the chunk's table inside the
// window.
func (w *writer) noteWindow(ev *event) {
	inc := &w.inc
	if inc.window == nil || inc.pending == nil || ev.t.qualified() != inc.pending.table {
		return
	}
	for _, tuple := range [][]colValue{ev.old, ev.new} {
		if tuple == nil || len(ev.t.keyIdx) == 0 {
			continue
		}
		key := make([]string, len(ev.t.keyIdx))
		for i, k := range ev.t.keyIdx {
			key[i] = string(tuple[k].data)
		}
		inc.window[rowKey(key)] = true
	}
}

// handleSignal queues the tables of a loanflow.signal message.
func (w *writer) handleSignal(it *item) {
	if it.lsn <= w.resume.FlushLSN {
		return
	}
	var sig signalMsg
	if err := json.Unmarshal([]byte(it.text), &sig); err != nil {
		w.cfg.Logger.Warn("cdc: ignoring a malformed signal", "lsn", it.lsn.String(), "content", it.text, "error", err)
		return
	}
	published := w.publishedOnly(sig.Snapshot) // filter.go
	for _, t := range sig.Snapshot {
		if !strings.Contains(t, ".") {
			t = "public." + t
		}
		if !slices.Contains(published, t) {
			w.recordCompleted(t, CompletedSnapshot{Request: it.lsn, LSN: it.lsn,
				Error: fmt.Sprintf("not published by reader %s (publication %s)", w.cfg.Name, w.cfg.Publication)})
			w.dirty = true
		}
	}
	w.queueSnapshots(published, it.lsn)
}

// queueSnapshots adds tables to the incremental snapshot queue (once),
// noting the signal's LSN (0: not asked by a signal).
func (w *writer) queueSnapshots(tables []string, request pglogrepl.LSN) {
	p := w.incPos
	for _, t := range tables {
		if !strings.Contains(t, ".") {
			t = "public." + t
		}
		if request > 0 {
			if p.Requested == nil {
				p.Requested = map[string]pglogrepl.LSN{}
			}
			p.Requested[t] = request
			w.dirty = true
		}
		if t == p.Table || slices.Contains(p.Queue, t) {
			continue
		}
		p.Queue = append(p.Queue, t)
		w.dirty = true
		w.cfg.Logger.Info("cdc: incremental snapshot queued", "table", t)
	}
	w.m.incRemaining.Set(float64(len(p.Queue) + map[bool]int{true: 1, false: 0}[p.Table != ""]))
}

package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// heartbeatPrefix is the prefix of the reader's pg_logical_emit_message
// heartbeats.
const heartbeatPrefix = "loanflow.heartbeat"

// batchMaxItems bounds one queue batch.
const batchMaxItems = 512

// receiver owns the replication connection: it decodes pgoutput into queue
// items and reports the writer's committed flush LSN to the server. One
// goroutine (run).
type receiver struct {
	cfg     *Config
	conn    *pgconn.PgConn
	meta    *pgx.Conn // catalog lookups for Relation messages
	tables  map[uint32]*table
	out     chan<- []item
	flushed *atomic.Uint64
	m       *metrics
	db      string
	skips   map[pglogrepl.LSN]string // read-only: operator skips

	batch       []item
	inTxn       bool
	begin       msgBegin
	walEnd      pglogrepl.LSN
	lastStatus  time.Time
	lastFlush   pglogrepl.LSN
	lastFlushAt time.Time
	streams     streams // streamed transactions (streaming.go)
}

// startReplication starts streaming the slot from its confirmed position,
// with pgoutput protocol version 2 and streaming of in-progress
// transactions when streaming is set (streaming.go).
func startReplication(ctx context.Context, conn *pgconn.PgConn, cfg *Config, streaming bool) error {
	args := []string{"proto_version '1'", "publication_names '" + cfg.Publication + "'", "messages 'true'"}
	if streaming {
		args[0] = "proto_version '2'"
		args = append(args, "streaming 'on'")
	}
	err := pglogrepl.StartReplication(ctx, conn, cfg.Slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		return fmt.Errorf("starting replication from slot %s: %w", cfg.Slot, err)
	}
	return nil
}

func (r *receiver) run(ctx context.Context) error {
	defer r.streams.close()
	for {
		if time.Since(r.lastStatus) >= r.cfg.StatusInterval {
			if err := r.sendStatus(ctx, true); err != nil {
				return err
			}
		}
		rctx, cancel := context.WithDeadline(ctx, r.lastStatus.Add(r.cfg.StatusInterval))
		msg, err := r.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				if err := r.send(ctx); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("receiving from slot %s: %w", r.cfg.Slot, err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := r.copyData(ctx, m.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream of slot %s: %w", r.cfg.Slot, pgconn.ErrorResponseToPgError(m))
		default:
			return fmt.Errorf("%w: unexpected %T on the replication stream", ErrProtocol, msg)
		}
	}
}

// sendStatus reports the committed flush LSN, never past the server's
// WAL end as last seen: a position from another server's history must not
// move this slot past WAL it has not decoded.
func (r *receiver) sendStatus(ctx context.Context, reply bool) error {
	lsn := min(pglogrepl.LSN(r.flushed.Load()), r.walEnd)
	err := pglogrepl.SendStandbyStatusUpdate(ctx, r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ReplyRequested: reply,
	})
	if err != nil {
		return fmt.Errorf("sending standby status to slot %s: %w", r.cfg.Slot, err)
	}
	r.lastStatus = time.Now()
	return nil
}

func (r *receiver) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: empty CopyData", ErrProtocol)
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("%w: keepalive: %v", ErrProtocol, err)
		}
		return r.keepalive(ctx, pkm)
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if xld.ServerWALEnd > r.walEnd {
			r.walEnd = xld.ServerWALEnd
		}
		// pgconn reuses its read buffer: keep a copy that the decoded
		// tuples may alias.
		return r.message(ctx, xld, append([]byte(nil), xld.WALData...))
	}
	return nil
}

// keepalive answers the server and, when no transaction is open, lets the
// writer advance the flush position to the server's WAL end (everything
// before it that concerns the slot has been received).
func (r *receiver) keepalive(ctx context.Context, pkm pglogrepl.PrimaryKeepaliveMessage) error {
	if pkm.ServerWALEnd > r.walEnd {
		r.walEnd = pkm.ServerWALEnd
	}
	if !r.inTxn && pkm.ServerWALEnd > r.lastFlush && time.Since(r.lastFlushAt) >= r.cfg.StatusInterval {
		r.lastFlush, r.lastFlushAt = pkm.ServerWALEnd, time.Now()
		r.add(item{kind: itFlush, lsn: pkm.ServerWALEnd})
		if err := r.send(ctx); err != nil {
			return err
		}
	}
	if pkm.ReplyRequested {
		return r.sendStatus(ctx, false)
	}
	return nil
}

func (r *receiver) add(it item) { r.batch = append(r.batch, it) }

// send hands the batch to the writer (blocking when the queue is full).
func (r *receiver) send(ctx context.Context) error {
	if len(r.batch) == 0 {
		return nil
	}
	select {
	case r.out <- r.batch:
		r.batch = make([]item, 0, batchMaxItems)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *receiver) message(ctx context.Context, xld pglogrepl.XLogData, buf []byte) error {
	if took, err := r.streamMessage(ctx, xld, buf); took || err != nil {
		return err // streaming.go
	}
	return r.decoded(ctx, xld, buf)
}

// decoded decodes and handles one message outside a stream block (or of
// a streamed transaction replayed at its commit).
func (r *receiver) decoded(ctx context.Context, xld pglogrepl.XLogData, buf []byte) error {
	msg, err := decodeMessage(buf)
	if err != nil {
		if _, ok := r.skips[xld.WALStart]; ok {
			return r.skipUndecodable(xld, buf, err)
		}
		return fmt.Errorf("slot %s at %s: %w (to skip this message, run `loanflow cdc skip --lsn %s`; it goes to the dead-letter topic)", r.cfg.Slot, xld.WALStart, err, xld.WALStart)
	}
	switch m := msg.(type) {
	case *msgBegin:
		r.inTxn, r.begin = true, *m
		r.add(item{kind: itBegin, lsn: m.finalLSN, at: m.commitTime, xid: m.xid})
	case *msgCommit:
		r.inTxn = false
		r.add(item{kind: itCommit, lsn: m.commitLSN, endLSN: m.endLSN, at: m.commitTime})
		return r.send(ctx)
	case *msgRelation:
		return r.relation(ctx, m)
	case *msgInsert, *msgUpdate, *msgDelete, *msgTruncate:
		if !r.inTxn {
			return fmt.Errorf("%w: %T outside a transaction at %s", ErrProtocol, msg, xld.WALStart)
		}
		if err := r.change(msg, xld.WALStart); err != nil {
			return err
		}
	case *msgLogical:
		if m.prefix == slotPrefix && !m.transactional {
			nonce, ours := nonceFor(r.cfg.Slot, string(m.content))
			if !ours {
				return nil // another reader's slot on this database
			}
			r.add(item{kind: itSlotNonce, lsn: m.lsn, text: nonce})
			return r.send(ctx)
		}
		if m.prefix == watermarkPrefix && !m.transactional {
			r.add(item{kind: itWatermark, lsn: m.lsn, text: string(m.content)})
			return r.send(ctx)
		}
		if m.prefix == SignalPrefix && !m.transactional {
			r.add(item{kind: itSignal, lsn: m.lsn, text: string(m.content)})
			return r.send(ctx)
		}
		if m.prefix == heartbeatPrefix && !m.transactional {
			at := xld.ServerTime
			if ms, err := strconv.ParseInt(string(m.content), 10, 64); err == nil {
				at = time.UnixMilli(ms)
			}
			r.add(item{kind: itHeartbeat, lsn: m.lsn, at: at})
			return r.send(ctx)
		}
	}
	if len(r.batch) >= batchMaxItems {
		return r.send(ctx)
	}
	return nil
}

// relation records a table version; a Relation message whose columns
// differ from the known version starts a new version (and so a new schema
// version when its first change is written).
func (r *receiver) relation(ctx context.Context, m *msgRelation) error {
	pk, err := primaryKey(ctx, r.meta, m.id)
	if err != nil {
		return err
	}
	rt := r.cfg.routeFor(m.namespace, m.name)
	t, err := newTable(m, pk, rt)
	if err != nil {
		r.cfg.Logger.Error("cdc: table cannot be written; its changes go to the dead-letter topic", "table", m.namespace+"."+m.name, "error", err)
		t = poisonedTable(m, rt, err)
	}
	warnFallbacks(r.cfg, t)
	if old := r.tables[m.id]; old != nil {
		if t.sameShape(old) {
			return nil
		}
		t.version = old.version + 1
		r.cfg.Logger.Info("cdc: table schema changed", "table", t.qualified(), "version", t.version)
	}
	r.tables[m.id] = t
	return nil
}

func (r *receiver) table(rel uint32) (*table, error) {
	t := r.tables[rel]
	if t == nil {
		return nil, fmt.Errorf("%w: change for relation %d before its Relation message", ErrProtocol, rel)
	}
	return t, nil
}

func (r *receiver) change(msg any, lsn pglogrepl.LSN) error {
	ev := func(t *table, op byte) *event {
		return &event{op: op, t: t, lsn: lsn, commitLSN: r.begin.finalLSN, xid: r.begin.xid, commitTime: r.begin.commitTime, snapshot: "false", db: r.db}
	}
	switch m := msg.(type) {
	case *msgInsert:
		t, err := r.table(m.rel)
		if err != nil {
			return err
		}
		e := ev(t, opCreate)
		e.new = t.project(m.new)
		_ = e.convert()
		r.add(item{kind: itChange, ev: e})
	case *msgUpdate:
		t, err := r.table(m.rel)
		if err != nil {
			return err
		}
		e := ev(t, opUpdate)
		m.old, m.new = t.project(m.old), t.project(m.new) // filtered columns (filter.go)
		e.old, e.new = m.old, m.new
		if err := resolveToast(t, m); err != nil {
			e.converted, e.convErr = true, err // dead-lettered by the writer
		}
		_ = e.convert()
		r.add(item{kind: itChange, ev: e})
	case *msgDelete:
		t, err := r.table(m.rel)
		if err != nil {
			return err
		}
		e := ev(t, opDelete)
		e.old = t.project(m.old)
		_ = e.convert()
		r.add(item{kind: itChange, ev: e})
	case *msgTruncate:
		for _, rel := range m.rels {
			t, err := r.table(rel)
			if err != nil {
				return err
			}
			r.add(item{kind: itChange, ev: ev(t, opTruncate)})
		}
	}
	return nil
}

// skipUndecodable hands a message an operator skipped, and that cannot be
// decoded, to the writer as a change of no table: it goes to the
// dead-letter topic with its bytes.
func (r *receiver) skipUndecodable(xld pglogrepl.XLogData, buf []byte, cause error) error {
	t := &table{schema: "pgoutput", name: "undecodable", route: &route{mode: ModeEnvelope}}
	e := &event{op: '?', t: t, lsn: xld.WALStart, commitLSN: r.begin.finalLSN, xid: r.begin.xid, commitTime: r.begin.commitTime, db: r.db, raw: buf}
	e.converted, e.convErr = true, fmt.Errorf("%w: %v", ErrProtocol, cause)
	r.add(item{kind: itChange, ev: e})
	return nil
}

// warnFallbacks logs the columns of a table version carried as text
// because their type has no mapping.
func warnFallbacks(cfg *Config, t *table) {
	if len(t.fallbacks) > 0 {
		cfg.Logger.Warn("cdc: columns of unsupported types are carried as their text form (Avro string)", "table", t.qualified(), "columns", strings.Join(t.fallbacks, ", "))
	}
}

// resolveToast fills unchanged TOAST values of an update from its old
// tuple (present under REPLICA IDENTITY FULL). A value that cannot be
// filled is an error: it is never emitted as null.
func resolveToast(t *table, m *msgUpdate) error {
	for i, v := range m.new {
		if v.kind != kindUnchange {
			continue
		}
		if m.oldKind == 'O' && i < len(m.old) && (m.old[i].kind == kindText || m.old[i].kind == kindBinary) {
			m.new[i] = m.old[i]
			continue
		}
		name := strconv.Itoa(i)
		if i < len(t.cols) {
			name = t.cols[i].name
		}
		return fmt.Errorf("%w: column %s of %s was left unchanged by an UPDATE and the old tuple does not carry it; run ALTER TABLE %s REPLICA IDENTITY FULL",
			ErrUnchangedToast, name, t.qualified(), pgx.Identifier{t.schema, t.name}.Sanitize())
	}
	return nil
}

// isFatal reports errors a new session cannot fix: the reader's own
// sentinels, and PostgreSQL errors of authentication (class 28), missing
// objects or privileges (42) and unknown databases (3D).
func isFatal(err error) bool {
	for _, e := range []error{ErrConfig, ErrProtocol, ErrSlotGone, ErrSlotGap, ErrSlotMismatch, ErrReplicaIdentity, ErrSchema, ErrFenced} {
		if errors.Is(err, e) {
			return true
		}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && len(pgErr.Code) == 5 {
		switch pgErr.Code[:2] {
		case "28", "42", "3D":
			return true
		}
	}
	return false
}

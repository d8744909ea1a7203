package postgres

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/schemas"
)

// HeartbeatHeader is the header that marks a heartbeat record; its value is
// the heartbeat's event time in milliseconds since the Unix epoch, as
// decimal ASCII. See doc.go.
const HeartbeatHeader = "loanflow.heartbeat"

// HeartbeatKey is the key of heartbeat records in view topics, an Avro
// string framed with the topic's key schema (compacted topics need a key).
const HeartbeatKey = "__loanflow_heartbeat"

// writer owns the transactional Kafka producer: it turns queue items into
// records, commits them with the position in one Kafka transaction and
// publishes the committed flush LSN to the receiver. One goroutine (run).
type writer struct {
	cfg    *Config
	cl     *kgo.Client
	adm    *kadm.Client
	reg    Registry
	m      *metrics
	db     string
	resume Position // position read at session start: what Kafka holds
	// ident carries the server's and slot's identity (SystemID, Timeline,
	// SlotNonce), stamped on every position the writer commits.
	ident Position
	// verify, when set, is the commit LSN of the position's transaction
	// that the slot must decode again before anything after it: the slot
	// restarted at or before it (a server crash moves a slot back to its
	// last checkpointed position). Replaying it with the same xid proves
	// the server's WAL is the history the position was read from; a later
	// transaction first means another history, whose changes below the
	// position would be skipped.
	verify pglogrepl.LSN

	codecs    map[*table]*codec
	codecErrs map[*table]error // table versions whose schemas the registry rejected
	// inc runs incremental snapshots; incPos is their progress and tables
	// the tables whose snapshot is complete (both stamped on positions).
	// hbTables are the tables whose topics receive heartbeats.
	hbTables []*table
	inc      incremental
	incPos   *IncrementalProgress
	// completed is the outcome of the last incremental snapshot per
	// table (Position.Completed).
	completed map[string]CompletedSnapshot
	tables    []string
	hb        struct { // the heartbeat topic's schemas
		key, value     *avro.Schema
		keyID, valueID int
	}
	// skipLSNs are changes an operator skipped (`loanflow cdc skip`): they
	// go to the dead-letter topic.
	skipLSNs map[pglogrepl.LSN]string
	views    []*viewState
	viewConn *pgx.Conn        // view queries; nil without views
	topics   map[string]int32 // created topics → partitions

	// tx is the transaction metadata (txmeta.go), nil when off; published
	// are the tables of the publication (schema.table): a snapshot signal
	// for another table is ignored (filter.go).
	tx        *txMeta
	published map[string]bool

	committed Position
	pending   Position
	flushed   *atomic.Uint64 // committed FlushLSN, read by the receiver

	open        bool // a Kafka transaction is open
	dirty       bool // pending differs from committed
	records     int
	bytes       int
	firstAt     time.Time
	lastCommit  time.Time
	commitTimes []time.Time
	rate        rateWindow

	inPG      bool
	pgLSN     pglogrepl.LSN
	pgXID     uint32
	pgChanges int
	skip      int

	produceErr struct {
		sync.Mutex
		err error
	}
}

func (w *writer) promise(_ *kgo.Record, err error) {
	if err == nil {
		return
	}
	w.produceErr.Lock()
	if w.produceErr.err == nil {
		w.produceErr.err = err
	}
	w.produceErr.Unlock()
}

func (w *writer) firstProduceErr() error {
	w.produceErr.Lock()
	defer w.produceErr.Unlock()
	return w.produceErr.err
}

// run consumes the queue until it is closed or ctx ends.
func (w *writer) run(ctx context.Context, in <-chan []item) error {
	defer w.abort()
	tick := time.NewTicker(w.cfg.CommitInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case batch, ok := <-in:
			if !ok {
				return w.maybeCommit(ctx, true)
			}
			if err := w.handle(ctx, batch); err != nil {
				return err
			}
			w.requestChunk()
			if err := w.maybeCommit(ctx, len(in) == 0); err != nil {
				return err
			}
		case <-tick.C:
			w.requestChunk()
			if err := w.maybeCommit(ctx, len(in) == 0); err != nil {
				return err
			}
		}
	}
}

func (w *writer) abort() {
	if !w.open {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = w.cl.AbortBufferedRecords(ctx)
	_ = w.cl.EndTransaction(ctx, kgo.TryAbort)
	w.open = false
}

func (w *writer) handle(ctx context.Context, batch []item) error {
	for i := range batch {
		if err := w.handleItem(ctx, &batch[i]); err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) handleItem(ctx context.Context, it *item) error {
	switch it.kind {
	case itBegin:
		if err := w.verified(it.lsn, it.xid, "transaction"); err != nil {
			return err
		}
		w.inPG, w.pgLSN, w.pgXID, w.pgChanges = true, it.lsn, it.xid, 0
		w.skip = w.resume.skip(it.lsn)
		w.txBegin(it)
	case itChange:
		if it.ev.op != opRead {
			w.noteWindow(it.ev)
		}
		return w.change(ctx, it.ev)
	case itWatermark:
		return w.watermark(ctx, it)
	case itSignal:
		w.handleSignal(it)
	case itCommit:
		if err := w.txEnd(ctx); err != nil {
			return err
		}
		w.inPG = false
		if w.skip < 0 {
			return nil
		}
		w.pending = Position{Slot: w.cfg.Slot, LSN: it.lsn, XID: w.pgXID, Changes: w.pgChanges, Complete: true, FlushLSN: it.endLSN}
		w.commitTimes = append(w.commitTimes, it.at)
		w.dirty = true
	case itHeartbeat:
		if err := w.verified(it.lsn, 0, "heartbeat"); err != nil {
			return err
		}
		return w.heartbeat(ctx, it)
	case itSlotNonce:
		return w.slotNonce(it)
	case itFlush:
		if it.lsn > w.pending.FlushLSN && w.pending.Snapshot == nil && w.verify == 0 {
			w.pending.FlushLSN = it.lsn
			w.dirty = true
		}
	case itSnapMark:
		w.pending = *it.pos
		w.pending.Slot = w.cfg.Slot
		w.dirty = true
		if it.final {
			w.tables = append([]string{}, it.tables...)
		}
		// A mark follows the last row it covers: commit exactly there, so
		// the committed last key is the last row in Kafka.
		return w.commit(ctx)
	}
	return nil
}

// verified checks a message at lsn (a transaction's commit LSN with its
// xid, or a heartbeat) against the transaction the slot must replay first
// (see writer.verify).
func (w *writer) verified(lsn pglogrepl.LSN, xid uint32, what string) error {
	switch {
	case w.verify == 0 || lsn < w.verify:
		return nil
	case lsn == w.verify && xid != 0 && (w.resume.XID == 0 || xid == w.resume.XID):
		w.verify = 0
		return nil
	case lsn == w.verify && xid == 0:
		// A non-transactional message (a heartbeat) carries the end of
		// its WAL record as its LSN, which is where the next record
		// starts: another session's commit record there has the same
		// LSN, and its transaction is decoded after the message. Not
		// decisive; the transaction itself (or anything past it) is.
		return nil
	}
	return fmt.Errorf("%w: slot %s restarted before the committed position (transaction %d committed at %s) but replays a %s at %s (xid %d) instead: this server's WAL is not the history the position was read from (a restored backup, a copied data directory or another cluster); resuming would skip its changes below the position. Start over with a new snapshot (a new reader name, or `loanflow cdc reset` to delete the position) after checking what happened",
		ErrSlotMismatch, w.cfg.Slot, w.resume.XID, w.verify, what, lsn, xid)
}

// slotNonce checks the nonce message a reader writes right after creating
// a slot: a slot that carries another nonce than the position's was
// recreated by another reader, and the WAL before it is not in Kafka.
func (w *writer) slotNonce(it *item) error {
	if w.ident.SlotNonce == "" {
		w.ident.SlotNonce = it.text
		return nil
	}
	if it.text != w.ident.SlotNonce {
		return fmt.Errorf("%w: slot %s was created by another reader (slot nonce %s at %s, the position's is %s): WAL before its creation was never read; start over with a new snapshot (a new reader name, or `loanflow cdc reset` to delete the position)",
			ErrSlotMismatch, w.cfg.Slot, it.text, it.lsn, w.ident.SlotNonce)
	}
	return nil
}

// change writes one change, unless the resumed position says Kafka has it.
func (w *writer) change(ctx context.Context, ev *event) error {
	if ev.op != opRead && w.inPG {
		w.pgChanges++
		if w.skip < 0 || w.pgChanges <= w.skip {
			return nil
		}
	}
	if err := w.writeEvent(ctx, ev); err != nil {
		return err
	}
	if ev.op == opRead {
		return nil
	}
	if w.records >= w.cfg.TxnMaxRecords || w.bytes >= w.cfg.TxnMaxBytes {
		// Split a large transaction: commit what we have with a partial
		// position; the flush LSN stays at the last complete transaction.
		w.pending = Position{Slot: w.cfg.Slot, LSN: w.pgLSN, XID: w.pgXID, Changes: w.pgChanges, FlushLSN: w.pending.FlushLSN, Txn: w.txSplit()}
		w.dirty = true
		return w.commit(ctx)
	}
	return nil
}

// maybeCommit commits at a transaction boundary when the queue is drained,
// the transaction is full, or the commit interval has passed.
func (w *writer) maybeCommit(ctx context.Context, idle bool) error {
	if !w.dirty || w.inPG || w.pending.Snapshot != nil { // snapshot chunks commit at their marks
		return nil
	}
	if w.records == 0 && !idle && time.Since(w.lastCommit) < w.cfg.StatusInterval {
		return nil // a position-only commit can wait for a quiet moment
	}
	full := w.records >= w.cfg.TxnMaxRecords || w.bytes >= w.cfg.TxnMaxBytes
	if idle || full || time.Since(w.firstAt) >= w.cfg.CommitInterval {
		return w.commit(ctx)
	}
	return nil
}

func (w *writer) ensureOpen() error {
	if w.open {
		return nil
	}
	if err := w.cl.BeginTransaction(); err != nil {
		return fmt.Errorf("beginning kafka transaction: %w", err)
	}
	w.open, w.firstAt = true, time.Now()
	return nil
}

func (w *writer) produce(ctx context.Context, r *kgo.Record) error {
	if err := w.ensureOpen(); err != nil {
		return err
	}
	w.records++
	w.bytes += len(r.Key) + len(r.Value)
	w.cl.Produce(ctx, r, w.promise)
	return nil
}

// commit writes the pending position and commits the Kafka transaction.
func (w *writer) commit(ctx context.Context) error {
	if err := w.ensureOpen(); err != nil {
		return err
	}
	if err := w.refreshViews(ctx); err != nil {
		return err
	}
	pos := w.pending
	pos.CommittedAt = time.Now().UTC()
	pos.SystemID, pos.Timeline, pos.SlotNonce = w.ident.SystemID, w.ident.Timeline, w.ident.SlotNonce
	pos.Incremental, pos.Tables = nil, w.tables
	pos.Completed = w.completed
	if w.incPos.active() {
		pos.Incremental = w.incPos
	}
	pos = pos.clone()
	rec, err := positionRecord(w.cfg.PositionsTopic, w.cfg.Name, pos)
	if err != nil {
		return err
	}
	w.cl.Produce(ctx, rec, w.promise)
	if err := w.cl.Flush(ctx); err != nil {
		return fmt.Errorf("flushing kafka transaction: %w", err)
	}
	if err := w.firstProduceErr(); err != nil {
		return w.kafkaErr("producing", err)
	}
	if err := w.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return w.kafkaErr("committing kafka transaction", err)
	}
	w.open, w.dirty = false, false
	w.committed = pos
	w.flushed.Store(uint64(pos.FlushLSN))
	w.afterCommit(pos)
	return nil
}

func (w *writer) kafkaErr(what string, err error) error {
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) || errors.Is(err, kerr.TransactionalIDAuthorizationFailed) {
		return fmt.Errorf("%w: %s (transactional id %s): %v", ErrFenced, what, w.cfg.TransactionalID, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (w *writer) afterCommit(pos Position) {
	now := time.Now()
	w.lastCommit = now
	w.m.commits.Inc()
	w.m.committedLSN.Set(float64(pos.FlushLSN))
	w.m.lastCommit.Set(float64(now.UnixNano()) / 1e9)
	w.m.changes.committed()
	w.m.changesPerSec.Set(w.rate.add(now, w.records))
	if n := len(w.commitTimes); n > 0 {
		w.m.lagSeconds.Set(now.Sub(w.commitTimes[n-1]).Seconds())
		for _, t := range w.commitTimes {
			w.m.commitLatency.Observe(now.Sub(t).Seconds())
		}
	} else if w.records == 0 {
		w.m.lagSeconds.Set(0)
	}
	if w.cfg.OnCommit != nil {
		w.cfg.OnCommit(CommitInfo{Changes: w.records, CommitTimes: w.commitTimes, Position: pos, At: now})
	}
	w.records, w.bytes, w.commitTimes = 0, 0, nil
}

// writeEvent produces the records of one change. A change that cannot be
// written (see poisonReason) goes to the dead-letter topic instead, and
// the stream goes on.
func (w *writer) writeEvent(ctx context.Context, ev *event) error {
	if _, ok := w.skipLSNs[ev.lsn]; ok && ev.op != opRead {
		return w.deadLetter(ctx, ev, fmt.Errorf("%w: change at %s of %s", ErrSkipped, ev.lsn, ev.t.qualified()))
	}
	if err := ev.convert(); err != nil {
		return w.deadLetter(ctx, ev, err)
	}
	c, err := w.codecFor(ctx, ev.t)
	if err != nil {
		return w.deadLetter(ctx, ev, err)
	}
	ev.processedMs = time.Now().UnixMilli()
	if ev.op == opTruncate {
		return w.truncate(ctx, c, ev)
	}
	w.touchViews(ev)
	if ev.keyChanged() {
		// A primary-key change is a delete of the old key and a create of
		// the new one, as Debezium writes it.
		del := *ev
		del.op, del.after = opDelete, nil
		if err := w.writeRow(ctx, c, &del); err != nil {
			return err
		}
		ev.op, ev.before = opCreate, nil
	}
	return w.writeRow(ctx, c, ev)
}

func (w *writer) writeRow(ctx context.Context, c *codec, ev *event) error {
	t := ev.t
	row := ev.after
	if ev.op == opDelete {
		row = ev.before
	}
	key, err := c.encodeKey(nil, t, row)
	if err != nil {
		return w.deadLetter(ctx, ev, err)
	}
	if !(ev.op == opDelete && t.route.mode == ModeUpsert) {
		if ev.txBlock, err = w.txBlock(ctx, ev); err != nil {
			return err
		}
		val, err := c.encodeValue(nil, t, ev)
		if err != nil {
			return w.deadLetter(ctx, ev, err)
		}
		rec := &kgo.Record{Topic: t.route.topic, Key: key, Value: val, Timestamp: ev.commitTime, Headers: ev.headers()}
		if n := recordSize(rec); n > w.cfg.MaxRecordBytes {
			return w.deadLetter(ctx, ev, fmt.Errorf("%w: the %s record of %s at %s is %d bytes, over max_record_bytes %d (raise it together with the topic's max.message.bytes)",
				ErrTooLarge, opNames[ev.op], t.qualified(), ev.lsn, n, w.cfg.MaxRecordBytes))
		}
		if err := w.produce(ctx, rec); err != nil {
			return err
		}
		w.txCount(ev)
		w.m.changes.note(ev)
	}
	if ev.op == opDelete && key != nil {
		if t.route.mode == ModeUpsert {
			w.m.changes.note(ev)
		}
		return w.produce(ctx, &kgo.Record{Topic: t.route.topic, Key: key, Timestamp: ev.commitTime})
	}
	return nil
}

// truncate writes a truncate envelope to every partition of the topic, so
// every partition's consumer sees it in order.
func (w *writer) truncate(ctx context.Context, c *codec, ev *event) error {
	t := ev.t
	if !t.route.truncate {
		return w.skipTruncate(ev) // off by default (filter.go)
	}
	if t.route.mode == ModeUpsert {
		return w.deadLetter(ctx, ev, fmt.Errorf("%w: TRUNCATE of %s cannot be written to upsert topic %s (it holds no per-key delete); re-snapshot the topic", ErrValue, t.qualified(), t.route.topic))
	}
	val, err := c.encodeValue(nil, t, ev)
	if err != nil {
		return w.deadLetter(ctx, ev, err)
	}
	for p := int32(0); p < w.topics[t.route.topic]; p++ {
		r := &kgo.Record{Topic: t.route.topic, Partition: p, Value: val, Timestamp: ev.commitTime, Context: manualPartition}
		if err := w.produce(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// heartbeat writes a heartbeat record to every partition of every view
// topic and one to the heartbeat topic, and moves the flush position to
// the heartbeat. The view rows of the keys touched so far go first: every
// transaction committed before the heartbeat's time precedes it in the
// WAL, so its rows then precede the heartbeat in every partition (see
// doc.go, Heartbeats). Every heartbeat record is decodable by a
// Confluent-Avro consumer: in a view topic its key is the Avro string
// HeartbeatKey framed with the topic's key schema and its value null (a
// tombstone of a key no row has).
func (w *writer) heartbeat(ctx context.Context, it *item) error {
	if w.inPG || it.lsn <= w.resume.FlushLSN || w.pending.Snapshot != nil {
		return nil
	}
	if err := w.refreshViews(ctx); err != nil {
		return err
	}
	ms := strconv.FormatInt(it.at.UnixMilli(), 10)
	hdr := []kgo.RecordHeader{{Key: HeartbeatHeader, Value: []byte(ms)}}
	for _, t := range w.hbTables {
		if err := w.tableHeartbeat(ctx, t, it, hdr); err != nil {
			return err
		}
	}
	for _, vs := range w.views {
		if err := w.viewCodec(ctx, vs); err != nil {
			return err
		}
		key, err := vs.key.AppendEncode(frame(nil, vs.keyID), HeartbeatKey)
		if err != nil {
			return fmt.Errorf("%w: heartbeat key of %s: %v", ErrSchema, vs.cfg.Topic, err)
		}
		for p := int32(0); p < w.topics[vs.cfg.Topic]; p++ {
			r := &kgo.Record{Topic: vs.cfg.Topic, Partition: p, Key: key, Timestamp: it.at, Context: manualPartition, Headers: hdr}
			if err := w.produce(ctx, r); err != nil {
				return err
			}
		}
	}
	if err := w.heartbeatRecord(ctx, it, hdr); err != nil {
		return err
	}
	w.m.heartbeats.Inc()
	if it.lsn > w.pending.FlushLSN {
		w.pending.FlushLSN = it.lsn
	}
	w.dirty = true
	return nil
}

// tableHeartbeat writes a heartbeat to every partition of a table's topic,
// its key framed with the table's key schema (heartbeatKeyValue).
func (w *writer) tableHeartbeat(ctx context.Context, t *table, it *item, hdr []kgo.RecordHeader) error {
	c, err := w.codecFor(ctx, t)
	if err != nil {
		if poisonReason(err) != "" {
			return nil // the table's changes are dead-lettered; so are its heartbeats
		}
		return err
	}
	kv, _ := heartbeatKeyValue(t)
	key, err := c.key.AppendEncode(frame(nil, c.keyID), kv)
	if err != nil {
		return fmt.Errorf("%w: heartbeat key of %s: %v", ErrSchema, t.route.topic, err)
	}
	for p := int32(0); p < w.topics[t.route.topic]; p++ {
		r := &kgo.Record{Topic: t.route.topic, Partition: p, Key: key, Timestamp: it.at, Context: manualPartition, Headers: hdr}
		if err := w.produce(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// Schemas of the heartbeat topic (as Debezium's __debezium-heartbeat
// topic: key {serverName}, value {ts_ms}), plus the heartbeat's LSN.
const (
	heartbeatKeySchema   = `{"type":"record","name":"HeartbeatKey","namespace":"io.loanflow.cdc","fields":[{"name":"serverName","type":"string"}]}`
	heartbeatValueSchema = `{"type":"record","name":"Heartbeat","namespace":"io.loanflow.cdc","fields":[{"name":"ts_ms","type":"long"},{"name":"lsn","type":"long"}]}`
)

// heartbeatRecord writes the heartbeat to the heartbeat topic (one
// partition, compacted, keyed by the reader's name).
func (w *writer) heartbeatRecord(ctx context.Context, it *item, hdr []kgo.RecordHeader) error {
	topic := w.cfg.HeartbeatTopic
	if w.hb.key == nil {
		if _, err := ensureTopic(ctx, w.adm, topic, 1, int16(w.cfg.TopicReplicationFactor), true); err != nil {
			return err
		}
		var err error
		if w.hb.key, w.hb.keyID, err = register(ctx, w.reg, schemas.KeySubject(topic), avro.MustParse(heartbeatKeySchema)); err != nil {
			return err
		}
		if w.hb.value, w.hb.valueID, err = register(ctx, w.reg, schemas.ValueSubject(topic), avro.MustParse(heartbeatValueSchema)); err != nil {
			w.hb.key = nil
			return err
		}
	}
	key, err := w.hb.key.AppendEncode(frame(nil, w.hb.keyID), map[string]any{"serverName": w.cfg.Name})
	if err != nil {
		return fmt.Errorf("%w: heartbeat key: %v", ErrSchema, err)
	}
	val, err := w.hb.value.AppendEncode(frame(nil, w.hb.valueID), map[string]any{"ts_ms": it.at.UnixMilli(), "lsn": int64(it.lsn)})
	if err != nil {
		return fmt.Errorf("%w: heartbeat value: %v", ErrSchema, err)
	}
	return w.produce(ctx, &kgo.Record{Topic: topic, Partition: 0, Context: manualPartition, Key: key, Value: val, Timestamp: it.at, Headers: hdr})
}

// poisonReasons are the errors that send a change to the dead-letter
// topic (with the reason) instead of stopping the reader; other errors
// (protocol, Kafka, a retryable registry error) end the session.
var poisonReasons = []struct {
	err    error
	reason string
}{
	{ErrSkipped, "skipped"},
	{ErrTooLarge, "too_large"},
	{ErrUnchangedToast, "unchanged_toast"},
	{ErrSchema, "schema"},
	{ErrUnsupportedType, "unsupported_type"},
	{ErrValue, "value"},
}

func poisonReason(err error) string {
	for _, p := range poisonReasons {
		if errors.Is(err, p.err) {
			return p.reason
		}
	}
	return ""
}

// deadLetterTextMax bounds each column's text in a dead-letter record, so a
// change dead-lettered for its size fits.
const deadLetterTextMax = 4096

// deadLetter writes a change that cannot be written to the dead-letter
// topic (JSON: table, op, LSNs, xid, reason, error, the columns' text),
// with the reason and where it came from in headers, so it is neither
// lost nor able to stop the stream. Errors that are not about the change
// (protocol, Kafka) stop the session instead.
func (w *writer) deadLetter(ctx context.Context, ev *event, cause error) error {
	reason := poisonReason(cause)
	if reason == "" {
		return cause
	}
	w.m.deadLetters.Inc()
	w.cfg.Logger.Warn("cdc: change sent to dead-letter topic", "table", ev.t.qualified(), "lsn", ev.lsn.String(), "reason", reason, "error", cause)
	body := map[string]any{"table": ev.t.qualified(), "op": string(ev.op), "lsn": ev.lsn.String(), "commit_lsn": ev.commitLSN.String(),
		"xid": ev.xid, "reason": reason, "error": cause.Error(), "topic": ev.t.route.topic}
	body["before_text"] = textColumns(ev.t, ev.old)
	body["after_text"] = textColumns(ev.t, ev.new)
	if ev.raw != nil {
		body["message_hex"] = hex.EncodeToString(ev.raw)
	}
	b, _ := json.Marshal(body)
	return w.produce(ctx, &kgo.Record{
		Topic: w.cfg.DeadLetterTopic, Value: b, Timestamp: ev.commitTime,
		Headers: []kgo.RecordHeader{
			{Key: "error", Value: []byte(cause.Error())},
			{Key: "reason", Value: []byte(reason)},
			{Key: "source.table", Value: []byte(ev.t.qualified())},
			{Key: "source.lsn", Value: []byte(ev.lsn.String())},
			{Key: "source.commit_lsn", Value: []byte(ev.commitLSN.String())},
			{Key: "source.topic", Value: []byte(ev.t.route.topic)},
		},
	})
}

// textColumns is the text of a tuple's columns (nil when there is none),
// each cut to deadLetterTextMax bytes.
func textColumns(t *table, vals []colValue) map[string]any {
	if vals == nil {
		return nil
	}
	cols := map[string]any{}
	for i, c := range t.cols {
		if i >= len(vals) {
			break
		}
		switch v := vals[i]; v.kind {
		case kindText:
			s := string(v.data)
			if len(s) > deadLetterTextMax {
				s = s[:deadLetterTextMax] + "...(" + strconv.Itoa(len(v.data)) + " bytes)"
			}
			cols[c.name] = s
		case kindNull:
			cols[c.name] = nil
		case kindUnchange:
			cols[c.name] = "(unchanged TOAST value, not sent)"
		}
	}
	return cols
}

// recordSize is a record's size as the broker counts it, roughly: key,
// value, headers and the record overhead.
func recordSize(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value) + 64
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

// codecFor returns the codec of a table version, creating its topic and
// registering its schemas on first use.
func (w *writer) codecFor(ctx context.Context, t *table) (*codec, error) {
	if c, ok := w.codecs[t]; ok {
		return c, nil
	}
	if err, ok := w.codecErrs[t]; ok {
		return nil, err
	}
	if t.err != nil {
		return nil, t.err
	}
	if err := w.ensureTopic(ctx, t.route.topic, t.route.mode == ModeUpsert); err != nil {
		return nil, err
	}
	c, err := newCodec(ctx, w.reg, t)
	if err != nil {
		err = fmt.Errorf("table %s version %d: %w", t.qualified(), t.version, err)
		if errors.Is(err, ErrSchema) {
			// Every change of this table version would fail the same way:
			// dead-letter them without asking the registry each time.
			w.codecErrs[t] = err
		}
		return nil, err
	}
	w.codecs[t] = c
	return c, nil
}

// ensureTopic creates topic if missing (compacted for upsert topics) and
// records its partition count.
func (w *writer) ensureTopic(ctx context.Context, topic string, compact bool) error {
	if _, ok := w.topics[topic]; ok {
		return nil
	}
	n, err := ensureTopic(ctx, w.adm, topic, int32(w.cfg.TopicPartitions), int16(w.cfg.TopicReplicationFactor), compact)
	if err != nil {
		return err
	}
	w.topics[topic] = n
	return nil
}

// ensureTopic creates topic unless it exists and returns its partitions.
func ensureTopic(ctx context.Context, adm *kadm.Client, topic string, partitions int32, rf int16, compact bool) (int32, error) {
	var cfg map[string]*string
	if compact {
		policy := "compact"
		cfg = map[string]*string{"cleanup.policy": &policy}
	}
	resp, err := adm.CreateTopic(ctx, partitions, rf, cfg, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return 0, fmt.Errorf("creating topic %s: %w", topic, err)
	}
	if err == nil && resp.Err == nil {
		return partitions, nil
	}
	md, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("describing topic %s: %w", topic, err)
	}
	td, ok := md[topic]
	if !ok || td.Err != nil {
		return 0, fmt.Errorf("describing topic %s: %v", topic, td.Err)
	}
	return int32(len(td.Partitions)), nil
}

// rateWindow computes changes per second over the last few seconds.
type rateWindow struct {
	start time.Time
	n     int
	last  float64
}

func (r *rateWindow) add(now time.Time, n int) float64 {
	if r.start.IsZero() {
		r.start = now
	}
	r.n += n
	if d := now.Sub(r.start); d >= 5*time.Second {
		r.last = float64(r.n) / d.Seconds()
		r.start, r.n = now, 0
	}
	return r.last
}

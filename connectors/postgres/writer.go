package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// HeartbeatHeader is the header that marks a heartbeat record; its value is
// the heartbeat's event time in milliseconds since the Unix epoch, as
// decimal ASCII. See doc.go.
const HeartbeatHeader = "loanflow.heartbeat"

// heartbeatKey is the key of heartbeat records (compacted topics need one).
var heartbeatKey = []byte("__loanflow_heartbeat")

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

	codecs   map[*table]*codec
	views    []*viewState
	viewConn *pgx.Conn        // view queries; nil without views
	topics   map[string]int32 // created topics → partitions

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
			if err := w.maybeCommit(ctx, len(in) == 0); err != nil {
				return err
			}
		case <-tick.C:
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
		w.inPG, w.pgLSN, w.pgChanges = true, it.lsn, 0
		w.skip = w.resume.skip(it.lsn)
	case itChange:
		return w.change(ctx, it.ev)
	case itCommit:
		w.inPG = false
		if w.skip < 0 {
			return nil
		}
		w.pending = Position{Slot: w.cfg.Slot, LSN: it.lsn, Changes: w.pgChanges, Complete: true, FlushLSN: it.endLSN}
		w.commitTimes = append(w.commitTimes, it.at)
		w.dirty = true
	case itHeartbeat:
		return w.heartbeat(ctx, it)
	case itFlush:
		if it.lsn > w.pending.FlushLSN && w.pending.Snapshot == nil {
			w.pending.FlushLSN = it.lsn
			w.dirty = true
		}
	case itSnapMark:
		w.pending = *it.pos
		w.pending.Slot = w.cfg.Slot
		w.dirty = true
		if it.final {
			return w.commit(ctx)
		}
	}
	return nil
}

// change writes one change, unless the resumed position says Kafka has it.
func (w *writer) change(ctx context.Context, ev *event) error {
	if ev.op != opRead {
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
		w.pending = Position{Slot: w.cfg.Slot, LSN: w.pgLSN, Changes: w.pgChanges, FlushLSN: w.pending.FlushLSN}
		w.dirty = true
		return w.commit(ctx)
	}
	return nil
}

// maybeCommit commits at a transaction boundary when the queue is drained,
// the transaction is full, or the commit interval has passed.
func (w *writer) maybeCommit(ctx context.Context, idle bool) error {
	if !w.dirty || w.inPG || w.pending.Snapshot != nil && !idle && w.records < w.cfg.SnapshotTxnMaxRows {
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
	w.m.changes.Add(float64(w.records))
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

// writeEvent produces the records of one change.
func (w *writer) writeEvent(ctx context.Context, ev *event) error {
	c, err := w.codecFor(ctx, ev.t)
	if err != nil {
		return err
	}
	ev.processedMs = time.Now().UnixMilli()
	if ev.op == opTruncate {
		return w.truncate(ctx, c, ev)
	}
	if err := ev.convert(); err != nil {
		return w.deadLetter(ctx, ev, err)
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
		val, err := c.encodeValue(nil, t, ev)
		if err != nil {
			return w.deadLetter(ctx, ev, err)
		}
		if err := w.produce(ctx, &kgo.Record{Topic: t.route.topic, Key: key, Value: val, Timestamp: ev.commitTime}); err != nil {
			return err
		}
	}
	if ev.op == opDelete && key != nil {
		return w.produce(ctx, &kgo.Record{Topic: t.route.topic, Key: key, Timestamp: ev.commitTime})
	}
	return nil
}

// truncate writes a truncate envelope to every partition of the topic, so
// every partition's consumer sees it in order.
func (w *writer) truncate(ctx context.Context, c *codec, ev *event) error {
	t := ev.t
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

// heartbeat writes a heartbeat record to every partition of every topic
// the reader writes, and moves the flush position to the heartbeat. The
// view rows of the keys touched so far go first: every transaction
// committed before the heartbeat's time precedes it in the WAL, so its
// rows then precede the heartbeat in every partition, change records and
// view rows alike (see doc.go, Heartbeats).
func (w *writer) heartbeat(ctx context.Context, it *item) error {
	if w.inPG || it.lsn <= w.resume.FlushLSN || w.pending.Snapshot != nil {
		return nil
	}
	if err := w.refreshViews(ctx); err != nil {
		return err
	}
	ms := strconv.FormatInt(it.at.UnixMilli(), 10)
	for topic, n := range w.topics {
		for p := int32(0); p < n; p++ {
			r := &kgo.Record{
				Topic: topic, Partition: p, Key: heartbeatKey, Timestamp: it.at, Context: manualPartition,
				Headers: []kgo.RecordHeader{{Key: HeartbeatHeader, Value: []byte(ms)}},
			}
			if err := w.produce(ctx, r); err != nil {
				return err
			}
		}
	}
	w.m.heartbeats.Inc()
	if it.lsn > w.pending.FlushLSN {
		w.pending.FlushLSN = it.lsn
	}
	w.dirty = true
	return nil
}

// deadLetter writes a change that cannot be encoded to the dead-letter
// topic, with the error and where it came from in headers, so it is neither
// lost nor able to stop the stream. Errors that are not about the value
// (schema registration, protocol) stop the reader instead.
func (w *writer) deadLetter(ctx context.Context, ev *event, cause error) error {
	if !errors.Is(cause, ErrValue) && !errors.Is(cause, ErrUnsupportedType) {
		return cause
	}
	w.m.deadLetters.Inc()
	w.cfg.Logger.Warn("cdc: change sent to dead-letter topic", "table", ev.t.qualified(), "lsn", ev.lsn.String(), "error", cause)
	body := map[string]any{"table": ev.t.qualified(), "op": string(ev.op), "lsn": ev.lsn.String(), "commit_lsn": ev.commitLSN.String(), "xid": ev.xid, "error": cause.Error()}
	cols := map[string]any{}
	for i, c := range ev.t.cols {
		if ev.new != nil && i < len(ev.new) && ev.new[i].kind == kindText {
			cols[c.name] = string(ev.new[i].data)
		}
	}
	body["after_text"] = cols
	b, _ := json.Marshal(body)
	return w.produce(ctx, &kgo.Record{
		Topic: w.cfg.DeadLetterTopic, Value: b, Timestamp: ev.commitTime,
		Headers: []kgo.RecordHeader{
			{Key: "error", Value: []byte(cause.Error())},
			{Key: "source.table", Value: []byte(ev.t.qualified())},
			{Key: "source.lsn", Value: []byte(ev.lsn.String())},
			{Key: "source.topic", Value: []byte(ev.t.route.topic)},
		},
	})
}

// codecFor returns the codec of a table version, creating its topic and
// registering its schemas on first use.
func (w *writer) codecFor(ctx context.Context, t *table) (*codec, error) {
	if c, ok := w.codecs[t]; ok {
		return c, nil
	}
	if err := w.ensureTopic(ctx, t.route.topic, t.route.mode == ModeUpsert); err != nil {
		return nil, err
	}
	c, err := newCodec(ctx, w.reg, t)
	if err != nil {
		return nil, fmt.Errorf("table %s version %d: %w", t.qualified(), t.version, err)
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

package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
)

// Reader is the CDC reader. Run blocks until ctx ends or a fatal error.
type Reader struct {
	cfg Config
	reg Registry
	m   *metrics
	sm  *slotMetrics
	// hbShift moves heartbeat times (tests: a heartbeat that claims a
	// later time is the negative control of the exactness check).
	hbShift time.Duration
}

// NewReader validates cfg (after defaults) and returns a reader. The
// schema registry client is created from cfg.SchemaRegistryURL.
func NewReader(cfg Config) (*Reader, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	reg, err := NewRegistry(cfg.SchemaRegistryURL)
	if err != nil {
		return nil, err
	}
	m := newMetrics(cfg.Registerer, cfg.Name)
	return &Reader{cfg: cfg, reg: reg, m: m, sm: newSlotMetrics(cfg.Registerer, cfg.Name, m.lagBytes)}, nil
}

// Config returns the reader's configuration with defaults applied.
func (r *Reader) Config() Config { return r.cfg }

// runSessions runs sessions until ctx ends (returning nil) or a fatal
// error; see Run (walguard.go).
func (r *Reader) runSessions(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := r.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if isFatal(err) {
			return err
		}
		r.m.restarts.Inc()
		r.cfg.Logger.Warn("cdc: session ended, restarting", "slot", r.cfg.Slot, "error", err, "backoff", backoff)
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, r.cfg.ReconnectBackoffMax)
	}
}

// session is one run of: fence and read the position, set up the
// publication and slot, snapshot if needed, stream.
func (r *Reader) session(ctx context.Context) error {
	prod, err := kgo.NewClient(
		kgo.SeedBrokers(r.cfg.Brokers...),
		kgo.TransactionalID(r.cfg.TransactionalID),
		kgo.TransactionTimeout(r.cfg.TransactionTimeout),
		kgo.RecordPartitioner(newPartitioner()),
		kgo.ProducerLinger(0),
		kgo.MaxBufferedRecords(20000),
	)
	if err != nil {
		return fmt.Errorf("%w: kafka client: %v", ErrConfig, err)
	}
	defer prod.Close()
	adm := kadm.NewClient(prod)
	if err := r.ensureInternalTopics(ctx, adm); err != nil {
		return err
	}
	skips := map[pglogrepl.LSN]string{}
	pos, found, err := readPosition(ctx, prod, r.cfg.Brokers, r.cfg.PositionsTopic, r.cfg.Name, skips)
	if err != nil {
		return err
	}
	meta, err := connect(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer meta.Close(context.WithoutCancel(ctx))
	return r.stream(ctx, prod, adm, meta, pos, found, skips)
}

func (r *Reader) ensureInternalTopics(ctx context.Context, adm *kadm.Client) error {
	if _, err := ensureTopic(ctx, adm, r.cfg.PositionsTopic, 1, int16(r.cfg.TopicReplicationFactor), true); err != nil {
		return err
	}
	_, err := ensureTopic(ctx, adm, r.cfg.DeadLetterTopic, 1, int16(r.cfg.TopicReplicationFactor), false)
	return err
}

// sessionPlan is what a session does before streaming.
type sessionPlan struct {
	snapshot bool          // create the slot (and read a snapshot)
	verify   pglogrepl.LSN // the slot restarts at or before the position's transaction: see writer.verify
	nonce    string        // the slot's nonce
	// resumeSnapshot: the initial snapshot was interrupted; stream from the
	// slot's consistent point and read the rest incrementally.
	resumeSnapshot bool
}

// resumeSnapshot turns the position of an interrupted initial snapshot
// into a streaming position at the slot's consistent point, with the
// tables (and the rest of the table) not yet committed queued for
// incremental snapshots.
func resumeSnapshot(pos Position, pub []pubTable) Position {
	sp := pos.Snapshot
	out := Position{Slot: pos.Slot, LSN: sp.ConsistentLSN, Complete: true, FlushLSN: sp.ConsistentLSN,
		SystemID: pos.SystemID, Timeline: pos.Timeline, SlotNonce: pos.SlotNonce, Tables: append([]string{}, sp.Done...)}
	inc := &IncrementalProgress{Table: sp.Table, LastKey: slices.Clone(sp.LastKey)}
	if slices.Contains(sp.Done, sp.Table) {
		inc.Table, inc.LastKey = "", nil
	}
	for _, p := range pub {
		n := p.schema + "." + p.name
		if n != inc.Table && !slices.Contains(sp.Done, n) {
			inc.Queue = append(inc.Queue, n)
		}
	}
	out.Incremental = inc
	return out
}

// plan decides whether the session takes a new snapshot, after checking
// that server and slot are the ones the position was read from.
func (r *Reader) plan(ctx context.Context, meta *pgx.Conn, pos Position, found bool, id serverIdent) (sessionPlan, error) {
	slot, err := querySlot(ctx, meta, r.cfg.Slot)
	if err != nil {
		return sessionPlan{}, err
	}
	switch {
	case found && pos.Snapshot == nil:
		if err := checkServer(id, pos, r.cfg.Slot, r.cfg.AllowTimelineChange); err != nil {
			return sessionPlan{}, err
		}
		if err := checkSlot(slot, pos, r.cfg.Slot); err != nil {
			return sessionPlan{}, err
		}
		p := sessionPlan{nonce: pos.SlotNonce}
		if pos.LSN > 0 && slot.confirmedFlush <= pos.LSN {
			p.verify = pos.LSN
			r.cfg.Logger.Info("cdc: slot restarts before the committed position; verifying the replayed WAL", "slot", r.cfg.Slot,
				"confirmed_flush_lsn", slot.confirmedFlush.String(), "position", pos.LSN.String())
		}
		return p, terminateSlotUser(ctx, meta, r.cfg.Slot)
	case !slot.exists:
		// A first start, or a position without a slot because the
		// snapshot never committed: (re)create the slot.
		return sessionPlan{snapshot: true, nonce: newNonce()}, nil
	case found && slot.confirmedFlush <= pos.Snapshot.ConsistentLSN:
		// The initial snapshot was interrupted after some chunks were
		// committed; the slot still stands at its consistent point. Stream
		// from there and read the rest incrementally (see resumeSnapshot).
		if err := checkServer(id, Position{SystemID: pos.SystemID, Timeline: pos.Timeline, FlushLSN: pos.Snapshot.ConsistentLSN}, r.cfg.Slot, r.cfg.AllowTimelineChange); err != nil {
			return sessionPlan{}, err
		}
		r.cfg.Logger.Info("cdc: continuing the interrupted snapshot incrementally", "slot", r.cfg.Slot,
			"rows_committed", pos.Snapshot.Rows, "table", pos.Snapshot.Table, "tables_done", len(pos.Snapshot.Done))
		return sessionPlan{nonce: pos.SlotNonce, resumeSnapshot: true}, terminateSlotUser(ctx, meta, r.cfg.Slot)
	case r.cfg.Snapshot == SnapshotNever && !found:
		r.cfg.Logger.Info("cdc: adopting slot without a snapshot", "slot", r.cfg.Slot, "confirmed_flush_lsn", slot.confirmedFlush.String())
		p := sessionPlan{nonce: newNonce()}
		if err := terminateSlotUser(ctx, meta, r.cfg.Slot); err != nil {
			return p, err
		}
		return p, emitNonce(ctx, meta, r.cfg.Slot, p.nonce)
	}
	// A snapshot was interrupted (or the slot predates any position): the
	// exported snapshot died with its connection, so start it over with a
	// new slot. Nothing of this slot was ever confirmed past the snapshot.
	r.cfg.Logger.Warn("cdc: restarting the snapshot with a new slot", "slot", r.cfg.Slot, "had_position", found)
	return sessionPlan{snapshot: true, nonce: newNonce()}, dropSlot(ctx, meta, r.cfg.Slot)
}

func (r *Reader) stream(ctx context.Context, prod *kgo.Client, adm *kadm.Client, meta *pgx.Conn, pos Position, found bool, skips map[pglogrepl.LSN]string) error {
	pub, err := setupPublication(ctx, meta, &r.cfg)
	if err != nil {
		return err
	}
	if err := checkIdentity(ctx, meta, &r.cfg, pub); err != nil {
		return err
	}
	if err := checkColumns(ctx, meta, &r.cfg, pub); err != nil {
		return err
	}
	r.m.changes.sessionStart(pub)
	repl, err := connectReplication(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer repl.Close(context.WithoutCancel(ctx))
	id, err := identify(ctx, repl)
	if err != nil {
		return err
	}
	plan, err := r.plan(ctx, meta, pos, found, id)
	if err != nil {
		return err
	}
	if plan.resumeSnapshot {
		pos = resumeSnapshot(pos, pub)
	}
	db := meta.Config().Database
	flushed := new(atomic.Uint64)
	flushed.Store(uint64(pos.FlushLSN))
	tables := map[uint32]*table{}
	queue := make(chan []item, r.cfg.QueueMaxBatches)
	w := &writer{
		cfg: &r.cfg, cl: prod, adm: adm, reg: r.reg, m: r.m, db: db, resume: pos,
		codecs: map[*table]*codec{}, codecErrs: map[*table]error{}, skipLSNs: skips, topics: map[string]int32{}, committed: pos, pending: pos, flushed: flushed,
		lastCommit: time.Now(), verify: plan.verify,
		ident:  Position{SystemID: id.systemID, Timeline: id.timeline, SlotNonce: plan.nonce},
		incPos: &IncrementalProgress{}, tables: pos.clone().Tables, completed: pos.clone().Completed,
	}
	if pos.Incremental != nil {
		w.incPos = pos.clone().Incremental
	}
	w.published = map[string]bool{}
	for _, p := range pub {
		w.published[p.schema+"."+p.name] = true
	}
	if r.cfg.ProvideTransactionMetadata {
		w.tx = &txMeta{topic: r.cfg.TransactionTopic} // txmeta.go
	}
	if found && !plan.snapshot && !plan.resumeSnapshot && pos.Snapshot == nil {
		w.tables = r.addedTables(w, pos, pub)
	}
	reqs, chunks := make(chan chunkReq, 1), make(chan *chunk, 1)
	w.inc = incremental{reqs: reqs, chunks: chunks, prefix: newNonce()[:8]}
	if err := r.knownTopics(ctx, w, meta, pub); err != nil {
		return err
	}
	if len(r.cfg.Views) > 0 {
		if w.viewConn, err = connect(ctx, r.cfg.DatabaseURL); err != nil {
			return err
		}
		defer w.viewConn.Close(context.WithoutCancel(ctx))
		for i := range r.cfg.Views {
			w.views = append(w.views, &viewState{cfg: &r.cfg.Views[i], dirty: map[string]viewTouch{}})
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.run(gctx, queue) })
	g.Go(func() error {
		defer close(queue)
		return r.produceItems(gctx, repl, queue, tables, flushed, db, pub, plan, id, skips)
	})
	if r.cfg.HeartbeatInterval > 0 {
		g.Go(func() error { return r.heartbeats(gctx) })
	}
	ck := &chunker{cfg: &r.cfg, reqs: reqs, out: chunks, tables: map[string]*table{}}
	g.Go(func() error { return ck.run(gctx) })
	return g.Wait()
}

// addedTables queues an incremental snapshot of each published table the
// position does not list as snapshotted (a table added to the config after
// the first start), and returns the tables to count as complete. A
// position written before it listed tables counts every published table.
func (r *Reader) addedTables(w *writer, pos Position, pub []pubTable) []string {
	names := make([]string, len(pub))
	for i, p := range pub {
		names[i] = p.schema + "." + p.name
	}
	if pos.Tables == nil {
		w.dirty = true
		return names
	}
	var added []string
	for _, n := range names {
		if !slices.Contains(pos.Tables, n) {
			added = append(added, n)
		}
	}
	if len(added) > 0 {
		r.cfg.Logger.Info("cdc: tables added since the last start are snapshotted incrementally", "tables", strings.Join(added, ", "))
		w.queueSnapshots(added, 0)
	}
	return slices.Clone(pos.Tables)
}

// knownTopics creates the topics of the published tables up front, so
// heartbeats reach every partition of every CDC topic even before a
// table's first change.
func (r *Reader) knownTopics(ctx context.Context, w *writer, meta *pgx.Conn, pub []pubTable) error {
	for _, p := range pub {
		rt := r.cfg.routeFor(p.schema, p.name)
		if err := w.ensureTopic(ctx, rt.topic, rt.mode == ModeUpsert); err != nil {
			return err
		}
		if !rt.heartbeats {
			continue
		}
		rel, pk, err := catalogRelation(ctx, meta, p)
		if err != nil {
			return err
		}
		t, err := newTable(rel, pk, rt)
		if err != nil {
			continue // its changes are dead-lettered
		}
		if _, ok := heartbeatKeyValue(t); !ok {
			r.cfg.Logger.Warn("cdc: no heartbeats in this table's topic: its key has no safe sentinel value (set heartbeats: false to silence)", "table", p.ident(), "topic", rt.topic)
			continue
		}
		w.hbTables = append(w.hbTables, t)
	}
	for _, v := range r.cfg.Views {
		if err := w.ensureTopic(ctx, v.Topic, true); err != nil {
			return err
		}
	}
	return nil
}

// produceItems runs the snapshot (if planned) and then the receiver; it is
// the only user of the replication connection.
func (r *Reader) produceItems(ctx context.Context, repl *pgconn.PgConn, queue chan<- []item, tables map[uint32]*table, flushed *atomic.Uint64, db string, pub []pubTable, plan sessionPlan, id serverIdent, skips map[pglogrepl.LSN]string) error {
	if plan.snapshot {
		if err := r.snapshot(ctx, repl, queue, tables, db, pub, plan.nonce, id.major); err != nil {
			return err
		}
	}
	streaming, err := streamingFor(r.cfg.Streaming, id.major)
	if err != nil {
		return err
	}
	if err := startReplication(ctx, repl, &r.cfg, streaming); err != nil {
		return err
	}
	meta, err := connect(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer meta.Close(context.WithoutCancel(ctx))
	rc := &receiver{cfg: &r.cfg, conn: repl, meta: meta, tables: tables, out: queue, flushed: flushed, m: r.m, db: db,
		batch: make([]item, 0, batchMaxItems), walEnd: id.walEnd, skips: skips,
		streams: streams{on: streaming, bufs: map[uint32]*streamBuf{}, maxBytes: r.cfg.StreamBufferBytes, dir: r.cfg.StreamSpillDir}}
	return rc.run(ctx)
}

func (r *Reader) snapshot(ctx context.Context, repl *pgconn.PgConn, queue chan<- []item, tables map[uint32]*table, db string, pub []pubTable, nonce string, major int) error {
	lsn, name, err := createSlotWithSnapshot(ctx, repl, r.cfg.Slot, major)
	if err != nil {
		return err
	}
	conn, err := connect(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := emitNonce(ctx, conn, r.cfg.Slot, nonce); err != nil {
		return err
	}
	if r.cfg.Snapshot == SnapshotNever {
		select {
		case queue <- []item{{kind: itSnapMark, final: true, pos: &Position{LSN: lsn, Complete: true, FlushLSN: lsn}}}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s := &snapshotter{cfg: &r.cfg, m: r.m, out: queue, tables: tables, db: db, lsn: lsn, at: time.Now(), batch: make([]item, 0, batchMaxItems)}
	return s.run(ctx, conn, name, pub)
}

package pipeline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/loanflow/loanflow/state"
)

// WatermarkStrategy says how a source derives watermarks from event times.
type WatermarkStrategy struct {
	// MaxOutOfOrderness bounds how far behind the newest event time a
	// record may arrive and still be on time.
	MaxOutOfOrderness time.Duration
	// IdleTimeout marks a partition idle after this much processing time
	// without records, so it no longer holds the watermark back; 0 never.
	// A partition the runtime knows to hold unread records is never idle
	// (see Backlog), however long its task stalls.
	IdleTimeout time.Duration
}

// SourceSpec describes a source for AddSource.
type SourceSpec[T any] struct {
	// What is the source type shown in plans ("kafka").
	What string
	// Topic is the topic the runtime reads; a local-only source leaves it
	// empty.
	Topic string
	// Partitions is the number of partitions a local source is fed on
	// (default 1). The Kafka runtime gives each task one partition.
	Partitions int32
	// Decode turns a raw record into a value. Errors dead-letter the record.
	Decode func(raw *RawRecord) (T, error)
	// Timestamp extracts the event time; default the record timestamp.
	Timestamp func(raw *RawRecord, v T) int64
	// Heartbeat recognises records that only advance event time (a CDC
	// heartbeat): they return the time and true and are not emitted.
	Heartbeat func(raw *RawRecord) (int64, bool)
	// Watermarks is the watermark strategy.
	Watermarks WatermarkStrategy
}

// sourceInstance is a source in a task.
type sourceInstance interface {
	instance
	routeKey() string
	start() error
	feedRaw(raw *RawRecord) error
	tick(now int64) error
	snapshot() error
}

// AddSource adds a source to the job.
func AddSource[T any](b *Builder, name string, spec SourceSpec[T]) Stream[T] {
	n := b.add(name, orDefault(spec.What, "source"), kindSource)
	if spec.Decode == nil {
		b.errorf("source %q: SourceSpec.Decode is required", name)
	}
	if spec.Partitions <= 0 {
		spec.Partitions = 1
	}
	out := &port[T]{}
	n.out = out
	n.source = &sourceInfo{topic: spec.Topic, partitions: spec.Partitions}
	n.make = func(tb *taskBuild) (instance, error) {
		ctx, err := tb.newContext(n)
		if err != nil {
			return nil, err
		}
		c, err := out.build(tb)
		if err != nil {
			return nil, err
		}
		s := &sourceInst[T]{ctx: ctx, spec: spec, out: countOut(ctx, c)}
		chans := []int32{tb.t.partition}
		if tb.fused() {
			chans = chans[:0]
			for p := int32(0); p < spec.Partitions; p++ {
				chans = append(chans, p)
			}
		}
		if err := s.open(chans); err != nil {
			return nil, fmt.Errorf("opening source %q: %w", name, err)
		}
		return s, nil
	}
	return Stream[T]{n: n, port: out}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

type sourceInfo struct {
	topic      string
	partitions int32
}

// sourceInst is a typed source in a task.
type sourceInst[T any] struct {
	ctx  *Context
	spec SourceSpec[T]
	out  Collector[T]
	gen  *wmGen
	st   *state.ValueState[chanState]
}

func (s *sourceInst[T]) open(chans []int32) error {
	st, err := state.Value[chanState](s.ctx.task.store, s.ctx.StateSpec("watermarks", 0), chanStateCodec{})
	if err != nil {
		return err
	}
	s.st = st
	now := s.ctx.task.now().UnixMilli()
	s.gen = newWMGen(s.spec.Watermarks, chans, now)
	return s.gen.load(st, now)
}

func (s *sourceInst[T]) input(int) any { return nil }
func (s *sourceInst[T]) close() error  { return nil }
func (s *sourceInst[T]) name() string  { return s.ctx.node.name }

func (s *sourceInst[T]) routeKey() string {
	if s.spec.Topic != "" && s.ctx.task.sub != nil {
		return s.spec.Topic
	}
	return s.ctx.node.name
}

func (s *sourceInst[T]) feedRaw(raw *RawRecord) error {
	ch := raw.Partition
	if ts, ok := s.heartbeat(raw); ok {
		if s.ctx.task.restoring {
			// A replayed heartbeat is neither a row nor news: the
			// restored watermark already covers it.
			return nil
		}
		s.gen.observe(ch, ts, s.ctx.task.now().UnixMilli())
		return s.emitWatermark()
	}
	v, err := s.spec.Decode(raw)
	if err != nil {
		s.ctx.m.in++
		return s.ctx.HandleError(fmt.Errorf("decoding record from %s/%d@%d: %w", raw.Topic, raw.Partition, raw.Offset, err))
	}
	ts := raw.Timestamp
	if s.spec.Timestamp != nil {
		ts = s.spec.Timestamp(raw, v)
	}
	return s.push(ch, Record[T]{Value: v, Time: ts})
}

func (s *sourceInst[T]) heartbeat(raw *RawRecord) (int64, bool) {
	if s.spec.Heartbeat == nil {
		return 0, false
	}
	return s.spec.Heartbeat(raw)
}

func (s *sourceInst[T]) push(ch int32, r Record[T]) error {
	s.ctx.m.in++
	if s.ctx.task.restoring {
		return s.out.Collect(r)
	}
	changed := s.gen.observe(ch, r.Time, s.ctx.task.now().UnixMilli())
	if err := s.out.Collect(r); err != nil {
		return err
	}
	if !changed {
		return nil
	}
	return s.emitWatermark()
}

// start re-emits the restored watermark before any record, so operators
// judge lateness after a restore exactly as before it: the channels'
// combined watermark, or the floor saved with them (wmGen.load) when that
// is ahead.
func (s *sourceInst[T]) start() error {
	if w, ok := s.gen.current(); ok {
		s.ctx.wm = w.Time
		return s.out.Watermark(w)
	}
	if t := s.gen.emitted; t != MinTime {
		s.ctx.wm = t
		return s.out.Watermark(Watermark{Time: t})
	}
	return nil
}

func (s *sourceInst[T]) emitWatermark() error {
	if w, ok := s.gen.current(); ok {
		s.ctx.wm = w.Time
		return s.out.Watermark(w)
	}
	return nil
}

func (s *sourceInst[T]) tick(now int64) error {
	bl := s.ctx.task.backlog
	topic := s.spec.Topic
	s.gen.tick(now, func(ch int32) Backlog {
		if bl == nil || topic == "" {
			return Backlog{Known: true}
		}
		return bl(topic, ch)
	})
	return s.emitWatermark()
}

func (s *sourceInst[T]) snapshot() error { return s.gen.save(s.st) }

// Input feeds typed values into a source of a local task, bypassing
// decoding: the fast path of tests and in-memory benchmarks.
type Input[T any] struct {
	src *sourceInst[T]
}

// InputOf returns the typed input of the named source of t.
func InputOf[T any](t *Task, source string) (*Input[T], error) {
	for _, s := range t.sourceList {
		if si, ok := s.(*sourceInst[T]); ok && si.ctx.node.name == source {
			return &Input[T]{src: si}, nil
		}
	}
	return nil, fmt.Errorf("pipeline: task has no source %q of type %T", source, *new(T))
}

// Push runs one record through the chain as if read from partition p.
// When TaskConfig.MaxWaitingRecords records wait for room in the task's
// operators (async operators at capacity), it first blocks, running their
// completions, until fewer do.
func (in *Input[T]) Push(p int32, v T, ts int64) error {
	if err := in.src.ctx.task.admit(); err != nil {
		return err
	}
	return in.src.push(p, Record[T]{Value: v, Time: ts})
}

// chanState is one input channel's watermark state.
type chanState struct {
	MaxTs int64
	WM    int64
	Idle  bool
}

type chanStateCodec struct{}

func (chanStateCodec) Encode(dst []byte, c chanState) ([]byte, error) {
	dst = binary.AppendVarint(dst, c.MaxTs)
	dst = binary.AppendVarint(dst, c.WM)
	if c.Idle {
		return append(dst, 1), nil
	}
	return append(dst, 0), nil
}

func (chanStateCodec) Decode(src []byte) (chanState, error) {
	var c chanState
	var n int
	if c.MaxTs, n = binary.Varint(src); n <= 0 {
		return c, errors.New("bad watermark state")
	}
	src = src[n:]
	if c.WM, n = binary.Varint(src); n <= 0 || len(src) != n+1 {
		return c, errors.New("bad watermark state")
	}
	c.Idle = src[n] == 1
	return c, nil
}

// wmGen tracks per-channel watermarks (a channel is a source partition,
// or an upstream task of a repartition topic) and combines them.
type wmGen struct {
	bound   int64
	idleMs  int64
	chans   []*chanRT
	idx     map[int32]int
	last    *chanRT
	emitted int64
	idleOut bool
	// savedEmitted is the emitted watermark last saved (emittedKey).
	savedEmitted int64
}

// emittedKey holds, beside the channels' states, the watermark the source
// had sent downstream at the checkpoint: restored, it is a floor (see
// load).
const emittedKey = "emitted"

type chanRT struct {
	chanState
	saved chanState
	id    int32
	// lastActive is when the channel last had news (processing time, ms);
	// clocked is false until the channel's first news or the task's first
	// tick: the idle clock starts when the task runs, not while it restores.
	lastActive int64
	clocked    bool
}

// Backlog is what the runtime knows of a source partition's unread
// records. A partition is idle only when Known and not Unread: the runtime
// has a recent view of the partition's end and the task has read
// everything before it.
type Backlog struct {
	Known, Unread bool
}

func newWMGen(ws WatermarkStrategy, chans []int32, now int64) *wmGen {
	g := &wmGen{bound: ws.MaxOutOfOrderness.Milliseconds(), idleMs: ws.IdleTimeout.Milliseconds(),
		idx: make(map[int32]int), emitted: MinTime}
	for _, c := range chans {
		g.add(c, now)
	}
	return g
}

func (g *wmGen) add(ch int32, now int64) *chanRT {
	c := &chanRT{chanState: chanState{MaxTs: MinTime, WM: MinTime}, id: ch}
	g.idx[ch] = len(g.chans)
	g.chans = append(g.chans, c)
	return c
}

func (g *wmGen) ch(ch int32, now int64) *chanRT {
	if g.last != nil && g.last.id == ch {
		return g.last
	}
	c := (*chanRT)(nil)
	if i, ok := g.idx[ch]; ok {
		c = g.chans[i]
	} else {
		c = g.add(ch, now)
	}
	g.last = c
	return c
}

// observe records an event time seen on a channel and reports whether
// the combined watermark may have changed.
func (g *wmGen) observe(ch int32, ts, now int64) bool {
	c := g.ch(ch, now)
	c.lastActive, c.clocked = now, true
	changed := c.Idle
	c.Idle = false
	if ts > c.MaxTs {
		c.MaxTs = ts
		if wm := ts - g.bound - 1; wm > c.WM {
			c.WM = wm
			changed = true
		}
	}
	return changed
}

// mark sets a channel's watermark directly (repartition markers).
func (g *wmGen) mark(ch int32, wm int64, idle bool, now int64) {
	c := g.ch(ch, now)
	c.lastActive, c.clocked, c.Idle = now, true, idle
	if wm > c.WM {
		c.WM = wm
	}
}

// tick marks channels idle that had no news for the idle timeout and hold
// no unread records that the runtime knows of.
func (g *wmGen) tick(now int64, backlog func(ch int32) Backlog) {
	if g.idleMs <= 0 {
		return
	}
	for _, c := range g.chans {
		if !c.clocked {
			c.lastActive, c.clocked = now, true
			continue
		}
		if c.Idle || now-c.lastActive < g.idleMs {
			continue
		}
		if b := backlog(c.id); b.Known && !b.Unread {
			c.Idle = true
		}
	}
}

// current returns the combined watermark if it changed since last emitted.
func (g *wmGen) current() (Watermark, bool) {
	min, active := MaxTime, false
	for _, c := range g.chans {
		if c.Idle {
			continue
		}
		active = true
		if c.WM < min {
			min = c.WM
		}
	}
	if !active {
		if g.idleOut || len(g.chans) == 0 {
			return Watermark{}, false
		}
		g.idleOut = true
		return Watermark{Time: g.emitted, Idle: true}, true
	}
	wasIdle := g.idleOut
	g.idleOut = false
	if min > g.emitted {
		g.emitted = min
		return Watermark{Time: min}, true
	}
	if wasIdle {
		return Watermark{Time: g.emitted}, true
	}
	return Watermark{}, false
}

// save writes the channels whose state changed since the last save.
func (g *wmGen) save(st *state.ValueState[chanState]) error {
	if g.emitted != g.savedEmitted && g.emitted != MinTime {
		if err := st.Set(emittedKey, chanState{WM: g.emitted}); err != nil {
			return err
		}
		g.savedEmitted = g.emitted
	}
	for _, c := range g.chans {
		if c.chanState == c.saved {
			continue
		}
		if err := st.Set(strconv.Itoa(int(c.id)), c.chanState); err != nil {
			return err
		}
		c.saved = c.chanState
	}
	return nil
}

// load restores the channels' watermarks saved at the last checkpoint;
// a restored channel starts active. The watermark sent downstream at the
// checkpoint is restored too, as a floor: a channel idle then comes back
// active with its old watermark, which would otherwise move the source's
// watermark back behind windows that fired (a record late before the
// restart would re-create a window that fired and was cleaned up, and emit
// its first result twice). The restored channels hold the watermark until
// they pass the floor; they never move it back.
func (g *wmGen) load(st *state.ValueState[chanState], now int64) error {
	return st.Scan(func(key string, cs chanState) error {
		if key == emittedKey {
			g.emitted, g.savedEmitted = cs.WM, cs.WM
			return nil
		}
		id, err := strconv.Atoi(key)
		if err != nil {
			return fmt.Errorf("bad watermark channel %q", key)
		}
		c := g.ch(int32(id), now)
		c.chanState, c.saved = cs, cs
		c.Idle = false
		return nil
	})
}

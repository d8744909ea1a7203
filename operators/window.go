package operators

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

// Window is an event-time interval [Start, End) in ms.
type Window struct {
	Start, End int64
}

// MaxTimestamp is the last instant in the window; results carry it as
// their event time and fire when the watermark reaches it.
func (w Window) MaxTimestamp() int64 { return w.End - 1 }

func (w Window) String() string { return fmt.Sprintf("[%d,%d)", w.Start, w.End) }

// Assigner decides which windows a record belongs to.
type Assigner struct {
	kind             int
	size, slide, gap int64
	offset           int64
}

const (
	tumbling = iota
	sliding
	session
)

// Tumbling windows of a fixed size, aligned to the epoch.
func Tumbling(size time.Duration) Assigner {
	return Assigner{kind: tumbling, size: size.Milliseconds()}
}

// Sliding windows of size, one starting every slide.
func Sliding(size, slide time.Duration) Assigner {
	return Assigner{kind: sliding, size: size.Milliseconds(), slide: slide.Milliseconds()}
}

// Session windows: records closer than gap to each other share a window.
func Session(gap time.Duration) Assigner {
	return Assigner{kind: session, gap: gap.Milliseconds()}
}

func (a Assigner) validate() error {
	switch a.kind {
	case tumbling:
		if a.size <= 0 {
			return errors.New("tumbling window size must be positive")
		}
	case sliding:
		if a.size <= 0 || a.slide <= 0 || a.slide > a.size {
			return errors.New("sliding windows need 0 < slide <= size")
		}
	case session:
		if a.gap <= 0 {
			return errors.New("session gap must be positive")
		}
	}
	return nil
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// assign appends the windows of a record at ts to dst.
func (a Assigner) assign(dst []Window, ts int64) []Window {
	switch a.kind {
	case tumbling:
		start := floorDiv(ts-a.offset, a.size)*a.size + a.offset
		return append(dst, Window{start, start + a.size})
	case sliding:
		last := floorDiv(ts, a.slide) * a.slide
		for start := last; start > ts-a.size; start -= a.slide {
			dst = append(dst, Window{start, start + a.size})
		}
		return dst
	default:
		return append(dst, Window{ts, ts + a.gap})
	}
}

func (a Assigner) merging() bool { return a.kind == session }

// WindowOptions configures an event-time window operator.
type WindowOptions[In any] struct {
	Assigner Assigner
	// AllowedLateness keeps a window's state this long after it fired: late
	// records update it and the result is emitted again.
	AllowedLateness time.Duration
	// Late receives records too late for every window they belong to.
	// Without it they are counted as dropped.
	Late *pipeline.OutputTag[In]
}

// Windowed is a window's result for one key.
type Windowed[K, V any] struct {
	Key    K
	Window Window
	Value  V
	// Update counts re-emissions of the window caused by late records:
	// 0 for the on-time result.
	Update int
}

// AggregateFunc folds a window's records into an accumulator.
type AggregateFunc[In, Acc, Out any] struct {
	Init   func() Acc
	Add    func(acc Acc, in In) Acc
	Merge  func(a, b Acc) Acc // session windows need it
	Result func(acc Acc) Out
}

// Aggregate computes AggregateFunc over event-time windows per key.
// accCodec stores accumulators in state.
func Aggregate[K, In, Acc, Out any](s pipeline.KeyedStream[K, In], name string, opts WindowOptions[In], agg AggregateFunc[In, Acc, Out], accCodec pipeline.Codec[Acc]) pipeline.Stream[Windowed[K, Out]] {
	if s.Stream.Name() != "" {
		if err := opts.Assigner.validate(); err != nil {
			s.Builder().AddError(fmt.Errorf("window %q: %w", name, err))
		} else if opts.Assigner.merging() && agg.Merge == nil {
			s.Builder().AddError(fmt.Errorf("window %q: session windows need AggregateFunc.Merge", name))
		}
	}
	logic := windowLogic[In, Acc, Out]{
		empty:  agg.Init,
		add:    agg.Add,
		merge:  agg.Merge,
		result: func(acc Acc) (Out, error) { return agg.Result(acc), nil },
		codec:  accCodec,
	}
	return addWindow[K](s, name, opts, logic)
}

// Reduce combines a window's records pairwise with fn.
func Reduce[K, T any](s pipeline.KeyedStream[K, T], name string, opts WindowOptions[T], fn func(a, b T) T, codec pipeline.Codec[T]) pipeline.Stream[Windowed[K, T]] {
	return Aggregate(s, name, opts, AggregateFunc[T, reduceAcc[T], T]{
		Init: func() reduceAcc[T] { return reduceAcc[T]{} },
		Add: func(acc reduceAcc[T], in T) reduceAcc[T] {
			if !acc.Set {
				return reduceAcc[T]{V: in, Set: true}
			}
			return reduceAcc[T]{V: fn(acc.V, in), Set: true}
		},
		Merge: func(a, b reduceAcc[T]) reduceAcc[T] {
			switch {
			case !a.Set:
				return b
			case !b.Set:
				return a
			}
			return reduceAcc[T]{V: fn(a.V, b.V), Set: true}
		},
		Result: func(acc reduceAcc[T]) T { return acc.V },
	}, reduceCodec[T]{codec})
}

type reduceAcc[T any] struct {
	V   T
	Set bool
}

type reduceCodec[T any] struct{ c pipeline.Codec[T] }

func (r reduceCodec[T]) Encode(dst []byte, a reduceAcc[T]) ([]byte, error) {
	if !a.Set {
		return append(dst, 0), nil
	}
	return r.c.Encode(append(dst, 1), a.V)
}

func (r reduceCodec[T]) Decode(src []byte) (reduceAcc[T], error) {
	if len(src) == 0 {
		return reduceAcc[T]{}, errors.New("empty reduce accumulator")
	}
	if src[0] == 0 {
		return reduceAcc[T]{}, nil
	}
	v, err := r.c.Decode(src[1:])
	return reduceAcc[T]{V: v, Set: true}, err
}

// ProcessWindow hands all of a window's records to fn when it fires;
// inCodec stores the buffered records.
func ProcessWindow[K, In, Out any](s pipeline.KeyedStream[K, In], name string, opts WindowOptions[In], fn func(key K, w Window, in []In) (Out, error), inCodec pipeline.Codec[In]) pipeline.Stream[Windowed[K, Out]] {
	if err := opts.Assigner.validate(); err != nil && s.Stream.Name() != "" {
		s.Builder().AddError(fmt.Errorf("window %q: %w", name, err))
	}
	var keyOf func(string) (K, error) = s.Keys.DecodeKey
	logic := windowLogic[In, []In, Out]{
		empty: func() []In { return nil },
		add:   func(acc []In, in In) []In { return append(acc, in) },
		merge: func(a, b []In) []In { return append(append([]In(nil), a...), b...) },
		codec: state.ListCodec[In](inCodec),
	}
	logic.resultKeyed = func(key string, w Window, acc []In) (Out, error) {
		k, err := keyOf(key)
		if err != nil {
			var zero Out
			return zero, err
		}
		return fn(k, w, acc)
	}
	return addWindow[K](s, name, opts, logic)
}

// windowLogic is what differs between aggregate and process windows.
type windowLogic[In, Acc, Out any] struct {
	empty       func() Acc
	add         func(Acc, In) Acc
	merge       func(a, b Acc) Acc
	result      func(Acc) (Out, error)
	resultKeyed func(key string, w Window, acc Acc) (Out, error)
	codec       pipeline.Codec[Acc]
}

func addWindow[K, In, Acc, Out any](s pipeline.KeyedStream[K, In], name string, opts WindowOptions[In], logic windowLogic[In, Acc, Out]) pipeline.Stream[Windowed[K, Out]] {
	var sides []pipeline.SideTag
	if opts.Late != nil {
		sides = append(sides, *opts.Late)
	}
	return pipeline.AddOperator(s.Stream, name, pipeline.OperatorSpec{What: "window", Stateful: true, Sides: sides}, func() pipeline.Operator[In, Windowed[K, Out]] {
		return &windowOp[K, In, Acc, Out]{opts: opts, logic: logic, keys: s.Keys, lateness: opts.AllowedLateness.Milliseconds()}
	})
}

// windowOp keeps, per key, a map from window to accumulator (one state
// entry per window) and one timer per window for firing and one for
// cleanup.
type windowOp[K, In, Acc, Out any] struct {
	opts     WindowOptions[In]
	logic    windowLogic[In, Acc, Out]
	keys     pipeline.KeyCodec[K]
	lateness int64

	ctx     *pipeline.Context
	out     pipeline.Collector[Windowed[K, Out]]
	accs    *state.MapState[Acc]
	fired   *state.MapState[int64]
	timers  *state.Timers
	scratch []Window
	kbuf    []byte
}

const (
	timerFire    = 'f'
	timerCleanup = 'c'
)

func (w *windowOp[K, In, Acc, Out]) Open(ctx *pipeline.Context, out pipeline.Collector[Windowed[K, Out]]) error {
	w.ctx, w.out = ctx, out
	var err error
	if w.accs, err = state.Map[Acc](ctx.Store(), ctx.StateSpec("windows", 0), w.logic.codec); err != nil {
		return err
	}
	if w.fired, err = state.Map[int64](ctx.Store(), ctx.StateSpec("fired", 0), varintCodec{}); err != nil {
		return err
	}
	w.timers, err = ctx.EventTimers()
	return err
}

func winKey(win Window) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(win.Start))
	binary.BigEndian.PutUint64(b[8:], uint64(win.End))
	return string(b[:])
}

func parseWinKey(s string) (Window, bool) {
	if len(s) != 16 {
		return Window{}, false
	}
	b := []byte(s)
	return Window{int64(binary.BigEndian.Uint64(b[:8])), int64(binary.BigEndian.Uint64(b[8:]))}, true
}

// timerKey packs (record key, window, kind) into a timer's key.
func (w *windowOp[K, In, Acc, Out]) timerKey(key string, win Window, kind byte) string {
	b := binary.AppendUvarint(w.kbuf[:0], uint64(len(key)))
	b = append(b, key...)
	b = append(b, winKey(win)...)
	b = append(b, kind)
	w.kbuf = b
	return string(b)
}

func parseTimerKey(s string) (key string, win Window, kind byte, ok bool) {
	n, k := binary.Uvarint([]byte(s))
	if k <= 0 || int(n) > len(s)-k || len(s) != k+int(n)+17 {
		return "", Window{}, 0, false
	}
	key = s[k : k+int(n)]
	win, ok = parseWinKey(s[k+int(n) : k+int(n)+16])
	return key, win, s[len(s)-1], ok
}

func (w *windowOp[K, In, Acc, Out]) isLate(win Window) bool {
	return win.MaxTimestamp()+w.lateness <= w.ctx.CurrentWatermark()
}

func (w *windowOp[K, In, Acc, Out]) Process(r pipeline.Record[In]) error {
	w.scratch = w.opts.Assigner.assign(w.scratch[:0], r.Time)
	if w.opts.Assigner.merging() {
		return w.processSession(r, w.scratch[0])
	}
	onTime := false
	for _, win := range w.scratch {
		if w.isLate(win) {
			continue
		}
		onTime = true
		if err := w.addTo(r, win); err != nil {
			return err
		}
	}
	if !onTime {
		return w.late(r)
	}
	return nil
}

func (w *windowOp[K, In, Acc, Out]) late(r pipeline.Record[In]) error {
	if w.opts.Late != nil {
		return pipeline.EmitSide(w.ctx, *w.opts.Late, r)
	}
	w.ctx.CountDropped()
	return nil
}

func (w *windowOp[K, In, Acc, Out]) addTo(r pipeline.Record[In], win Window) error {
	acc, ok, err := w.accs.Update(r.Key, winKey(win), func(acc Acc, found bool) Acc {
		if !found {
			acc = w.logic.empty()
		}
		return w.logic.add(acc, r.Value)
	})
	if err != nil {
		return err
	}
	if !ok {
		// A new window, possibly created by a late record after its end
		// passed: either way its state goes at its cleanup time.
		if err := w.registerTimers(r.Key, win); err != nil {
			return err
		}
	}
	if win.MaxTimestamp() <= w.ctx.CurrentWatermark() {
		// Already due, still within the allowed lateness: emit an update.
		return w.fire(r.Key, win, acc)
	}
	// Not due by the watermark this operator has seen, yet the window may
	// have fired already: right after a restore the watermark is unknown
	// until the restored one comes through (records re-issued by an async
	// stage come first), and the restored watermark can be behind the one
	// that fired the window (an input channel idle at the checkpoint comes
	// back active with its old watermark). A window that fired has no fire
	// timer left, so the record's update would never be emitted: its timer
	// is set again (idempotent, as Flink's EventTimeTrigger does on every
	// record). A window that exists and never fired still holds the timer
	// registerTimers set.
	if ok && w.ctx.CurrentWatermark() != pipeline.MinTime {
		if w.lateness == 0 {
			return nil // a fired window's state is gone: ok means it never fired
		}
		n, _, err := w.fired.Get(r.Key, winKey(win))
		if err != nil || n == 0 {
			return err
		}
	}
	return w.timers.Register(win.MaxTimestamp(), w.timerKey(r.Key, win, timerFire))
}

// registerTimers registers a new window's timers: the firing one unless
// the watermark passed its end already (the caller fires it then), and,
// with allowed lateness, the cleanup one at maxTimestamp + lateness, which
// every window's state needs (without lateness the firing removes it).
func (w *windowOp[K, In, Acc, Out]) registerTimers(key string, win Window) error {
	if win.MaxTimestamp() > w.ctx.CurrentWatermark() {
		if err := w.timers.Register(win.MaxTimestamp(), w.timerKey(key, win, timerFire)); err != nil {
			return err
		}
	}
	if w.lateness > 0 {
		return w.timers.Register(win.MaxTimestamp()+w.lateness, w.timerKey(key, win, timerCleanup))
	}
	return nil
}

func (w *windowOp[K, In, Acc, Out]) deleteTimers(key string, win Window) error {
	if err := w.timers.Delete(win.MaxTimestamp(), w.timerKey(key, win, timerFire)); err != nil {
		return err
	}
	if w.lateness > 0 {
		return w.timers.Delete(win.MaxTimestamp()+w.lateness, w.timerKey(key, win, timerCleanup))
	}
	return nil
}

// processSession merges the record's window with every window of its key
// it overlaps, and only then judges lateness, on the merged window (as
// Flink's MergingWindowSet does): a record whose own window [t, t+gap) is
// behind the watermark is on time when it falls into a session that has
// not been cleaned up.
func (w *windowOp[K, In, Acc, Out]) processSession(r pipeline.Record[In], win Window) error {
	keys, accs, err := w.accs.Entries(r.Key)
	if err != nil {
		return err
	}
	merged := win
	for _, wk := range keys {
		if ex, ok := parseWinKey(wk); ok && overlaps(ex, win) {
			merged.Start, merged.End = min(merged.Start, ex.Start), max(merged.End, ex.End)
		}
	}
	if w.isLate(merged) {
		return w.late(r)
	}
	acc, fired := w.logic.empty(), int64(0)
	for i, wk := range keys {
		ex, ok := parseWinKey(wk)
		if !ok || !overlaps(ex, win) {
			continue
		}
		acc = w.logic.merge(acc, accs[i])
		n, err := w.dropWindow(r.Key, ex)
		if err != nil {
			return err
		}
		fired = max(fired, n)
	}
	acc = w.logic.add(acc, r.Value)
	if err := w.accs.Put(r.Key, winKey(merged), acc); err != nil {
		return err
	}
	if fired > 0 {
		// The merged session carries the firings of its parts, so its next
		// result counts as an update.
		if err := w.fired.Put(r.Key, winKey(merged), fired); err != nil {
			return err
		}
	}
	if err := w.registerTimers(r.Key, merged); err != nil {
		return err
	}
	if merged.MaxTimestamp() <= w.ctx.CurrentWatermark() {
		return w.fire(r.Key, merged, acc)
	}
	return nil
}

// overlaps reports whether two session windows merge; a gap of exactly
// zero still merges: [a,b) and [b,c).
func overlaps(a, b Window) bool { return a.End >= b.Start && a.Start <= b.End }

// dropWindow removes a session merged into another: its accumulator, its
// timers and its firing count, which it returns.
func (w *windowOp[K, In, Acc, Out]) dropWindow(key string, win Window) (int64, error) {
	wk := winKey(win)
	if err := w.accs.Remove(key, wk); err != nil {
		return 0, err
	}
	if err := w.deleteTimers(key, win); err != nil {
		return 0, err
	}
	n, _, err := w.fired.Get(key, wk)
	if err != nil {
		return 0, err
	}
	return n, w.fired.Remove(key, wk)
}

func (w *windowOp[K, In, Acc, Out]) OnTimer(_ pipeline.TimeDomain, tk string, _ int64) error {
	key, win, kind, ok := parseTimerKey(tk)
	if !ok {
		return fmt.Errorf("window %q: corrupt timer", w.ctx.Name())
	}
	wk := winKey(win)
	if kind == timerCleanup {
		if err := w.accs.Remove(key, wk); err != nil {
			return err
		}
		return w.fired.Remove(key, wk)
	}
	acc, ok, err := w.accs.Get(key, wk)
	if err != nil || !ok {
		return err
	}
	if err := w.fire(key, win, acc); err != nil {
		return err
	}
	if w.lateness == 0 {
		return w.accs.Remove(key, wk)
	}
	return nil
}

func (w *windowOp[K, In, Acc, Out]) fire(key string, win Window, acc Acc) error {
	k, err := w.keys.DecodeKey(key)
	if err != nil {
		return err
	}
	var v Out
	if w.logic.resultKeyed != nil {
		v, err = w.logic.resultKeyed(key, win, acc)
	} else {
		v, err = w.logic.result(acc)
	}
	if err != nil {
		// Firing is set off by a watermark, not by the record being fed:
		// the dead letter carries the window's contents.
		err = fmt.Errorf("window %s of key %q: %w", win, key, err)
		in, encErr := w.logic.codec.Encode(nil, acc)
		if encErr != nil {
			err = fmt.Errorf("%w (and encoding the window for the dead letter: %v)", err, encErr)
		}
		return w.ctx.HandleErrorValue(err, pipeline.Record[[]byte]{Value: in, Time: win.MaxTimestamp(), Key: key})
	}
	update := 0
	if w.lateness > 0 {
		wk := winKey(win)
		n, _, err := w.fired.Get(key, wk)
		if err != nil {
			return err
		}
		update = int(n)
		if err := w.fired.Put(key, wk, n+1); err != nil {
			return err
		}
	}
	return w.out.Collect(pipeline.Record[Windowed[K, Out]]{
		Value: Windowed[K, Out]{Key: k, Window: win, Value: v, Update: update},
		Time:  win.MaxTimestamp(), Key: key,
	})
}

func (w *windowOp[K, In, Acc, Out]) Close() error { return nil }

type varintCodec struct{}

func (varintCodec) Encode(dst []byte, v int64) ([]byte, error) {
	return binary.AppendVarint(dst, v), nil
}
func (varintCodec) Decode(src []byte) (int64, error) {
	v, n := binary.Varint(src)
	if n <= 0 {
		return 0, errors.New("bad varint")
	}
	return v, nil
}

package operators

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

// RetryPolicy retries failed or timed-out async calls with exponential
// backoff and jitter.
type RetryPolicy struct {
	// MaxAttempts counts the first call; 1 means no retries. Default 3.
	MaxAttempts int
	// InitialBackoff before the second attempt. Default 100ms.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait. Default 5s.
	MaxBackoff time.Duration
	// Multiplier grows the wait per attempt. Default 2.
	Multiplier float64
	// Jitter randomises each wait by ±Jitter of itself. Default 0.2.
	Jitter float64
	// Retryable decides whether an error is worth another attempt; default
	// every error (timeouts included).
	Retryable func(error) bool
}

func (r RetryPolicy) withDefaults() RetryPolicy {
	if r.MaxAttempts <= 0 {
		r.MaxAttempts = 3
	}
	if r.InitialBackoff <= 0 {
		r.InitialBackoff = 100 * time.Millisecond
	}
	if r.MaxBackoff <= 0 {
		r.MaxBackoff = 5 * time.Second
	}
	if r.Multiplier < 1 {
		r.Multiplier = 2
	}
	if r.Jitter <= 0 {
		r.Jitter = 0.2
	}
	return r
}

// AsyncSpec configures Async.
type AsyncSpec[In, Out any] struct {
	// Call performs the external request. ctx is cancelled at its timeout
	// and when the task stops; Call must honour it.
	Call func(ctx context.Context, in In) (Out, error)
	// Ordered emits results in input order; otherwise as they complete
	// (never across a watermark).
	Ordered bool
	// Capacity bounds the calls in flight in one task. Default 100.
	Capacity int
	// Timeout bounds each attempt. Default 5s.
	Timeout time.Duration
	Retry   RetryPolicy
	// OnFailure turns a call that failed every attempt into a fallback
	// record (ok = true). Without it, or when it declines, the input goes
	// to the dead-letter topic with the error.
	OnFailure func(in In, err error) (out Out, ok bool)
	// InCodec stores in-flight inputs in checkpoints: after a restore they
	// are issued again.
	InCodec pipeline.Codec[In]
	// Limiter, when set, bounds the attempts in flight across every task
	// (and operator) sharing it, e.g. a service's capacity per worker: an
	// attempt waits for a slot before its Timeout starts, so calls queued
	// behind a busy service do not time out while they wait.
	Limiter *Limiter
}

// Limiter is a number of slots shared by async operators (NewLimiter).
type Limiter struct{ slots chan struct{} }

// NewLimiter returns a limiter of n slots (n >= 1).
func NewLimiter(n int) *Limiter { return &Limiter{slots: make(chan struct{}, max(n, 1))} }

// acquire takes a slot, or gives up when ctx ends.
func (l *Limiter) acquire(ctx context.Context) error {
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *Limiter) release() { <-l.slots }

// Async calls an external service for each record without blocking the
// task: up to Capacity calls are in flight at once, each in its own
// goroutine; results come back to the task goroutine. A record that finds
// Capacity calls in flight waits in the operator (its call starts when one
// ends) and the task reports backpressure (pipeline.Context.SetWaiting):
// the runtime stops fetching the task's input, but the task goes on
// handling completions and checkpoints, so a full operator never holds a
// transaction open past its timeout (as Flink's AsyncWaitOperator, whose
// snapshot holds the queued elements). In-flight and waiting inputs are
// part of every checkpoint (a checkpoint never waits for them) and are
// issued again after a restore, so calls are at-least-once and outputs
// exactly-once.
func Async[In, Out any](s pipeline.Stream[In], name string, spec AsyncSpec[In, Out]) pipeline.Stream[Out] {
	if spec.Call == nil || spec.InCodec == nil {
		s.Builder().AddError(fmt.Errorf("async %q: Call and InCodec are required", name))
	}
	if spec.Capacity <= 0 {
		spec.Capacity = 100
	}
	if spec.Timeout <= 0 {
		spec.Timeout = 5 * time.Second
	}
	spec.Retry = spec.Retry.withDefaults()
	return pipeline.AddOperator(s, name, pipeline.OperatorSpec{What: "async", Stateful: true}, func() pipeline.Operator[In, Out] {
		return &asyncOp[In, Out]{spec: spec}
	})
}

// asyncEntry is a record in flight, or a watermark queued behind records.
type asyncEntry[In, Out any] struct {
	rec     pipeline.Record[In]
	out     Out
	err     error
	done    bool
	emitted bool
	started bool // its call was issued (else it waits for room)
	isWM    bool
	wm      pipeline.Watermark
	seq     uint64 // its key in the in-flight state
	stored  bool   // its input is in the in-flight state (a snapshot wrote it)
}

type asyncOp[In, Out any] struct {
	spec AsyncSpec[In, Out]
	ctx  *pipeline.Context
	out  pipeline.Collector[Out]
	// st holds one entry per input not yet emitted, keyed by its sequence
	// number (inFlightKey): a snapshot writes the inputs that arrived
	// since the last one and deletes those emitted since, so its cost
	// and the size of each changelog record do not grow with the number
	// in flight. (The whole list was once one value: a backlog of
	// unknown applicants made a changelog record of megabytes, refused by
	// the broker as MESSAGE_TOO_LARGE, and the task failed at every
	// checkpoint.)
	st      *state.ValueState[pipeline.Record[In]]
	legacy  *state.ValueState[[]pipeline.Record[In]] // the one-value list of older checkpoints
	nextSeq uint64
	unsaved []*asyncEntry[In, Out] // arrived since the last snapshot
	unstore []uint64               // stored entries emitted since the last snapshot

	queue    []*asyncEntry[In, Out] // input order; head at queue[head]; see compact
	head     int
	inFlight int
	waiting  []*asyncEntry[In, Out] // accepted at capacity, in arrival order; head at waiting[whead]
	whead    int
	done     chan *asyncEntry[In, Out]

	callCtx context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// asyncOpened, set only by this package's tests (export_test.go), is told
// of every async operator that opens.
var asyncOpened func(queueSize func() (length, capacity int))

func (a *asyncOp[In, Out]) queueSize() (length, capacity int) { return len(a.queue), cap(a.queue) }

func (a *asyncOp[In, Out]) Open(ctx *pipeline.Context, out pipeline.Collector[Out]) error {
	a.ctx, a.out = ctx, out
	if asyncOpened != nil {
		asyncOpened(a.queueSize)
	}
	a.done = make(chan *asyncEntry[In, Out], a.spec.Capacity)
	a.callCtx, a.cancel = context.WithCancel(context.Background())
	ctx.RegisterDrainer(a)
	var err error
	spec := ctx.StateSpec("in-flight-inputs", 0)
	spec.WriteOnly = true // read back only here, by Scan
	if a.st, err = state.Value[pipeline.Record[In]](ctx.Store(), spec, recordCodec[In]{a.spec.InCodec}); err != nil {
		return err
	}
	if a.legacy, err = state.Value[[]pipeline.Record[In]](ctx.Store(), ctx.StateSpec("in-flight", 0), state.ListCodec[pipeline.Record[In]](recordCodec[In]{a.spec.InCodec})); err != nil {
		return err
	}
	// The inputs a checkpoint held, in arrival order (keys sort as their
	// sequence numbers), are issued again under the same keys.
	var restored []*asyncEntry[In, Out]
	err = a.st.Scan(func(key string, r pipeline.Record[In]) error {
		seq, err := strconv.ParseUint(key, 16, 64)
		if err != nil {
			return fmt.Errorf("async %q: in-flight state key %q: %w", ctx.Name(), key, err)
		}
		restored = append(restored, &asyncEntry[In, Out]{rec: r, seq: seq, stored: true})
		a.nextSeq = max(a.nextSeq, seq+1)
		return nil
	})
	if err != nil {
		return err
	}
	old, ok, err := a.legacy.Get("")
	if err != nil {
		return err
	}
	if ok {
		if err := a.legacy.Delete(""); err != nil { // its inputs are stored anew at the next snapshot
			return err
		}
	}
	for _, e := range restored {
		a.enqueue(e)
	}
	for _, r := range old {
		if err := a.Process(r); err != nil {
			// The task never gets this operator to close: stop the calls
			// already re-issued here.
			a.Close()
			return err
		}
	}
	return nil
}

// inFlightKey is the state key of the input with sequence number seq:
// fixed-width hex, so keys sort as the numbers do.
func inFlightKey(seq uint64) string { return fmt.Sprintf("%016x", seq) }

// Process starts a call for r, or, when Capacity calls are in flight,
// keeps r waiting for room and reports backpressure. It never blocks the
// task: a task blocked here would hold its transaction open until a call
// ends, past the transaction timeout when calls are slow and many wait.
func (a *asyncOp[In, Out]) Process(r pipeline.Record[In]) error {
	e := &asyncEntry[In, Out]{rec: r, seq: a.nextSeq}
	a.nextSeq++
	a.unsaved = append(a.unsaved, e)
	a.enqueue(e)
	return nil
}

// enqueue issues e's call, or keeps it waiting for room.
func (a *asyncOp[In, Out]) enqueue(e *asyncEntry[In, Out]) {
	a.queue = append(a.queue, e)
	if a.inFlight < a.spec.Capacity {
		a.start(e)
		return
	}
	a.waiting = append(a.waiting, e)
	a.ctx.SetWaiting(len(a.waiting) - a.whead)
}

// start issues e's call.
func (a *asyncOp[In, Out]) start(e *asyncEntry[In, Out]) {
	e.started = true
	a.inFlight++
	a.ctx.SetInFlight(a.inFlight)
	a.wg.Add(1)
	go a.call(e)
}

// startWaiting issues the calls of waiting records while there is room.
func (a *asyncOp[In, Out]) startWaiting() {
	for a.inFlight < a.spec.Capacity && a.whead < len(a.waiting) {
		a.start(a.waiting[a.whead])
		a.waiting[a.whead] = nil
		a.whead++
	}
	if a.whead == len(a.waiting) {
		a.waiting, a.whead = a.waiting[:0], 0
	} else if a.whead >= compactAfter && a.whead*2 >= len(a.waiting) {
		n := copy(a.waiting, a.waiting[a.whead:])
		clear(a.waiting[n:])
		a.waiting, a.whead = a.waiting[:n], 0
	}
	a.ctx.SetWaiting(len(a.waiting) - a.whead)
}

// call runs on its own goroutine: attempts with timeouts and backoff.
func (a *asyncOp[In, Out]) call(e *asyncEntry[In, Out]) {
	defer a.wg.Done()
	rp := a.spec.Retry
	bo := &backoff.ExponentialBackOff{InitialInterval: rp.InitialBackoff, RandomizationFactor: rp.Jitter, Multiplier: rp.Multiplier, MaxInterval: rp.MaxBackoff}
	bo.Reset()
	for attempt := 1; ; attempt++ {
		if l := a.spec.Limiter; l != nil {
			if err := l.acquire(a.callCtx); err != nil {
				e.err = err // the task stops: the record is in its checkpoint
				break
			}
		}
		actx, cancel := context.WithTimeout(a.callCtx, a.spec.Timeout)
		out, err := a.spec.Call(actx, e.rec.Value)
		if err != nil && errors.Is(err, context.DeadlineExceeded) && a.callCtx.Err() == nil {
			err = fmt.Errorf("timed out after %s: %w", a.spec.Timeout, err)
		}
		cancel()
		if l := a.spec.Limiter; l != nil {
			l.release()
		}
		if err == nil {
			e.out, e.err = out, nil
			break
		}
		e.err = fmt.Errorf("attempt %d of %d: %w", attempt, rp.MaxAttempts, err)
		if attempt >= rp.MaxAttempts || a.callCtx.Err() != nil || (rp.Retryable != nil && !rp.Retryable(err)) {
			break
		}
		select {
		case <-time.After(bo.NextBackOff()):
		case <-a.callCtx.Done():
		}
	}
	a.done <- e // never blocks: the channel holds Capacity entries
	a.ctx.Wake()
}

// Drain handles completed calls (on the task goroutine).
func (a *asyncOp[In, Out]) Drain() error {
	for {
		select {
		case e := <-a.done:
			if err := a.complete(e); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// complete handles a finished call and starts a waiting one in its place.
// It runs detached from any record being fed: its dead letters and
// downstream failures do not name one.
func (a *asyncOp[In, Out]) complete(e *asyncEntry[In, Out]) error {
	e.done = true
	a.inFlight--
	a.ctx.SetInFlight(a.inFlight)
	a.startWaiting()
	return a.ctx.Detached(func() error {
		if !a.spec.Ordered {
			if err := a.emit(e); err != nil {
				return err
			}
		}
		return a.flush()
	})
}

// emit sends a completed record's result, or its fallback, or a dead
// letter carrying the failed input encoded with InCodec (never the record
// being fed, which is another one or none).
func (a *asyncOp[In, Out]) emit(e *asyncEntry[In, Out]) error {
	e.emitted = true
	if e.stored {
		a.unstore = append(a.unstore, e.seq)
	}
	if e.err == nil {
		return a.out.Collect(pipeline.Record[Out]{Value: e.out, Time: e.rec.Time, Key: e.rec.Key})
	}
	if a.spec.OnFailure != nil {
		if out, ok := a.spec.OnFailure(e.rec.Value, e.err); ok {
			return a.out.Collect(pipeline.Record[Out]{Value: out, Time: e.rec.Time, Key: e.rec.Key})
		}
	}
	err := fmt.Errorf("async %q: %w", a.ctx.Name(), e.err)
	in, encErr := a.spec.InCodec.Encode(nil, e.rec.Value)
	if encErr != nil {
		err = fmt.Errorf("%w (and encoding the input for the dead letter: %v)", err, encErr)
	}
	return a.ctx.HandleErrorValue(err, pipeline.Record[[]byte]{Value: in, Time: e.rec.Time, Key: e.rec.Key})
}

// flush pops the head of the queue: emitted records, completed records
// (ordered mode) and the watermarks behind them. A watermark leaves only
// when every record that arrived before it has left, so none of them turns
// late downstream; in unordered mode, records that arrived after a
// watermark may leave before it.
func (a *asyncOp[In, Out]) flush() error {
	for a.head < len(a.queue) {
		e := a.queue[a.head]
		switch {
		case e.isWM:
			if err := a.ctx.ForwardWatermark(e.wm); err != nil {
				return err
			}
		case e.emitted:
		case e.done && a.spec.Ordered:
			if err := a.emit(e); err != nil {
				return err
			}
		default:
			a.compact()
			return nil
		}
		a.queue[a.head] = nil
		a.head++
	}
	a.queue, a.head = a.queue[:0], 0
	return nil
}

// compactAfter is the head position from which the queue may be compacted.
const compactAfter = 16

// compact moves the live entries of a queue that did not drain to its
// front once the head has passed half of it, so its length stays within
// twice the live entries (or compactAfter more) however long the head
// keeps moving; each entry is moved at most once per doubling, amortised
// O(1).
func (a *asyncOp[In, Out]) compact() {
	if a.head < compactAfter || a.head*2 < len(a.queue) {
		return
	}
	n := copy(a.queue, a.queue[a.head:])
	clear(a.queue[n:])
	a.queue, a.head = a.queue[:n], 0
}

// OnWatermark queues the watermark behind the records in flight.
func (a *asyncOp[In, Out]) OnWatermark(w pipeline.Watermark) (bool, error) {
	if a.head == len(a.queue) {
		return true, nil
	}
	if last := a.queue[len(a.queue)-1]; last.isWM {
		last.wm = w // consecutive watermarks collapse into the newest
		return false, nil
	}
	a.queue = append(a.queue, &asyncEntry[In, Out]{isWM: true, wm: w})
	return false, a.flush()
}

// Snapshot stores the inputs of everything not yet emitted, calls in
// flight and records waiting for room: it writes those that arrived since
// the last snapshot and deletes those emitted since (O(change), not O(in
// flight)).
func (a *asyncOp[In, Out]) Snapshot() error {
	for _, seq := range a.unstore {
		if err := a.st.Delete(inFlightKey(seq)); err != nil {
			return err
		}
	}
	a.unstore = a.unstore[:0]
	for i, e := range a.unsaved {
		if !e.emitted {
			if err := a.st.Set(inFlightKey(e.seq), e.rec); err != nil {
				return err
			}
			e.stored = true
		}
		a.unsaved[i] = nil
	}
	a.unsaved = a.unsaved[:0]
	return nil
}

func (a *asyncOp[In, Out]) Close() error {
	a.cancel()
	a.wg.Wait()
	return nil
}

// recordCodec stores a record with its time and key.
type recordCodec[T any] struct{ c pipeline.Codec[T] }

func (rc recordCodec[T]) Encode(dst []byte, r pipeline.Record[T]) ([]byte, error) {
	dst = binary.AppendVarint(dst, r.Time)
	dst = binary.AppendUvarint(dst, uint64(len(r.Key)))
	dst = append(dst, r.Key...)
	return rc.c.Encode(dst, r.Value)
}

func (rc recordCodec[T]) Decode(src []byte) (pipeline.Record[T], error) {
	var r pipeline.Record[T]
	t, n := binary.Varint(src)
	if n <= 0 {
		return r, errors.New("corrupt in-flight record")
	}
	src = src[n:]
	l, n := binary.Uvarint(src)
	if n <= 0 || l > uint64(len(src)-n) {
		return r, errors.New("corrupt in-flight record")
	}
	r.Time, r.Key = t, string(src[n:n+int(l)])
	v, err := rc.c.Decode(src[n+int(l):])
	r.Value = v
	return r, err
}

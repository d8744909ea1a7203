package pipeline

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/loanflow/loanflow/state"
)

// ErrRetryable marks an error that should fail the task so it restarts
// from its last checkpoint (a dependency is down), rather than send the
// record to the dead-letter topic (the record itself is bad).
var ErrRetryable = errors.New("pipeline: retryable")

// Retryable wraps err so that HandleError fails the task instead of
// dead-lettering the record.
func Retryable(err error) error { return fmt.Errorf("%w: %w", ErrRetryable, err) }

// Context is an operator's view of its task: state, timers, time, side
// outputs and error handling. It belongs to the task's goroutine.
type Context struct {
	task  *Task
	node  *node
	m     *opMetrics
	sides map[string]any
	wm    int64

	th          TimerHandler
	eventTimers *state.Timers
	procTimers  *state.Timers
	forward     func(Watermark) error
}

// Name is the operator's name.
func (c *Context) Name() string { return c.node.name }

// Job is the job's name.
func (c *Context) Job() string { return c.task.plan.Job }

// Partition is the task's partition index.
func (c *Context) Partition() int32 { return c.task.partition }

// Logger logs with the job, operator and partition attached.
func (c *Context) Logger() *slog.Logger {
	return c.task.log.With("operator", c.node.name)
}

// Store is the task's keyed state.
func (c *Context) Store() *state.Store { return c.task.store }

// StateSpec names a state handle of this operator; its mutations go to
// the operator's changelog topic.
func (c *Context) StateSpec(name string, ttl time.Duration) state.Spec {
	return state.Spec{Operator: c.node.name, Name: name, Log: ChangelogTopic(c.task.plan.Job, c.node.name), TTL: ttl}
}

// OutputConsumed reports whether the operator's main output has readers.
func (c *Context) OutputConsumed() bool { return c.node.out != nil && c.node.out.used() }

// TableStateSpec names state that is a pure function of input i's records
// (a versioned table). When that input comes straight from a source topic
// through stateless operators only, the state has no changelog: the
// source topic is its changelog, replayed on restore. Otherwise it is
// like StateSpec.
func (c *Context) TableStateSpec(input int, name string) state.Spec {
	spec := c.StateSpec(name, 0)
	if _, ok := c.task.plan.tableSource(c.node, input); ok {
		spec.Log = ""
	}
	return spec
}

// CurrentWatermark is the operator's input watermark.
func (c *Context) CurrentWatermark() int64 { return c.wm }

// Now is the task's processing time.
func (c *Context) Now() time.Time { return c.task.now() }

// Restoring reports whether the task is replaying a source to rebuild
// state; operators then update state but emit nothing.
func (c *Context) Restoring() bool { return c.task.restoring }

// EventTimers is the operator's persistent event-time timer queue; the
// runtime fires its timers through TimerHandler as the watermark passes.
func (c *Context) EventTimers() (*state.Timers, error) {
	if c.eventTimers == nil {
		t, err := state.NewTimers(c.task.store, c.StateSpec("timers/event", 0))
		if err != nil {
			return nil, err
		}
		c.eventTimers = t
	}
	return c.eventTimers, nil
}

// ProcessingTimers is the operator's persistent processing-time timer
// queue, fired on the task's ticks.
func (c *Context) ProcessingTimers() (*state.Timers, error) {
	if c.procTimers == nil {
		t, err := state.NewTimers(c.task.store, c.StateSpec("timers/processing", 0))
		if err != nil {
			return nil, err
		}
		c.procTimers = t
		c.task.procTimerCtxs = append(c.task.procTimerCtxs, c)
	}
	return c.procTimers, nil
}

func (c *Context) fireEventTimers(upTo int64) error {
	if c.eventTimers == nil || c.th == nil {
		return nil
	}
	return fireTimers(c.eventTimers, upTo, EventTime, c.th)
}

func fireTimers(t *state.Timers, upTo int64, d TimeDomain, th TimerHandler) error {
	for {
		ts, key, ok, err := t.Pop(upTo)
		if err != nil || !ok {
			return err
		}
		if err := th.OnTimer(d, key, ts); err != nil {
			return err
		}
	}
}

// ForwardWatermark sends a watermark downstream, to the main output and
// every side output; for operators that hold watermarks back.
func (c *Context) ForwardWatermark(w Watermark) error { return c.forward(w) }

// setForward makes the operator's watermarks go to main and to every side
// output, as records' event times on side outputs follow the same clock.
func (c *Context) setForward(main func(Watermark) error) {
	var sides []func(Watermark) error
	for _, col := range c.sides {
		if wm, ok := col.(interface{ Watermark(Watermark) error }); ok {
			sides = append(sides, wm.Watermark)
		}
	}
	if len(sides) == 0 {
		c.forward = main
		return
	}
	c.forward = func(w Watermark) error {
		if err := main(w); err != nil {
			return err
		}
		for _, f := range sides {
			if err := f(w); err != nil {
				return err
			}
		}
		return nil
	}
}

// HandleError decides what a failed record costs: a retryable error fails
// the task (it restarts from its last checkpoint); any other sends a dead
// letter with the error and its origin, and processing goes on. The dead
// letter carries the source record being fed only when the failure is part
// of processing that record: work caused by a watermark (timers, windows
// firing, held-back async results, waiting join probes) and work run in
// Detached carries none, so it never names an unrelated record. Operators
// that know the failed input's bytes use HandleErrorValue instead. While
// the task is restoring nothing is dead-lettered: the first run did it.
func (c *Context) HandleError(err error) error {
	return c.handleError(err, nil)
}

// HandleErrorValue is HandleError for a failed input that is not the
// record being fed (an async call's input, a window's contents): the dead
// letter carries in — the input encoded, with its key and event time —
// and no source record.
func (c *Context) HandleErrorValue(err error, in Record[[]byte]) error {
	return c.handleError(err, &in)
}

func (c *Context) handleError(err error, in *Record[[]byte]) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrRetryable) {
		return fmt.Errorf("%s %q: %w", c.node.what, c.node.name, err)
	}
	if c.task.restoring {
		return nil
	}
	c.m.deadLettered++
	return c.task.deadLetter(c.node.name, err, in)
}

// Detached runs fn as work that is not part of the record being fed (an
// async operator completing an earlier call while a record waits for
// capacity): dead letters written in fn carry no source record.
func (c *Context) Detached(fn func() error) error {
	t := c.task
	cur := t.current
	t.current = nil
	err := fn()
	t.current = cur
	return err
}

// Wake tells the task loop that the operator has work queued from another
// goroutine (an async completion); it then calls the operator's Drain.
func (c *Context) Wake() { c.task.wake() }

// Drainer is implemented by operators that receive work from other
// goroutines (async I/O): Drain runs on the task goroutine after Wake.
type Drainer interface {
	Drain() error
}

// FireSlice is how much work (keys, timers) one watermark may release in
// one go before the operator hands the rest to a later slice: it calls
// Wake and continues in the Drain of a drainer registered with
// RegisterContinuation. 0: no bound.
func (c *Context) FireSlice() int { return c.task.fireSlice }

// RegisterContinuation makes the task call d.Drain when woken, for work an
// operator cut into slices (FireSlice); unlike RegisterDrainer it does not
// make the operator count as asynchronous.
func (c *Context) RegisterContinuation(d Drainer) {
	c.task.drainers = append(c.task.drainers, d)
}

// RegisterDrainer makes the task call d.Drain when woken.
// The operator counts as asynchronous: it reports async_in_flight.
func (c *Context) RegisterDrainer(d Drainer) {
	c.task.drainers = append(c.task.drainers, d)
	c.m.async = true
}

// CountDropped counts a record dropped on purpose (late data without a
// side output).
func (c *Context) CountDropped() { c.m.dropped++ }

// Metrics gives the operator's gauges for in-flight async calls.
func (c *Context) SetInFlight(n int) { c.m.inFlight = int64(n) }

// SetWaiting reports how many accepted records wait for room in the
// operator (an async operator at capacity). While any does, the task is
// backpressured (Task.Backpressured): the runtime stops fetching its input
// but keeps checkpointing, so a full operator never holds a transaction
// open. The records waiting are part of the operator's snapshot. An
// in-process driver feeding the task blocks while TaskConfig.
// MaxWaitingRecords wait: the operator must Wake the task when room comes
// (an async completion does).
func (c *Context) SetWaiting(n int) {
	c.task.waiting += int64(n) - c.m.waiting
	c.m.waiting = int64(n)
}

// countOut counts the operator's output records.
func countOut[T any](ctx *Context, out Collector[T]) Collector[T] {
	return &counting[T]{out: out, n: &ctx.m.out, t: ctx.task}
}

type counting[T any] struct {
	out Collector[T]
	n   *int64
	t   *Task
}

func (c *counting[T]) Collect(r Record[T]) error {
	*c.n++
	return c.out.Collect(r)
}

// Watermark forwards w detached from the record being fed: what a
// watermark sets off downstream (timers, held-back results) was not caused
// by that record, so its dead letters must not name it.
func (c *counting[T]) Watermark(w Watermark) error {
	cur := c.t.current
	if cur == nil {
		return c.out.Watermark(w)
	}
	c.t.current = nil
	err := c.out.Watermark(w)
	c.t.current = cur
	return err
}

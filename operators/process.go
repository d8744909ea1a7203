package operators

import (
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

// ProcessContext is what a keyed process function sees: the current key
// and time, output, timers, and (through the embedded pipeline.Context)
// state and side outputs.
type ProcessContext[K, Out any] struct {
	*pipeline.Context
	out    pipeline.Collector[Out]
	key    string
	time   int64
	events *state.Timers
	procs  *state.Timers
}

// Key is the current record's (or timer's) encoded key; state handles are
// keyed by it.
func (c *ProcessContext[K, Out]) Key() string { return c.key }

// Time is the current record's event time, or the firing timer's time.
func (c *ProcessContext[K, Out]) Time() int64 { return c.time }

// Emit sends v downstream with the current key and time.
func (c *ProcessContext[K, Out]) Emit(v Out) error { return c.EmitAt(v, c.time) }

// EmitAt sends v downstream with the current key at event time ts.
func (c *ProcessContext[K, Out]) EmitAt(v Out, ts int64) error {
	return c.out.Collect(pipeline.Record[Out]{Value: v, Time: ts, Key: c.key})
}

// RegisterEventTimer asks for OnTimer when the watermark reaches ts.
func (c *ProcessContext[K, Out]) RegisterEventTimer(ts int64) error {
	return c.events.Register(ts, c.key)
}

// DeleteEventTimer cancels an event-time timer of the current key.
func (c *ProcessContext[K, Out]) DeleteEventTimer(ts int64) error {
	return c.events.Delete(ts, c.key)
}

// RegisterProcessingTimer asks for OnTimer when processing time reaches ts
// (unix ms).
func (c *ProcessContext[K, Out]) RegisterProcessingTimer(ts int64) error {
	return c.procs.Register(ts, c.key)
}

// ProcessFunc is a keyed process function. Process makes one instance per
// task, so an implementation keeps its state handles in fields, created
// in Open.
type ProcessFunc[K, In, Out any] interface {
	// Open registers state handles (ctx.Store(), ctx.StateSpec).
	Open(ctx *ProcessContext[K, Out]) error
	// Process handles one record of key.
	Process(ctx *ProcessContext[K, Out], key K, in In) error
	// OnTimer handles a timer of key.
	OnTimer(ctx *ProcessContext[K, Out], key K, domain pipeline.TimeDomain, ts int64) error
}

// Process runs a keyed process function with state and timers; newFn
// makes one instance per task. sides declares the side outputs it emits to.
func Process[K, In, Out any](s pipeline.KeyedStream[K, In], name string, newFn func() ProcessFunc[K, In, Out], sides ...pipeline.SideTag) pipeline.Stream[Out] {
	return pipeline.AddOperator(s.Stream, name, pipeline.OperatorSpec{What: "process", Stateful: true, Sides: sides}, func() pipeline.Operator[In, Out] {
		return &processOp[K, In, Out]{fn: newFn(), keys: s.Keys}
	})
}

type processOp[K, In, Out any] struct {
	fn   ProcessFunc[K, In, Out]
	keys pipeline.KeyCodec[K]
	pc   *ProcessContext[K, Out]
}

func (p *processOp[K, In, Out]) Open(ctx *pipeline.Context, out pipeline.Collector[Out]) error {
	ev, err := ctx.EventTimers()
	if err != nil {
		return err
	}
	pr, err := ctx.ProcessingTimers()
	if err != nil {
		return err
	}
	p.pc = &ProcessContext[K, Out]{Context: ctx, out: out, events: ev, procs: pr}
	return p.fn.Open(p.pc)
}

func (p *processOp[K, In, Out]) Process(r pipeline.Record[In]) error {
	k, err := p.keys.DecodeKey(r.Key)
	if err != nil {
		return p.pc.HandleError(err)
	}
	p.pc.key, p.pc.time = r.Key, r.Time
	if err := p.fn.Process(p.pc, k, r.Value); err != nil {
		return p.pc.HandleError(err)
	}
	return nil
}

func (p *processOp[K, In, Out]) OnTimer(d pipeline.TimeDomain, key string, ts int64) error {
	k, err := p.keys.DecodeKey(key)
	if err != nil {
		return err
	}
	p.pc.key, p.pc.time = key, ts
	return p.fn.OnTimer(p.pc, k, d, ts)
}

func (p *processOp[K, In, Out]) Close() error { return nil }

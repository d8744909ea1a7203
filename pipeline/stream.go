package pipeline

import (
	"fmt"
)

// Stream is a typed stream of records produced by one operator.
type Stream[T any] struct {
	n    *node
	port *port[T]
}

// Name is the name of the operator producing the stream ("" for the zero
// Stream an earlier error left).
func (s Stream[T]) Name() string {
	if s.n == nil {
		return ""
	}
	return s.n.name
}

// Builder is the builder the stream belongs to.
func (s Stream[T]) Builder() *Builder { return s.n.b }

func (s Stream[T]) valid() bool { return s.n != nil }

// Collector receives a stream's records and watermarks. Every call happens
// on the task's goroutine.
type Collector[T any] interface {
	Collect(r Record[T]) error
	Watermark(w Watermark) error
}

// binder instantiates (or finds) a consumer in a task and returns the
// collector of the input it reads this stream on.
type binder[T any] func(tb *taskBuild) (Collector[T], error)

// port is a node's typed output: the consumers bound to it.
type port[T any] struct {
	binders []binder[T]
	discard bool
}

func (p *port[T]) used() bool { return len(p.binders) > 0 || p.discard }

func (p *port[T]) bind(b binder[T]) { p.binders = append(p.binders, b) }

// build instantiates the consumers in a task and returns one collector
// feeding them all.
func (p *port[T]) build(tb *taskBuild) (Collector[T], error) {
	cs := make([]Collector[T], 0, len(p.binders))
	for _, bnd := range p.binders {
		c, err := bnd(tb)
		if err != nil {
			return nil, err
		}
		if c != nil {
			cs = append(cs, c)
		}
	}
	switch len(cs) {
	case 0:
		return discard[T]{}, nil
	case 1:
		return cs[0], nil
	default:
		return fanout[T](cs), nil
	}
}

func (p *port[T]) buildAny(tb *taskBuild) (any, error) { return p.build(tb) }

type anyPort interface {
	outPort
	buildAny(tb *taskBuild) (any, error)
}

type fanout[T any] []Collector[T]

func (f fanout[T]) Collect(r Record[T]) error {
	for _, c := range f {
		if err := c.Collect(r); err != nil {
			return err
		}
	}
	return nil
}

func (f fanout[T]) Watermark(w Watermark) error {
	for _, c := range f {
		if err := c.Watermark(w); err != nil {
			return err
		}
	}
	return nil
}

type discard[T any] struct{}

func (discard[T]) Collect(Record[T]) error   { return nil }
func (discard[T]) Watermark(Watermark) error { return nil }

// Discard consumes s and drops its records: the explicit way to leave a
// stream unused.
func Discard[T any](s Stream[T]) {
	if s.valid() {
		s.port.discard = true
	}
}

// OutputTag names a typed side output of an operator.
type OutputTag[T any] struct{ id string }

// NewOutputTag returns a side-output tag; ids are unique per operator.
func NewOutputTag[T any](id string) OutputTag[T] { return OutputTag[T]{id: id} }

// ID is the tag's name.
func (t OutputTag[T]) ID() string { return t.id }

func (t OutputTag[T]) newPort() anyPort { return &port[T]{} }

// SideTag is any OutputTag, for declaring an operator's side outputs.
type SideTag interface {
	ID() string
	newPort() anyPort
}

// Side returns the side output tag of the operator that produced s.
func Side[T, X any](s Stream[X], tag OutputTag[T]) Stream[T] {
	if !s.valid() {
		return Stream[T]{}
	}
	d, ok := s.n.sides[tag.id]
	if !ok {
		s.n.b.errorf("%s %q has no side output %q", s.n.what, s.n.name, tag.id)
		return Stream[T]{n: s.n, port: &port[T]{}}
	}
	p, ok := d.port.(*port[T])
	if !ok {
		s.n.b.errorf("%s %q: side output %q has another type than %T", s.n.what, s.n.name, tag.id, *new(T))
		return Stream[T]{n: s.n, port: &port[T]{}}
	}
	d.used = true
	return Stream[T]{n: s.n, port: p}
}

// DropSide explicitly drops a side output (its records are counted in the
// operator's dropped-records metric).
func DropSide[T, X any](s Stream[X], tag OutputTag[T]) {
	if d, ok := s.n.sides[tag.id]; ok {
		d.dropped = true
	}
}

// EmitSide sends r to the side output tag of the operator owning ctx.
func EmitSide[T any](ctx *Context, tag OutputTag[T], r Record[T]) error {
	c, ok := ctx.sides[tag.id]
	if !ok {
		return fmt.Errorf("pipeline: operator %q emitted to undeclared side output %q", ctx.node.name, tag.id)
	}
	if c == nil {
		ctx.m.dropped++
		return nil
	}
	return c.(Collector[T]).Collect(r)
}

// OperatorSpec describes an operator added with AddOperator.
type OperatorSpec struct {
	// What is the operator's type as shown in plans and errors ("window").
	What string
	// Stateful operators get a changelog topic.
	Stateful bool
	// Sides declares the operator's side outputs.
	Sides []SideTag
	// OptionalOutput lets the main output go unconsumed (Split, whose
	// records all go to side outputs); Context.OutputConsumed tells the
	// operator whether anyone reads it.
	OptionalOutput bool
}

// Operator is a one-input operator. All calls happen on the task's
// goroutine; an operator may also implement TimerHandler,
// WatermarkHandler and Snapshotter.
type Operator[In, Out any] interface {
	// Open prepares the operator for one task: register state, load what
	// must be reloaded. out receives the operator's output.
	Open(ctx *Context, out Collector[Out]) error
	Process(r Record[In]) error
	Close() error
}

// Operator2 is a two-input operator.
type Operator2[In1, In2, Out any] interface {
	Open(ctx *Context, out Collector[Out]) error
	Process1(r Record[In1]) error
	Process2(r Record[In2]) error
	Close() error
}

// TimerHandler receives the operator's timers (see Context.EventTimers).
type TimerHandler interface {
	OnTimer(domain TimeDomain, key string, ts int64) error
}

// WatermarkHandler is told of each new input watermark after the
// operator's event-time timers up to it have fired and before it is
// forwarded downstream. An operator that must hold the watermark back
// (async I/O) returns false and forwards it itself later with
// Context.ForwardWatermark.
type WatermarkHandler interface {
	OnWatermark(w Watermark) (forward bool, err error)
}

// InputWatermarkHandler is told of each input's own watermark (two-input
// operators, such as the temporal join, which waits on its table side).
type InputWatermarkHandler interface {
	OnInputWatermark(input int, w Watermark) error
}

// WatermarkOwner is implemented by two-input operators that compute their
// output watermark themselves, from InputWatermarkHandler, and forward it
// with Context.ForwardWatermark (the temporal join: its output follows the
// probe side, held back by waiting probes, and the table side only decides
// when probes can be answered). The runtime then forwards no combined
// watermark and fires none of the operator's event-time timers.
type WatermarkOwner interface {
	OwnsWatermark()
}

// Snapshotter writes in-memory operator state into its state handles at a
// checkpoint, before the state is flushed.
type Snapshotter interface {
	Snapshot() error
}

// TimeDomain tells event-time from processing-time timers.
type TimeDomain int

const (
	EventTime TimeDomain = iota
	ProcessingTime
)

func (b *Builder) addOp(name string, spec OperatorSpec, inputs ...*node) *node {
	n := b.add(name, spec.What, kindOperator, inputs...)
	n.stateful = spec.Stateful
	n.optionalOut = spec.OptionalOutput
	if len(spec.Sides) > 0 {
		n.sides = make(map[string]*sideDecl, len(spec.Sides))
		for _, t := range spec.Sides {
			if _, dup := n.sides[t.ID()]; dup {
				b.errorf("%s %q: side output %q declared twice", spec.What, name, t.ID())
			}
			n.sides[t.ID()] = &sideDecl{port: t.newPort()}
		}
	}
	return n
}

// AddOperator adds a one-input operator reading in; factory makes one
// instance per task. It is the extension point package operators builds on.
func AddOperator[In, Out any](in Stream[In], name string, spec OperatorSpec, factory func() Operator[In, Out]) Stream[Out] {
	if !in.valid() {
		return Stream[Out]{}
	}
	b := in.n.b
	n := b.addOp(name, spec, in.n)
	out := &port[Out]{}
	n.out = out
	n.make = func(tb *taskBuild) (instance, error) {
		ctx, err := tb.newContext(n)
		if err != nil {
			return nil, err
		}
		c, err := out.build(tb)
		if err != nil {
			return nil, err
		}
		r := &runner1[In, Out]{op: factory(), ctx: ctx, out: c, wm: MinTime}
		r.init()
		if err := r.op.Open(ctx, countOut(ctx, c)); err != nil {
			return nil, fmt.Errorf("opening %s %q: %w", spec.What, name, err)
		}
		return r, nil
	}
	in.port.bind(bindInput[In](n, 0))
	return Stream[Out]{n: n, port: out}
}

// AddOperator2 adds a two-input operator.
func AddOperator2[In1, In2, Out any](a Stream[In1], b2 Stream[In2], name string, spec OperatorSpec, factory func() Operator2[In1, In2, Out]) Stream[Out] {
	if !a.valid() || !b2.valid() {
		return Stream[Out]{}
	}
	b := a.n.b
	n := b.addOp(name, spec, a.n, b2.n)
	out := &port[Out]{}
	n.out = out
	n.make = func(tb *taskBuild) (instance, error) {
		ctx, err := tb.newContext(n)
		if err != nil {
			return nil, err
		}
		c, err := out.build(tb)
		if err != nil {
			return nil, err
		}
		r := &runner2[In1, In2, Out]{op: factory(), ctx: ctx, out: c}
		r.init()
		if err := r.op.Open(ctx, countOut(ctx, c)); err != nil {
			return nil, fmt.Errorf("opening %s %q: %w", spec.What, name, err)
		}
		return r, nil
	}
	a.port.bind(bindInput[In1](n, 0))
	b2.port.bind(bindInput[In2](n, 1))
	return Stream[Out]{n: n, port: out}
}

// bindInput returns the binder that instantiates n in a task and hands out
// its input i.
func bindInput[T any](n *node, i int) binder[T] {
	return func(tb *taskBuild) (Collector[T], error) {
		inst, err := tb.instance(n)
		if err != nil || inst == nil {
			return nil, err
		}
		c, ok := inst.input(i).(Collector[T])
		if !ok {
			return nil, fmt.Errorf("pipeline: %s %q input %d has an unexpected type", n.what, n.name, i)
		}
		return c, nil
	}
}

// Union merges streams of one type; its watermark is the minimum of its
// inputs' (idle inputs left out).
func Union[T any](name string, first Stream[T], others ...Stream[T]) Stream[T] {
	if !first.valid() {
		return Stream[T]{}
	}
	all := append([]Stream[T]{first}, others...)
	inputs := make([]*node, len(all))
	for i, s := range all {
		if !s.valid() {
			return Stream[T]{}
		}
		inputs[i] = s.n
	}
	b := first.n.b
	n := b.addOp(name, OperatorSpec{What: "union"}, inputs...)
	out := &port[T]{}
	n.out = out
	n.make = func(tb *taskBuild) (instance, error) {
		ctx, err := tb.newContext(n)
		if err != nil {
			return nil, err
		}
		c, err := out.build(tb)
		if err != nil {
			return nil, err
		}
		return newUnion[T](ctx, c, len(all)), nil
	}
	for i, s := range all {
		s.port.bind(bindInput[T](n, i))
	}
	return Stream[T]{n: n, port: out}
}

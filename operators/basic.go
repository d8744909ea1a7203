package operators

import (
	"fmt"

	"github.com/loanflow/loanflow/pipeline"
)

// Map transforms each record's value.
func Map[In, Out any](s pipeline.Stream[In], name string, fn func(In) (Out, error)) pipeline.Stream[Out] {
	return pipeline.AddOperator(s, name, pipeline.OperatorSpec{What: "map"}, func() pipeline.Operator[In, Out] {
		return &mapOp[In, Out]{fn: fn}
	})
}

type mapOp[In, Out any] struct {
	fn  func(In) (Out, error)
	ctx *pipeline.Context
	out pipeline.Collector[Out]
}

func (m *mapOp[In, Out]) Open(ctx *pipeline.Context, out pipeline.Collector[Out]) error {
	m.ctx, m.out = ctx, out
	return nil
}

func (m *mapOp[In, Out]) Process(r pipeline.Record[In]) error {
	v, err := m.fn(r.Value)
	if err != nil {
		return m.ctx.HandleError(err)
	}
	return m.out.Collect(pipeline.Record[Out]{Value: v, Time: r.Time, Key: r.Key})
}

func (m *mapOp[In, Out]) Close() error { return nil }

// Filter keeps the records pred accepts.
func Filter[T any](s pipeline.Stream[T], name string, pred func(T) bool) pipeline.Stream[T] {
	return pipeline.AddOperator(s, name, pipeline.OperatorSpec{What: "filter"}, func() pipeline.Operator[T, T] {
		return &filterOp[T]{pred: pred}
	})
}

type filterOp[T any] struct {
	pred func(T) bool
	out  pipeline.Collector[T]
}

func (f *filterOp[T]) Open(_ *pipeline.Context, out pipeline.Collector[T]) error {
	f.out = out
	return nil
}

func (f *filterOp[T]) Process(r pipeline.Record[T]) error {
	if f.pred(r.Value) {
		return f.out.Collect(r)
	}
	return nil
}

func (f *filterOp[T]) Close() error { return nil }

// FlatMap turns each record into zero or more records; fn calls emit for
// each output.
func FlatMap[In, Out any](s pipeline.Stream[In], name string, fn func(in In, emit func(Out) error) error) pipeline.Stream[Out] {
	return pipeline.AddOperator(s, name, pipeline.OperatorSpec{What: "flatMap"}, func() pipeline.Operator[In, Out] {
		return &flatMapOp[In, Out]{fn: fn}
	})
}

type flatMapOp[In, Out any] struct {
	fn   func(In, func(Out) error) error
	ctx  *pipeline.Context
	out  pipeline.Collector[Out]
	cur  pipeline.Record[In]
	emit func(Out) error
}

func (f *flatMapOp[In, Out]) Open(ctx *pipeline.Context, out pipeline.Collector[Out]) error {
	f.ctx, f.out = ctx, out
	f.emit = func(v Out) error {
		return f.out.Collect(pipeline.Record[Out]{Value: v, Time: f.cur.Time, Key: f.cur.Key})
	}
	return nil
}

func (f *flatMapOp[In, Out]) Process(r pipeline.Record[In]) error {
	f.cur = r
	if err := f.fn(r.Value, f.emit); err != nil {
		return f.ctx.HandleError(err)
	}
	return nil
}

func (f *flatMapOp[In, Out]) Close() error { return nil }

// Split routes each record to one of the side outputs tags: route returns
// the tag. Read a route with pipeline.Side(split, tag). A record routed to
// no tag (the zero OutputTag) goes to the returned main stream when it is
// consumed, and to the dead-letter topic when it is not.
func Split[T any](s pipeline.Stream[T], name string, route func(T) pipeline.OutputTag[T], tags ...pipeline.OutputTag[T]) pipeline.Stream[T] {
	sides := make([]pipeline.SideTag, len(tags))
	for i, t := range tags {
		sides[i] = t
	}
	return pipeline.AddOperator(s, name, pipeline.OperatorSpec{What: "split", Sides: sides, OptionalOutput: true}, func() pipeline.Operator[T, T] {
		return &splitOp[T]{route: route}
	})
}

type splitOp[T any] struct {
	route func(T) pipeline.OutputTag[T]
	ctx   *pipeline.Context
	out   pipeline.Collector[T]
	main  bool
}

func (sp *splitOp[T]) Open(ctx *pipeline.Context, out pipeline.Collector[T]) error {
	sp.ctx, sp.out, sp.main = ctx, out, ctx.OutputConsumed()
	return nil
}

func (sp *splitOp[T]) Process(r pipeline.Record[T]) error {
	tag := sp.route(r.Value)
	if tag.ID() != "" {
		return pipeline.EmitSide(sp.ctx, tag, r)
	}
	if sp.main {
		return sp.out.Collect(r)
	}
	return sp.ctx.HandleError(fmt.Errorf("split %q routed a record to no output", sp.ctx.Name()))
}

func (sp *splitOp[T]) Close() error { return nil }

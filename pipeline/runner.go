package pipeline

// runner1 runs a one-input operator: it counts records, fires event-time
// timers as the watermark passes and forwards the watermark.
type runner1[In, Out any] struct {
	op   Operator[In, Out]
	ctx  *Context
	out  Collector[Out]
	wm   int64
	idle bool
	wh   WatermarkHandler
}

func (r *runner1[In, Out]) init() {
	r.ctx.th, _ = r.op.(TimerHandler)
	r.wh, _ = r.op.(WatermarkHandler)
	r.ctx.setForward(r.out.Watermark)
	if s, ok := r.op.(Snapshotter); ok {
		r.ctx.task.snapshotters = append(r.ctx.task.snapshotters, s)
	}
}

func (r *runner1[In, Out]) input(int) any { return Collector[In](r) }
func (r *runner1[In, Out]) close() error  { return r.op.Close() }

func (r *runner1[In, Out]) Collect(rec Record[In]) error {
	r.ctx.m.in++
	return r.op.Process(rec)
}

func (r *runner1[In, Out]) Watermark(w Watermark) error {
	if w.Idle {
		if r.idle {
			return nil
		}
		r.idle = true
		return r.ctx.forward(w)
	}
	wasIdle := r.idle
	r.idle = false
	if w.Time <= r.wm {
		if wasIdle {
			// Active again at the same time: downstream must hear it, or a
			// union or join after this operator would go on leaving this
			// input out of its minimum.
			return r.ctx.forward(Watermark{Time: r.wm})
		}
		return nil
	}
	r.wm = w.Time
	return advance(r.ctx, r.wh, w)
}

// advance fires an operator's timers up to w, tells its handler, and
// forwards w unless the handler holds it back.
func advance(ctx *Context, wh WatermarkHandler, w Watermark) error {
	ctx.wm = w.Time
	if err := ctx.fireEventTimers(w.Time); err != nil {
		return err
	}
	if wh != nil {
		forward, err := wh.OnWatermark(w)
		if err != nil || !forward {
			return err
		}
	}
	return ctx.forward(w)
}

// combiner merges the watermarks of several inputs: the minimum of the
// inputs that are not idle, never moving backwards; idle when all are.
type combiner struct {
	times   []int64
	idle    []bool
	out     int64
	outIdle bool
}

func newCombiner(n int) *combiner {
	c := &combiner{times: make([]int64, n), idle: make([]bool, n), out: MinTime}
	for i := range c.times {
		c.times[i] = MinTime
	}
	return c
}

// update records input i's watermark and returns the combined watermark
// to emit, if it changed.
func (c *combiner) update(i int, w Watermark) (Watermark, bool) {
	c.idle[i] = w.Idle
	if !w.Idle && w.Time > c.times[i] {
		c.times[i] = w.Time
	}
	min, active := MaxTime, false
	for j, t := range c.times {
		if c.idle[j] {
			continue
		}
		active = true
		if t < min {
			min = t
		}
	}
	if !active {
		if c.outIdle {
			return Watermark{}, false
		}
		c.outIdle = true
		return Watermark{Time: c.out, Idle: true}, true
	}
	wasIdle := c.outIdle
	c.outIdle = false
	if min > c.out {
		c.out = min
		return Watermark{Time: min}, true
	}
	if wasIdle {
		return Watermark{Time: c.out}, true
	}
	return Watermark{}, false
}

// runner2 runs a two-input operator.
type runner2[In1, In2, Out any] struct {
	op    Operator2[In1, In2, Out]
	ctx   *Context
	out   Collector[Out]
	comb  *combiner
	wh    WatermarkHandler
	ih    InputWatermarkHandler
	owner bool
	in1   *input2a[In1, In2, Out]
	in2   *input2b[In1, In2, Out]
}

func (r *runner2[In1, In2, Out]) init() {
	r.comb = newCombiner(2)
	r.ctx.th, _ = r.op.(TimerHandler)
	r.wh, _ = r.op.(WatermarkHandler)
	r.ih, _ = r.op.(InputWatermarkHandler)
	_, r.owner = r.op.(WatermarkOwner)
	r.ctx.setForward(r.out.Watermark)
	r.in1 = &input2a[In1, In2, Out]{r}
	r.in2 = &input2b[In1, In2, Out]{r}
	if s, ok := r.op.(Snapshotter); ok {
		r.ctx.task.snapshotters = append(r.ctx.task.snapshotters, s)
	}
}

func (r *runner2[In1, In2, Out]) input(i int) any {
	if i == 0 {
		return Collector[In1](r.in1)
	}
	return Collector[In2](r.in2)
}

func (r *runner2[In1, In2, Out]) close() error { return r.op.Close() }

func (r *runner2[In1, In2, Out]) watermark(i int, w Watermark) error {
	if r.ih != nil {
		if err := r.ih.OnInputWatermark(i, w); err != nil {
			return err
		}
	}
	if r.owner {
		return nil
	}
	cw, ok := r.comb.update(i, w)
	if !ok {
		return nil
	}
	if cw.Idle {
		return r.ctx.forward(cw)
	}
	return advance(r.ctx, r.wh, cw)
}

type input2a[In1, In2, Out any] struct{ r *runner2[In1, In2, Out] }

func (a *input2a[In1, In2, Out]) Collect(rec Record[In1]) error {
	a.r.ctx.m.in++
	return a.r.op.Process1(rec)
}
func (a *input2a[In1, In2, Out]) Watermark(w Watermark) error { return a.r.watermark(0, w) }

type input2b[In1, In2, Out any] struct{ r *runner2[In1, In2, Out] }

func (b *input2b[In1, In2, Out]) Collect(rec Record[In2]) error {
	b.r.ctx.m.in++
	return b.r.op.Process2(rec)
}
func (b *input2b[In1, In2, Out]) Watermark(w Watermark) error { return b.r.watermark(1, w) }

// unionInst merges several inputs of one type.
type unionInst[T any] struct {
	ctx    *Context
	out    Collector[T]
	comb   *combiner
	inputs []*unionInput[T]
}

func newUnion[T any](ctx *Context, out Collector[T], n int) *unionInst[T] {
	u := &unionInst[T]{ctx: ctx, out: out, comb: newCombiner(n)}
	for i := 0; i < n; i++ {
		u.inputs = append(u.inputs, &unionInput[T]{u: u, i: i})
	}
	return u
}

func (u *unionInst[T]) input(i int) any { return Collector[T](u.inputs[i]) }
func (u *unionInst[T]) close() error    { return nil }

type unionInput[T any] struct {
	u *unionInst[T]
	i int
}

func (in *unionInput[T]) Collect(r Record[T]) error {
	in.u.ctx.m.in++
	in.u.ctx.m.out++
	return in.u.out.Collect(r)
}

func (in *unionInput[T]) Watermark(w Watermark) error {
	cw, ok := in.u.comb.update(in.i, w)
	if !ok {
		return nil
	}
	in.u.ctx.wm = cw.Time
	return in.u.out.Watermark(cw)
}

package pipeline

import (
	"fmt"
	"sync"
)

// Sink writes a stream's records out of the job. Calls happen on the
// task's goroutine.
type Sink[T any] interface {
	Open(ctx *Context) error
	Write(r Record[T]) error
	Close() error
}

// SinkSpec describes a sink for AddSink.
type SinkSpec struct {
	// What is the sink type shown in plans ("kafka").
	What string
	// Topic is the topic the sink writes, if any, so the runtime creates it.
	Topic string
}

type sinkInfo struct{ topic string }

// AddSink ends a stream in a sink.
func AddSink[T any](in Stream[T], name string, spec SinkSpec, factory func() Sink[T]) {
	if !in.valid() {
		return
	}
	n := in.n.b.add(name, orDefault(spec.What, "sink"), kindSink, in.n)
	n.sink = &sinkInfo{topic: spec.Topic}
	n.make = func(tb *taskBuild) (instance, error) {
		ctx, err := tb.newContext(n)
		if err != nil {
			return nil, err
		}
		s := &sinkInst[T]{ctx: ctx, sink: factory()}
		if err := s.sink.Open(ctx); err != nil {
			return nil, fmt.Errorf("opening sink %q: %w", name, err)
		}
		return s, nil
	}
	in.port.bind(bindInput[T](n, 0))
}

type sinkInst[T any] struct {
	ctx  *Context
	sink Sink[T]
}

func (s *sinkInst[T]) input(int) any { return Collector[T](s) }
func (s *sinkInst[T]) close() error  { return s.sink.Close() }

func (s *sinkInst[T]) Collect(r Record[T]) error {
	s.ctx.m.in++
	if s.ctx.task.restoring {
		return nil
	}
	return s.sink.Write(r)
}

func (s *sinkInst[T]) Watermark(w Watermark) error {
	s.ctx.wm = w.Time
	if ws, ok := s.sink.(interface{ watermark(Watermark) }); ok {
		ws.watermark(w)
	}
	return nil
}

// TopicSinkSpec configures ToTopic.
type TopicSinkSpec[T any] struct {
	Topic string
	Codec Codec[T]
	// Key returns the record key; default the stream's key (after KeyBy),
	// else no key.
	Key func(r Record[T]) []byte
	// Headers adds headers to each record.
	Headers func(r Record[T]) []Header
	// What names the sink type in plans; default "topic".
	What string
}

// ToTopic writes a stream to a topic through the task's Output: a Kafka
// transaction in the Kafka runtime, memory in the local one.
func ToTopic[T any](in Stream[T], name string, spec TopicSinkSpec[T]) {
	if spec.Codec == nil && in.valid() {
		in.n.b.errorf("sink %q: TopicSinkSpec.Codec is required", name)
	}
	AddSink[T](in, name, SinkSpec{What: orDefault(spec.What, "topic"), Topic: spec.Topic}, func() Sink[T] {
		return &topicSink[T]{spec: spec}
	})
}

type topicSink[T any] struct {
	spec TopicSinkSpec[T]
	ctx  *Context
	buf  []byte
}

func (s *topicSink[T]) Open(ctx *Context) error { s.ctx = ctx; return nil }
func (s *topicSink[T]) Close() error            { return nil }

func (s *topicSink[T]) Write(r Record[T]) error {
	v, err := s.spec.Codec.Encode(nil, r.Value)
	if err != nil {
		return s.ctx.HandleError(fmt.Errorf("encoding for %s: %w", s.spec.Topic, err))
	}
	var key []byte
	if s.spec.Key != nil {
		key = s.spec.Key(r)
	} else if r.Key != "" {
		key = []byte(r.Key)
	}
	out := OutRecord{Topic: s.spec.Topic, Partition: -1, Key: key, Value: v, Timestamp: r.Time}
	if s.spec.Headers != nil {
		out.Headers = s.spec.Headers(r)
	}
	return s.ctx.task.out.Emit(out)
}

// Collected gathers a stream's records in memory (tests, examples).
type Collected[T any] struct {
	mu      sync.Mutex
	records []Record[T]
	wm      Watermark
	hasWM   bool
}

// Watermark is the last watermark the stream carried, if any.
func (c *Collected[T]) Watermark() (Watermark, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wm, c.hasWM
}

// Records returns a copy of what was collected.
func (c *Collected[T]) Records() []Record[T] {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Record[T](nil), c.records...)
}

// Reset forgets what was collected.
func (c *Collected[T]) Reset() {
	c.mu.Lock()
	c.records = nil
	c.mu.Unlock()
}

// CollectTo ends a stream in memory.
func CollectTo[T any](in Stream[T], name string, into *Collected[T]) {
	AddSink[T](in, name, SinkSpec{What: "collect"}, func() Sink[T] { return &collectSink[T]{into: into} })
}

type collectSink[T any] struct{ into *Collected[T] }

func (s *collectSink[T]) Open(*Context) error { return nil }
func (s *collectSink[T]) watermark(w Watermark) {
	s.into.mu.Lock()
	s.into.wm, s.into.hasWM = w, true
	s.into.mu.Unlock()
}
func (s *collectSink[T]) Close() error { return nil }
func (s *collectSink[T]) Write(r Record[T]) error {
	s.into.mu.Lock()
	s.into.records = append(s.into.records, r)
	s.into.mu.Unlock()
	return nil
}

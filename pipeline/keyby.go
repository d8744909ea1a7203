package pipeline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// KeyCodec turns keys into the strings state and topics are keyed by. The
// encoding is also the Kafka record key of repartition topics, so it must
// match the key bytes of any topic the stream is co-partitioned with.
type KeyCodec[K any] interface {
	EncodeKey(k K) string
	DecodeKey(s string) (K, error)
}

// KeyedStream is a stream partitioned by key: keyed state, timers,
// windows and joins work on it.
type KeyedStream[K any, T any] struct {
	Stream[T]
	Keys KeyCodec[K]
}

// KeyByOption configures KeyBy.
type KeyByOption func(*keyByOpts)

type keyByOpts struct {
	noRepartition bool
	partitions    int32
	valueCodec    any
	keyCodec      any
}

// NoRepartition says the input is already partitioned by this key (a
// topic keyed by it), so records stay in their task.
func NoRepartition() KeyByOption { return func(o *keyByOpts) { o.noRepartition = true } }

// RepartitionPartitions sets the repartition topic's partition count when
// nothing else decides it (default: the upstream's count).
func RepartitionPartitions(n int32) KeyByOption { return func(o *keyByOpts) { o.partitions = n } }

// ValueCodec sets the codec (a Codec[T]) of records in the repartition
// topic; default JSON.
func ValueCodec(c any) KeyByOption { return func(o *keyByOpts) { o.valueCodec = c } }

// WithKeyCodec sets the key codec (a KeyCodec[K]); strings and integers
// have defaults.
func WithKeyCodec(c any) KeyByOption { return func(o *keyByOpts) { o.keyCodec = c } }

type keyByInfo struct {
	repartition bool
	partitions  int32
	topic       string
	upSub       int
	downSub     int
	downParts   int32 // partitions of the repartition topic (resolved)
	upParts     int32 // tasks writing it (resolved)
}

// KeyBy partitions s by the key fn extracts. Unless NoRepartition is
// given, records travel through the topic <job>-<name>-repartition to the
// task that owns their key.
func KeyBy[T any, K comparable](s Stream[T], name string, fn func(T) K, opts ...KeyByOption) KeyedStream[K, T] {
	if !s.valid() {
		return KeyedStream[K, T]{}
	}
	var o keyByOpts
	for _, opt := range opts {
		opt(&o)
	}
	b := s.n.b
	n := b.add(name, "keyBy", kindKeyBy, s.n)
	keys, err := keyCodecFor[K](o.keyCodec)
	if err != nil {
		b.errorf("keyBy %q: %v", name, err)
	}
	var vc Codec[T] = JSONCodec[T]()
	if o.valueCodec != nil {
		c, ok := o.valueCodec.(Codec[T])
		if !ok {
			b.errorf("keyBy %q: ValueCodec is a %T, not a pipeline.Codec[%T]", name, o.valueCodec, *new(T))
		} else {
			vc = c
		}
	}
	info := &keyByInfo{repartition: !o.noRepartition, partitions: o.partitions, topic: RepartitionTopic(b.job, name)}
	n.keyBy = info
	out := &port[T]{}
	n.out = out
	n.stateful = info.repartition
	n.make = func(tb *taskBuild) (instance, error) {
		ctx, err := tb.newContext(n)
		if err != nil {
			return nil, err
		}
		switch {
		case tb.fused() || !info.repartition:
			c, err := out.build(tb)
			if err != nil {
				return nil, err
			}
			return &keyAssign[T, K]{ctx: ctx, fn: fn, keys: keys, out: countOut(ctx, c)}, nil
		case tb.t.sub.ID == info.upSub:
			return newRepartSink[T, K](ctx, info, fn, keys, vc), nil
		default:
			c, err := out.build(tb)
			if err != nil {
				return nil, err
			}
			return newRepartSource[T](ctx, info, vc, countOut(ctx, c))
		}
	}
	s.port.bind(bindInput[T](n, 0))
	return KeyedStream[K, T]{Stream: Stream[T]{n: n, port: out}, Keys: keys}
}

// keyAssign sets the key on records that stay in their task.
type keyAssign[T any, K comparable] struct {
	ctx  *Context
	fn   func(T) K
	keys KeyCodec[K]
	out  Collector[T]
}

func (k *keyAssign[T, K]) input(int) any { return Collector[T](k) }
func (k *keyAssign[T, K]) close() error  { return nil }

func (k *keyAssign[T, K]) Collect(r Record[T]) error {
	k.ctx.m.in++
	r.Key = k.keys.EncodeKey(k.fn(r.Value))
	return k.out.Collect(r)
}

func (k *keyAssign[T, K]) Watermark(w Watermark) error {
	k.ctx.wm = w.Time
	return k.out.Watermark(w)
}

// HeaderWatermark is the header of the watermark markers a task writes
// into every partition of a repartition topic: uvarint(writer task),
// varint(watermark ms), one byte idle flag.
const HeaderWatermark = "lf-wm"

// markerIntervalMs is the event-time step between watermark markers.
const markerIntervalMs = 200

// IdleRemark is how often an idle writer says again that it is idle (at
// its next checkpoint after this much processing time): a reader restored
// from a checkpoint starts every writer active (repartSource), and an idle
// writer that did not restart would otherwise never write again, holding
// that reader's watermark for good (the fault tests on Apache Kafka: a
// task moved by a rebalance at the end of the input never fired its last
// windows).
const IdleRemark = time.Second

// repartSink writes records to the repartition topic, partitioned by key
// as Kafka's default partitioner would, and watermark markers to every
// partition.
type repartSink[T any, K comparable] struct {
	ctx     *Context
	info    *keyByInfo
	fn      func(T) K
	keys    KeyCodec[K]
	vc      Codec[T]
	wm      Watermark
	marked  Watermark
	hasMark bool
	// markedAt: processing time of the last marker.
	markedAt time.Time
	nparts   int32
	markHdr  []byte
}

func newRepartSink[T any, K comparable](ctx *Context, info *keyByInfo, fn func(T) K, keys KeyCodec[K], vc Codec[T]) *repartSink[T, K] {
	s := &repartSink[T, K]{ctx: ctx, info: info, fn: fn, keys: keys, vc: vc, wm: Watermark{Time: MinTime}, nparts: info.downParts}
	if ctx.task.parts != nil {
		if n := ctx.task.parts(info.topic); n > 0 {
			s.nparts = n
		}
	}
	ctx.task.snapshotters = append(ctx.task.snapshotters, s)
	return s
}

func (s *repartSink[T, K]) input(int) any { return Collector[T](s) }
func (s *repartSink[T, K]) close() error  { return nil }

func (s *repartSink[T, K]) Collect(r Record[T]) error {
	s.ctx.m.in++
	if s.ctx.task.restoring {
		return nil
	}
	key := s.keys.EncodeKey(s.fn(r.Value))
	v, err := s.vc.Encode(nil, r.Value)
	if err != nil {
		return s.ctx.HandleError(fmt.Errorf("encoding for repartition: %w", err))
	}
	s.ctx.m.out++
	kb := []byte(key)
	return s.ctx.task.out.Emit(OutRecord{Topic: s.info.topic, Partition: KeyPartition(kb, s.nparts), Key: kb, Value: v, Timestamp: r.Time})
}

func (s *repartSink[T, K]) Watermark(w Watermark) error {
	s.wm = w
	if !s.hasMark || w.Idle != s.marked.Idle || w.Time-s.marked.Time >= markerIntervalMs {
		return s.mark()
	}
	return nil
}

// Snapshot writes the latest watermark before the checkpoint commits.
func (s *repartSink[T, K]) Snapshot() error {
	if s.hasMark && s.wm == s.marked {
		if s.wm.Idle && s.ctx.task.now().Sub(s.markedAt) >= IdleRemark {
			return s.mark() // see IdleRemark
		}
		return nil
	}
	if s.wm.Time == MinTime && !s.wm.Idle {
		return nil
	}
	return s.mark()
}

func (s *repartSink[T, K]) mark() error {
	if s.ctx.task.restoring {
		return nil
	}
	s.marked, s.hasMark, s.markedAt = s.wm, true, s.ctx.task.now()
	hdr := binary.AppendUvarint(s.markHdr[:0], uint64(s.ctx.task.partition))
	hdr = binary.AppendVarint(hdr, s.wm.Time)
	if s.wm.Idle {
		hdr = append(hdr, 1)
	} else {
		hdr = append(hdr, 0)
	}
	hdr = binary.AppendVarint(hdr, s.markedAt.UnixMilli()) // see repartSource.startedAt
	s.markHdr = hdr
	for p := int32(0); p < s.nparts; p++ {
		h := []Header{{Key: HeaderWatermark, Value: append([]byte(nil), hdr...)}}
		if err := s.ctx.task.out.Emit(OutRecord{Topic: s.info.topic, Partition: p, Headers: h, Timestamp: s.wm.Time}); err != nil {
			return err
		}
	}
	return nil
}

// IdleMarker reports whether a record's HeaderWatermark value is a marker
// announcing its writer task idle. A savepoint restore drops such markers
// from the in-flight records it rewrites: idleness belongs to the run that
// wrote it (see repartSource).
func IdleMarker(header []byte) bool {
	_, _, idle, err := decodeMarker(header)
	return err == nil && idle
}

func decodeMarker(b []byte) (writer int32, wm int64, idle bool, err error) {
	writer, wm, idle, _, err = decodeStampedMarker(b)
	return writer, wm, idle, err
}

// decodeStampedMarker decodes a marker: writer task, watermark, idle, and
// the processing time (Unix ms) the writer wrote it at; 0 for markers of
// the format before the stamp.
func decodeStampedMarker(b []byte) (writer int32, wm int64, idle bool, stamp int64, err error) {
	bad := errors.New("bad watermark marker")
	w, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, 0, false, 0, bad
	}
	b = b[n:]
	t, n := binary.Varint(b)
	if n <= 0 || len(b) < n+1 {
		return 0, 0, false, 0, bad
	}
	idle, b = b[n] == 1, b[n+1:]
	if len(b) > 0 {
		if stamp, n = binary.Varint(b); n <= 0 || len(b) != n {
			return 0, 0, false, 0, bad
		}
	}
	return int32(w), t, idle, stamp, nil
}

// repartSource reads a repartition topic: records keep their key; the
// watermark is the minimum over the writer tasks' markers, leaving out the
// writers whose last marker says idle. Idleness is a fact about a running
// writer, never restored: a restored channel starts active (wmGen.load),
// and a restored writer announces its watermark again when it starts
// (repartSink marks at its first watermark). A savepoint's in-flight
// records therefore go back without their idle markers: the previous
// run's writers were idle (caught up with the input then), the restored
// ones are not (the input grew while the job was stopped), and a reader
// that believed the stale marker left a restored writer out of its
// minimum until that writer's first marker came, long enough under load
// for the other writers to carry the watermark to the end of the input
// and turn every record of the late writer late.
type repartSource[T any] struct {
	*sourceInst[T]
	info *keyByInfo
	// startedAt is when this reader opened (processing time, Unix ms). An
	// idle marker written before it is ignored: it was in flight at the
	// checkpoint the reader restored (a crash) and its writer may have
	// restarted since with input to catch up on; a writer still idle says
	// so again within pipeline.IdleRemark, after the reader started.
	startedAt int64
}

func newRepartSource[T any](ctx *Context, info *keyByInfo, vc Codec[T], out Collector[T]) (*repartSource[T], error) {
	spec := SourceSpec[T]{What: "repartition", Topic: info.topic, Decode: func(raw *RawRecord) (T, error) { return vc.Decode(raw.Value) }}
	src := &sourceInst[T]{ctx: ctx, spec: spec, out: out}
	chans := make([]int32, 0, info.upParts)
	for p := int32(0); p < info.upParts; p++ {
		chans = append(chans, p)
	}
	if err := src.open(chans); err != nil {
		return nil, err
	}
	return &repartSource[T]{sourceInst: src, info: info, startedAt: ctx.task.now().UnixMilli()}, nil
}

func (s *repartSource[T]) feedRaw(raw *RawRecord) error {
	if hdr, ok := raw.Header(HeaderWatermark); ok {
		if s.ctx.task.restoring {
			return nil
		}
		writer, wm, idle, stamp, err := decodeStampedMarker(hdr)
		if err != nil {
			return s.ctx.HandleError(err)
		}
		if idle && stamp <= s.startedAt {
			return nil // stale: see startedAt
		}
		s.gen.mark(writer, wm, idle, s.ctx.task.now().UnixMilli())
		return s.emitWatermark()
	}
	v, err := s.spec.Decode(raw)
	if err != nil {
		s.ctx.m.in++
		return s.ctx.HandleError(fmt.Errorf("decoding record from %s/%d@%d: %w", raw.Topic, raw.Partition, raw.Offset, err))
	}
	s.ctx.m.in++
	// Records do not move the watermark here: only the writers' markers do.
	return s.out.Collect(Record[T]{Value: v, Time: raw.Timestamp, Key: string(raw.Key)})
}

// tick leaves channel idleness to the writers' idle markers.
func (s *repartSource[T]) tick(int64) error { return nil }

// KeyPartition is Kafka's default partitioner: murmur2 of the key, made
// positive, modulo the partition count.
func KeyPartition(key []byte, n int32) int32 {
	if n <= 0 {
		return 0
	}
	return int32(murmur2(key)&0x7fffffff) % n
}

func murmur2(b []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(b))
	for len(b) >= 4 {
		k := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
		b = b[4:]
	}
	switch len(b) {
	case 3:
		h ^= uint32(b[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// StringKeys is the identity key codec.
type StringKeys struct{}

func (StringKeys) EncodeKey(k string) string          { return k }
func (StringKeys) DecodeKey(s string) (string, error) { return s, nil }

type intKeys[K ~int | ~int32 | ~int64] struct{}

func (intKeys[K]) EncodeKey(k K) string { return strconv.FormatInt(int64(k), 10) }
func (intKeys[K]) DecodeKey(s string) (K, error) {
	v, err := strconv.ParseInt(s, 10, 64)
	return K(v), err
}

type uintKeys struct{}

func (uintKeys) EncodeKey(k uint64) string { return strconv.FormatUint(k, 10) }
func (uintKeys) DecodeKey(s string) (uint64, error) {
	return strconv.ParseUint(s, 10, 64)
}

func keyCodecFor[K any](given any) (KeyCodec[K], error) {
	if given != nil {
		kc, ok := given.(KeyCodec[K])
		if !ok {
			return nil, fmt.Errorf("key codec %T is not a pipeline.KeyCodec[%T]", given, *new(K))
		}
		return kc, nil
	}
	var c any
	switch any(*new(K)).(type) {
	case string:
		c = StringKeys{}
	case int:
		c = intKeys[int]{}
	case int32:
		c = intKeys[int32]{}
	case int64:
		c = intKeys[int64]{}
	case uint64:
		c = uintKeys{}
	default:
		return nil, fmt.Errorf("key type %T has no default codec; pass pipeline.WithKeyCodec", *new(K))
	}
	return c.(KeyCodec[K]), nil
}

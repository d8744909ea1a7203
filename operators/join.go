package operators

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

// Versioned is a table row as of some time: the version valid from
// ValidFrom (event time, ms) until the next one.
type Versioned[V any] struct {
	Value     V
	ValidFrom int64
}

// Rejected is a probe the join could not answer, with the reason.
type Rejected[P any] struct {
	Value  P
	Time   int64
	Reason string
}

// TemporalJoinSpec configures TemporalJoin.
type TemporalJoinSpec[P, V, Out any] struct {
	// Join combines a probe with the table row valid at the probe's event
	// time; row is nil when the key had no row then (or it was deleted).
	// row is only valid during the call.
	Join func(probe P, row *Versioned[V]) (Out, error)
	// Deleted reports whether a table record deletes its key.
	Deleted func(V) bool
	// Retention is how much table history is kept per key behind the
	// table side's watermark. Probes older than that are rejected. Default
	// 24h.
	Retention time.Duration
	// Rejected receives probes older than the retention. Without it they
	// go to the dead-letter topic.
	Rejected *pipeline.OutputTag[Rejected[P]]
	// ProbeCodec and TableCodec store waiting probes and table versions.
	ProbeCodec pipeline.Codec[P]
	TableCodec pipeline.Codec[V]
	// Lookup answers every probe at once against the newest version of
	// its key the table side has delivered (Flink's lookup join, by
	// processing time) instead of the version as of the probe's event
	// time: no probe waits for the table side's watermark, no probe is
	// too old, and the answer depends on the order records arrive in.
	// Join's row carries the version used (ValidFrom).
	Lookup bool
}

// TemporalJoin joins each probe record with the version of its key in a
// versioned table (built from the table stream) as of the probe's event
// time: FOR SYSTEM_TIME AS OF probe.time. A probe waits until the table
// side's watermark passes its time, so the answer does not depend on the
// order records arrive in; when the table side is idle, probes are answered
// at once against the table as it stands. Both inputs must be keyed the
// same way (co-partitioned).
func TemporalJoin[K, P, V, Out any](probe pipeline.KeyedStream[K, P], table pipeline.KeyedStream[K, V], name string, spec TemporalJoinSpec[P, V, Out]) pipeline.Stream[Out] {
	if spec.Retention <= 0 {
		spec.Retention = 24 * time.Hour
	}
	b := probe.Stream.Builder()
	if spec.Join == nil || spec.ProbeCodec == nil || spec.TableCodec == nil {
		b.AddError(fmt.Errorf("temporal join %q: Join, ProbeCodec and TableCodec are required", name))
	}
	var sides []pipeline.SideTag
	if spec.Rejected != nil {
		sides = append(sides, *spec.Rejected)
	}
	return pipeline.AddOperator2(probe.Stream, table.Stream, name, pipeline.OperatorSpec{What: "temporalJoin", Stateful: true, Sides: sides},
		func() pipeline.Operator2[P, V, Out] {
			return &joinOp[P, V, Out]{spec: spec, retention: spec.Retention.Milliseconds(),
				tableWM: pipeline.MinTime, probeWM: pipeline.MinTime, outWM: pipeline.MinTime}
		})
}

type version[V any] struct {
	From    int64
	Deleted bool
	Value   V
}

type pendingProbe[P any] struct {
	T int64
	V P
}

type joinOp[P, V, Out any] struct {
	spec      TemporalJoinSpec[P, V, Out]
	retention int64
	ctx       *pipeline.Context
	out       pipeline.Collector[Out]
	versions  *state.ValueState[[]version[V]]
	pending   *state.ValueState[[]pendingProbe[P]]
	timers    *state.Timers
	meta      *state.ValueState[int64]
	row       Versioned[V] // handed to Join, reused
	tableWM   int64
	savedWM   int64
	tableIdle bool
	probeWM   int64
	probeIdle bool
	outWM     int64
	outIdle   bool
	// firing: probes the table watermark passed are still waiting for
	// their slice (FireSlice); new probes queue behind them, so answers
	// per key keep their order.
	firing bool
}

func (j *joinOp[P, V, Out]) Open(ctx *pipeline.Context, out pipeline.Collector[Out]) error {
	j.ctx, j.out = ctx, out
	var err error
	vspec := ctx.TableStateSpec(1, "versions")
	if j.versions, err = state.Value[[]version[V]](ctx.Store(), vspec, versionsCodec[V]{j.spec.TableCodec}); err != nil {
		return err
	}
	if j.pending, err = state.Value[[]pendingProbe[P]](ctx.Store(), ctx.StateSpec("probes", 0), probesCodec[P]{j.spec.ProbeCodec}); err != nil {
		return err
	}
	if j.timers, err = state.NewTimers(ctx.Store(), ctx.StateSpec("timers/probes", 0)); err != nil {
		return err
	}
	if j.meta, err = state.Value[int64](ctx.Store(), ctx.StateSpec("table-watermark", 0), varintCodec{}); err != nil {
		return err
	}
	wm, ok, err := j.meta.Get("wm")
	if ok {
		j.tableWM, j.savedWM = wm, wm
	}
	if err != nil {
		return err
	}
	ctx.RegisterContinuation(j)
	// Probes the restored table watermark already passed (a checkpoint
	// taken between slices) are answered in the next slices.
	if next, waiting := j.timers.Next(); waiting && next <= j.effectiveWM() {
		j.firing = true
		ctx.Wake()
	}
	return nil
}

// Drain answers the next slice of probes the table watermark passed.
func (j *joinOp[P, V, Out]) Drain() error {
	if !j.firing {
		return nil
	}
	if err := j.fire(j.effectiveWM()); err != nil {
		return err
	}
	return j.forward()
}

// Snapshot keeps the table watermark, so pruning and retention checks
// after a restore match the ones before it.
func (j *joinOp[P, V, Out]) Snapshot() error {
	if j.tableWM == pipeline.MinTime || j.tableWM == j.savedWM {
		return nil
	}
	j.savedWM = j.tableWM
	return j.meta.Set("wm", j.tableWM)
}

// effectiveWM is the time up to which probes can be answered.
func (j *joinOp[P, V, Out]) effectiveWM() int64 {
	if j.tableIdle {
		return pipeline.MaxTime
	}
	return j.tableWM
}

// Process1 handles a probe.
func (j *joinOp[P, V, Out]) Process1(r pipeline.Record[P]) error {
	if j.spec.Lookup {
		return j.answer(r.Key, r.Value, pipeline.MaxTime, r.Time, false)
	}
	if j.tableWM != pipeline.MinTime && r.Time < j.tableWM-j.retention {
		return j.reject(r, fmt.Sprintf("probe at %s is older than the join's retention (%s behind the table watermark %s)",
			fmtMs(r.Time), time.Duration(j.retention)*time.Millisecond, fmtMs(j.tableWM)))
	}
	if r.Time <= j.effectiveWM() && !j.firing {
		return j.answer(r.Key, r.Value, r.Time, r.Time, false)
	}
	list, _, err := j.pending.Get(r.Key)
	if err != nil {
		return err
	}
	if err := j.pending.Set(r.Key, append(list, pendingProbe[P]{T: r.Time, V: r.Value})); err != nil {
		return err
	}
	return j.timers.Register(r.Time, r.Key)
}

func (j *joinOp[P, V, Out]) reject(r pipeline.Record[P], reason string) error {
	if j.spec.Rejected != nil {
		return pipeline.EmitSide(j.ctx, *j.spec.Rejected, pipeline.Record[Rejected[P]]{
			Value: Rejected[P]{Value: r.Value, Time: r.Time, Reason: reason}, Time: r.Time, Key: r.Key})
	}
	return j.ctx.HandleError(errors.New(reason))
}

func fmtMs(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }

// answer joins probe p of key, at time t, with the version valid at asof
// (MaxTime: the newest). A probe that waited (held) is answered when the
// table side's watermark moves, not while its own record is fed: a failure
// then dead-letters the probe encoded with ProbeCodec.
func (j *joinOp[P, V, Out]) answer(key string, p P, asof, t int64, held bool) error {
	vs, _, err := j.versions.Get(key)
	if err != nil {
		return err
	}
	var row *Versioned[V]
	if i := asOf(vs, asof); i >= 0 && !vs[i].Deleted {
		j.row = Versioned[V]{Value: vs[i].Value, ValidFrom: vs[i].From}
		row = &j.row
	}
	out, err := j.spec.Join(p, row)
	if err != nil {
		err = fmt.Errorf("joining key %q at %s: %w", key, fmtMs(t), err)
		if !held {
			return j.ctx.HandleError(err)
		}
		in, encErr := j.spec.ProbeCodec.Encode(nil, p)
		if encErr != nil {
			err = fmt.Errorf("%w (and encoding the probe for the dead letter: %v)", err, encErr)
		}
		return j.ctx.HandleErrorValue(err, pipeline.Record[[]byte]{Value: in, Time: t, Key: key})
	}
	return j.out.Collect(pipeline.Record[Out]{Value: out, Time: t, Key: key})
}

// asOf returns the index of the newest version valid at t, or -1.
func asOf[V any](vs []version[V], t int64) int {
	i := sort.Search(len(vs), func(i int) bool { return vs[i].From > t })
	return i - 1
}

// Process2 handles a table change: it becomes a version of its key.
func (j *joinOp[P, V, Out]) Process2(r pipeline.Record[V]) error {
	vs, _, err := j.versions.Get(r.Key)
	if err != nil {
		return err
	}
	deleted := j.spec.Deleted != nil && j.spec.Deleted(r.Value)
	v := version[V]{From: r.Time, Deleted: deleted, Value: r.Value}
	i := sort.Search(len(vs), func(i int) bool { return vs[i].From >= r.Time })
	switch {
	case i < len(vs) && vs[i].From == r.Time:
		vs[i] = v // the later change at the same instant wins
	default:
		vs = append(vs, version[V]{})
		copy(vs[i+1:], vs[i:])
		vs[i] = v
	}
	vs = j.prune(vs)
	if len(vs) == 1 && vs[0].Deleted && vs[0].From <= j.tableWM-j.retention {
		return j.versions.Delete(r.Key)
	}
	return j.versions.Set(r.Key, vs)
}

// prune drops versions no probe within the retention can ask for: all but
// the newest one valid at the retention horizon (in lookup mode, all but
// the newest).
func (j *joinOp[P, V, Out]) prune(vs []version[V]) []version[V] {
	if j.spec.Lookup && len(vs) > 1 {
		return append(vs[:0], vs[len(vs)-1])
	}
	if j.tableWM == pipeline.MinTime {
		return vs
	}
	if i := asOf(vs, j.tableWM-j.retention); i > 0 {
		return append(vs[:0], vs[i:]...)
	}
	return vs
}

// OwnsWatermark: the join's output watermark follows the probe side.
func (j *joinOp[P, V, Out]) OwnsWatermark() {}

// OnInputWatermark answers the probes the table side's watermark passed,
// then moves the output watermark: the probe side's, held back below the
// earliest probe still waiting, idle when the probe side is idle and no
// probe waits.
func (j *joinOp[P, V, Out]) OnInputWatermark(input int, w pipeline.Watermark) error {
	if input == 0 {
		j.probeIdle = w.Idle
		if !w.Idle && w.Time > j.probeWM {
			j.probeWM = w.Time
		}
		return j.forward()
	}
	j.tableIdle = w.Idle
	if !w.Idle && w.Time > j.tableWM {
		j.tableWM = w.Time
	}
	if err := j.fire(j.effectiveWM()); err != nil {
		return err
	}
	return j.forward()
}

func (j *joinOp[P, V, Out]) forward() error {
	next, waiting := j.timers.Next()
	if j.probeIdle && !waiting {
		if j.outIdle {
			return nil
		}
		j.outIdle = true
		return j.ctx.ForwardWatermark(pipeline.Watermark{Time: j.outWM, Idle: true})
	}
	out := j.probeWM
	if waiting && next-1 < out {
		out = next - 1
	}
	if out > j.outWM || (j.outIdle && out >= j.outWM) {
		j.outWM, j.outIdle = out, false
		return j.ctx.ForwardWatermark(pipeline.Watermark{Time: out})
	}
	return nil
}

// fire answers the waiting probes at or before upTo, at most FireSlice keys
// in one call: with more left it wakes the task and the next Drain goes on.
func (j *joinOp[P, V, Out]) fire(upTo int64) error {
	slice := j.ctx.FireSlice()
	j.firing = false
	for n := 0; ; n++ {
		if slice > 0 && n == slice {
			if next, waiting := j.timers.Next(); waiting && next <= upTo {
				j.firing = true
				j.ctx.Wake()
			}
			return nil
		}
		_, key, ok, err := j.timers.Pop(upTo)
		if err != nil || !ok {
			return err
		}
		list, _, err := j.pending.Get(key)
		if err != nil {
			return err
		}
		var keep []pendingProbe[P]
		for _, p := range list {
			if p.T > upTo {
				keep = append(keep, p)
				continue
			}
			if err := j.answer(key, p.V, p.T, p.T, true); err != nil {
				return err
			}
		}
		if len(keep) == 0 {
			err = j.pending.Delete(key)
		} else {
			err = j.pending.Set(key, keep)
		}
		if err != nil {
			return err
		}
	}
}

func (j *joinOp[P, V, Out]) Close() error { return nil }

type versionsCodec[V any] struct{ c pipeline.Codec[V] }

func (vc versionsCodec[V]) Encode(dst []byte, vs []version[V]) ([]byte, error) {
	dst = binary.AppendUvarint(dst, uint64(len(vs)))
	var buf []byte
	for _, v := range vs {
		dst = binary.AppendVarint(dst, v.From)
		if v.Deleted {
			dst = append(dst, 1)
		} else {
			dst = append(dst, 0)
		}
		var err error
		if buf, err = vc.c.Encode(buf[:0], v.Value); err != nil {
			return dst, err
		}
		dst = binary.AppendUvarint(dst, uint64(len(buf)))
		dst = append(dst, buf...)
	}
	return dst, nil
}

var errBadVersions = errors.New("corrupt table versions")

func (vc versionsCodec[V]) Decode(src []byte) ([]version[V], error) {
	n, k := binary.Uvarint(src)
	if k <= 0 || n > uint64(len(src)) {
		return nil, errBadVersions
	}
	src = src[k:]
	out := make([]version[V], 0, n)
	for i := uint64(0); i < n; i++ {
		from, k := binary.Varint(src)
		if k <= 0 || len(src) < k+1 {
			return nil, errBadVersions
		}
		del := src[k] == 1
		src = src[k+1:]
		l, k := binary.Uvarint(src)
		if k <= 0 || l > uint64(len(src)-k) {
			return nil, errBadVersions
		}
		v, err := vc.c.Decode(src[k : k+int(l)])
		if err != nil {
			return nil, err
		}
		out = append(out, version[V]{From: from, Deleted: del, Value: v})
		src = src[k+int(l):]
	}
	return out, nil
}

type probesCodec[P any] struct{ c pipeline.Codec[P] }

func (pc probesCodec[P]) Encode(dst []byte, ps []pendingProbe[P]) ([]byte, error) {
	dst = binary.AppendUvarint(dst, uint64(len(ps)))
	var buf []byte
	for _, p := range ps {
		dst = binary.AppendVarint(dst, p.T)
		var err error
		if buf, err = pc.c.Encode(buf[:0], p.V); err != nil {
			return dst, err
		}
		dst = binary.AppendUvarint(dst, uint64(len(buf)))
		dst = append(dst, buf...)
	}
	return dst, nil
}

func (pc probesCodec[P]) Decode(src []byte) ([]pendingProbe[P], error) {
	n, k := binary.Uvarint(src)
	if k <= 0 || n > uint64(len(src)) {
		return nil, errBadVersions
	}
	src = src[k:]
	out := make([]pendingProbe[P], 0, n)
	for i := uint64(0); i < n; i++ {
		t, k := binary.Varint(src)
		if k <= 0 {
			return nil, errBadVersions
		}
		src = src[k:]
		l, k := binary.Uvarint(src)
		if k <= 0 || l > uint64(len(src)-k) {
			return nil, errBadVersions
		}
		v, err := pc.c.Decode(src[k : k+int(l)])
		if err != nil {
			return nil, err
		}
		out = append(out, pendingProbe[P]{T: t, V: v})
		src = src[k+int(l):]
	}
	return out, nil
}

package pipeline_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

// markOut keeps what a task emits.
type markOut struct{ recs []pipeline.OutRecord }

func (o *markOut) Emit(r pipeline.OutRecord) error      { o.recs = append(o.recs, r); return nil }
func (o *markOut) DeadLetter(pipeline.DeadLetter) error { return nil }
func (o *markOut) idleMarkers() (n int) {
	for _, r := range o.recs {
		for _, h := range r.Headers {
			if h.Key == pipeline.HeaderWatermark && pipeline.IdleMarker(h.Value) {
				n++
			}
		}
	}
	return n
}

// TestIdleWriterMarksAgain: a writer task whose input went idle writes
// its idle marker to every partition of the repartition topic, and again
// at a checkpoint once IdleRemark of processing time has passed since (a
// reader restored from a checkpoint starts every writer active and would
// otherwise wait for a writer that never writes again); not at every
// checkpoint, and not while it is active.
func TestIdleWriterMarksAgain(t *testing.T) {
	const parts = 3
	b := pipeline.NewBuilder("remark")
	src := pipeline.AddSource(b, "ev", pipeline.SourceSpec[string]{Topic: "ev", Decode: decode,
		Watermarks: pipeline.WatermarkStrategy{IdleTimeout: time.Second}})
	keyed := pipeline.KeyBy(src, "by", func(s string) string { return s }, pipeline.ValueCodec(pipeline.StringCodec()))
	var got pipeline.Collected[string]
	pipeline.CollectTo(keyed.Stream, "out", &got)
	plan, err := b.Plan()
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(state.Options{FS: vfs.NewMem(), Dir: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	out := &markOut{}
	task, err := pipeline.NewTask(pipeline.TaskConfig{Plan: plan, Subtopology: 0, Store: st, Output: out,
		Now: func() time.Time { return now }, Partitions: func(string) int32 { return parts }})
	if err != nil {
		t.Fatal(err)
	}
	defer task.Close()
	checkpoint := func() {
		t.Helper()
		if err := task.Checkpoint(func(state.Mutation) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if err := task.Commit(nil); err != nil {
			t.Fatal(err)
		}
	}
	tick := func(d time.Duration) {
		t.Helper()
		now = now.Add(d)
		if err := task.Tick(); err != nil {
			t.Fatal(err)
		}
	}
	if err := task.FeedRaw(&pipeline.RawRecord{Topic: "ev", Value: []byte("a"), Timestamp: 1000}); err != nil {
		t.Fatal(err)
	}
	checkpoint()
	if n := out.idleMarkers(); n != 0 {
		t.Fatalf("%d idle markers from an active writer", n)
	}
	tick(500 * time.Millisecond) // starts the idle clock
	tick(1500 * time.Millisecond)
	if n := out.idleMarkers(); n != parts {
		t.Fatalf("%d idle markers once the input went idle, want one per partition (%d)", n, parts)
	}
	checkpoint()
	tick(100 * time.Millisecond)
	checkpoint()
	if n := out.idleMarkers(); n != parts {
		t.Fatalf("%d idle markers after checkpoints within %s of the last, want still %d", n, pipeline.IdleRemark, parts)
	}
	tick(pipeline.IdleRemark)
	checkpoint()
	if n := out.idleMarkers(); n != 2*parts {
		t.Fatalf("%d idle markers after %s idle, want %d (said again)", n, pipeline.IdleRemark, 2*parts)
	}
}

func marker(writer int32, wm int64, idle bool) []byte {
	b := binary.AppendUvarint(nil, uint64(writer))
	b = binary.AppendVarint(b, wm)
	if idle {
		return append(b, 1)
	}
	return append(b, 0)
}

// TestStaleIdleMarkerIgnoredAfterRestore: a crash restore (not a
// savepoint) of a reader re-reads the idle marker its writer wrote again
// (IdleRemark) in the transaction after the reader's last checkpoint. The
// writer may have restarted since, with input to catch up on; trusting the
// stale marker left it out of the reader's watermark while the other writer
// carried it past the records still to come (found by a review: the
// watermark reached 59999 instead of staying at 999). Idle markers written
// before the reader started are ignored.
func TestStaleIdleMarkerIgnoredAfterRestore(t *testing.T) {
	b := pipeline.NewBuilder("remark")
	src := pipeline.AddSource(b, "ev", pipeline.SourceSpec[string]{Topic: "ev", Decode: decode, Partitions: 2,
		Watermarks: pipeline.WatermarkStrategy{IdleTimeout: time.Second}})
	keyed := pipeline.KeyBy(src, "by", func(s string) string { return s }, pipeline.ValueCodec(pipeline.StringCodec()))
	var got pipeline.Collected[string]
	pipeline.CollectTo(keyed.Stream, "out", &got)
	plan, err := b.Plan()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	open := func(sub int, part int32, st *state.Store, out pipeline.Output) *pipeline.Task {
		t.Helper()
		task, err := pipeline.NewTask(pipeline.TaskConfig{Plan: plan, Subtopology: sub, Partition: part, Store: st, Output: out,
			Now: clock, Partitions: func(string) int32 { return 1 }})
		if err != nil {
			t.Fatal(err)
		}
		return task
	}
	cp := func(task *pipeline.Task) {
		t.Helper()
		if err := task.Checkpoint(func(state.Mutation) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if err := task.Commit(nil); err != nil {
			t.Fatal(err)
		}
	}
	rfs := vfs.NewMem()
	mkfs := func(fs vfs.FS) *state.Store {
		st, err := state.Open(state.Options{FS: fs, Dir: "s"})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	w1st, rst := mkfs(vfs.NewMem()), mkfs(rfs)
	w1out := &markOut{}
	w1 := open(0, 1, w1st, w1out)
	rout := &markOut{}
	r := open(1, 0, rst, rout)
	var topic string
	toR := func(task *pipeline.Task, recs []pipeline.OutRecord) {
		t.Helper()
		for _, o := range recs {
			topic = o.Topic
			if err := task.FeedRaw(&pipeline.RawRecord{Topic: o.Topic, Key: o.Key, Value: o.Value, Headers: o.Headers, Timestamp: o.Timestamp}); err != nil {
				t.Fatal(err)
			}
		}
	}
	w0mark := func(task *pipeline.Task, wm int64) {
		t.Helper()
		toR(task, []pipeline.OutRecord{{Topic: topic, Headers: []pipeline.Header{{Key: pipeline.HeaderWatermark, Value: marker(0, wm, false)}}}})
	}
	// Run 1: W1 reads one record, then goes idle; the reader reads all of it.
	if err := w1.FeedRaw(&pipeline.RawRecord{Topic: "ev", Partition: 1, Value: []byte("b"), Timestamp: 1000}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(100 * time.Millisecond)
	w1.Tick()
	now = now.Add(1500 * time.Millisecond)
	w1.Tick() // idle marker
	cp(w1)
	toR(r, w1out.recs)
	w1out.recs = nil
	w0mark(r, 999)
	cp(r) // the reader's last checkpoint: past W1's first idle marker
	now = now.Add(pipeline.IdleRemark)
	cp(w1) // W1's checkpoint (same transaction as the reader's next one, or a later one): the remark
	remark := w1out.recs
	t.Logf("in flight after the reader's checkpoint: %d records (remark)", len(remark))
	if len(remark) == 0 {
		t.Fatal("the writer did not mark itself idle again: the scenario needs its remark in flight")
	}
	// Crash. The reader restores from its checkpoint: W1 active at 999.
	now = now.Add(50 * time.Millisecond)
	r.Close()
	rst.Close()
	rst = mkfs(rfs)
	r = open(1, 0, rst, rout)
	toR(r, remark)           // in-flight committed records: W1's remark, stale
	w0mark(r, 59_999)        // W0 (restored elsewhere) works through its backlog
	wm, _ := got.Watermark() // W1' (restored, not idle: its input grew) has not announced yet
	t.Logf("reader watermark after restore: %+v", wm)
	if wm.Time > 999 {
		t.Errorf("restored reader's watermark at %d: a stale idle remark left restored writer 1 out (its backlog at ts 5000 is now late)", wm.Time)
	}
}

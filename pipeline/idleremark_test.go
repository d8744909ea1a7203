package pipeline_test

import (
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

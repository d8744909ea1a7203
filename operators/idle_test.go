package operators_test

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

// idleJob is two sources, a (idle after 1s) through a map and b (never
// idle), in a union whose watermark the test watches.
type idleJob struct {
	t       *testing.T
	now     time.Time
	task    *pipeline.Task
	a, b    *pipeline.Input[string]
	out     pipeline.Collected[string]
	backlog pipeline.Backlog
}

func newIdleJob(t *testing.T) *idleJob {
	j := &idleJob{t: t, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), backlog: pipeline.Backlog{Known: true}}
	bld := pipeline.NewBuilder("idle")
	a := pipeline.AddSource(bld, "a", pipeline.SourceSpec[string]{Topic: "a", Decode: decodeString,
		Watermarks: pipeline.WatermarkStrategy{IdleTimeout: time.Second}})
	b := pipeline.AddSource(bld, "b", pipeline.SourceSpec[string]{Topic: "b", Decode: decodeString})
	am := operators.Map(a, "a-map", func(s string) (string, error) { return s, nil })
	pipeline.CollectTo(pipeline.Union("both", am, b), "out", &j.out)
	plan, err := bld.Plan()
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(state.Options{FS: vfs.NewMem(), Dir: "s"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	j.task, err = pipeline.NewTask(pipeline.TaskConfig{Plan: plan, Subtopology: -1, Store: st, Output: nullOutput{},
		Now: func() time.Time { return j.now },
		Backlog: func(topic string, p int32) pipeline.Backlog {
			if topic != "a" {
				t.Errorf("backlog asked of topic %q", topic)
			}
			return j.backlog
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.task.Close() })
	if j.a, err = pipeline.InputOf[string](j.task, "a"); err != nil {
		t.Fatal(err)
	}
	if j.b, err = pipeline.InputOf[string](j.task, "b"); err != nil {
		t.Fatal(err)
	}
	return j
}

func (j *idleJob) push(in *pipeline.Input[string], tsMs int64) {
	j.t.Helper()
	if err := in.Push(0, "x", tsMs); err != nil {
		j.t.Fatal(err)
	}
}

func (j *idleJob) tick(d time.Duration) {
	j.t.Helper()
	j.now = j.now.Add(d)
	if err := j.task.Tick(); err != nil {
		j.t.Fatal(err)
	}
}

func (j *idleJob) watermark() pipeline.Watermark {
	j.t.Helper()
	w, ok := j.out.Watermark()
	if !ok {
		return pipeline.Watermark{Time: pipeline.MinTime}
	}
	return w
}

// TestIdleInputActiveAgainThroughMap: an idle input that comes back with
// a record no newer than its watermark must count again in the union
// after a map. A map that dropped the "active again" watermark (its time
// had not advanced) left the union ignoring the input for good: b then
// moved the union's watermark past a's records.
func TestIdleInputActiveAgainThroughMap(t *testing.T) {
	j := newIdleJob(t)
	j.tick(0) // the idle clock starts
	j.push(j.a, 1000)
	j.push(j.b, 1000)
	j.tick(2 * time.Second) // a is idle
	j.push(j.b, 50_000)
	if w := j.watermark(); w.Time != 49_999 {
		t.Fatalf("with a idle the union's watermark is %d, want b's 49999", w.Time)
	}
	j.push(j.a, 1000) // a is back, its watermark unchanged (999)
	j.push(j.b, 90_000)
	if w := j.watermark(); w.Time != 49_999 || w.Idle {
		t.Fatalf("after a came back, b moved the union's watermark to %+v; a (at 999) must hold it at 49999", w)
	}
}

// TestIdleClockStartsWhenTaskRuns: the time a task spends being restored
// (its tables replayed before its first tick) must not count towards
// idleness: every partition would be idle on the first tick.
func TestIdleClockStartsWhenTaskRuns(t *testing.T) {
	j := newIdleJob(t)
	j.push(j.b, 5000)
	j.now = j.now.Add(time.Minute) // a long restore
	j.tick(0)
	if w := j.watermark(); w.Time != pipeline.MinTime {
		t.Fatalf("first tick after a long restore made a idle: watermark %+v", w)
	}
	j.tick(2 * time.Second)
	if w := j.watermark(); w.Time != 4999 {
		t.Fatalf("a quiet for 2s after the task ran: watermark %+v, want b's 4999", w)
	}
}

// TestBacklogKeepsPartitionActive: a partition with unread records, or
// one whose backlog the runtime does not know, is never idle, however
// long its task goes without records from it.
func TestBacklogKeepsPartitionActive(t *testing.T) {
	j := newIdleJob(t)
	j.tick(0)
	j.push(j.a, 1000)
	j.push(j.b, 50_000)
	for _, b := range []pipeline.Backlog{{Known: true, Unread: true}, {Known: false}} {
		j.backlog = b
		j.tick(10 * time.Second)
		if w := j.watermark(); w.Time != 999 {
			t.Fatalf("backlog %+v: a was marked idle (union watermark %+v, want a's 999)", b, w)
		}
	}
	j.backlog = pipeline.Backlog{Known: true}
	j.tick(100 * time.Millisecond)
	if w := j.watermark(); w.Time != 49_999 {
		t.Fatalf("a caught up and quiet: union watermark %+v, want b's 49999", w)
	}
}

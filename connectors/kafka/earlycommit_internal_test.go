package kafka

import (
	"testing"
	"time"
)

// TestIdleCommitDue checks each condition of an early checkpoint
// (Config.MinCommitInterval) against the rule as docs/design.md states it:
// output produced since the last checkpoint, the last poll empty, no task
// paused or with records queued, at least MinCommitInterval since the last
// checkpoint, and at most one record produced per MinCommitInterval since
// then. The intervals are seconds apart from every threshold (a 10 s
// commit interval, a 1 s minimum), so the scheduling of the test cannot
// move a case across one.
func TestIdleCommitDue(t *testing.T) {
	const ci, m = 10 * time.Second, time.Second
	for _, c := range []struct {
		name      string
		min       time.Duration
		sinceLast time.Duration // since the last checkpoint
		produced  int64
		fetched   int
		paused    bool
		queued    int64
		full      bool
		want      bool
	}{
		{name: "idle after sparse output", min: m, sinceLast: 5 * time.Second, produced: 2, want: true},
		{name: "early commits off", min: 0, sinceLast: 5 * time.Second, produced: 2},
		{name: "the last poll fetched records", min: m, sinceLast: 5 * time.Second, produced: 2, fetched: 3},
		{name: "nothing produced", min: m, sinceLast: 5 * time.Second},
		{name: "a task paused by a full operator", min: m, sinceLast: 5 * time.Second, produced: 2, paused: true},
		{name: "records queued to a task", min: m, sinceLast: 5 * time.Second, produced: 2, queued: 4},
		{name: "a task's queue full", min: m, sinceLast: 5 * time.Second, produced: 2, full: true},
		{name: "too soon after the last checkpoint", min: m, sinceLast: 100 * time.Millisecond, produced: 1},
		{name: "more than a record per minimum interval: load", min: m, sinceLast: 5 * time.Second, produced: 10},
		{name: "four records in five seconds: sparse", min: m, sinceLast: 5 * time.Second, produced: 4, want: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := &Worker{cfg: Config{CommitInterval: ci, MinCommitInterval: c.min}, tasks: map[taskID]*taskRunner{}, paused: map[taskID]bool{}}
			w.produced.Store(c.produced)
			tr := &taskRunner{}
			tr.queued.Store(c.queued)
			tr.full.Store(c.full)
			w.tasks[taskID{0, 0}] = tr
			if c.paused {
				w.paused[taskID{0, 0}] = true
			}
			next := time.Now().Add(ci - c.sinceLast) // the next scheduled checkpoint
			if got := w.idleCommitDue(next, c.fetched); got != c.want {
				t.Fatalf("idleCommitDue = %v, want %v", got, c.want)
			}
		})
	}
}

package kafka

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kadm"
)

// Backlog-aware idleness. A source partition may be marked idle only when
// the worker knows it holds no record the task has not read: nothing
// handed to the task is still queued, and a recent listing of the
// partition's last stable offset (read_committed end) is not past the
// consumer's position. The consumer keeps control records, so its position
// moves past transaction markers and an aborted tail, and "caught up"
// means position == last stable offset exactly.

// endsRefresh is how often the worker lists its inputs' last stable and
// start offsets; endsFresh is how old a listing may be to vouch that a
// partition is caught up.
const (
	endsRefresh = time.Second
	endsFresh   = 3 * endsRefresh
)

// ends is one listing of the input partitions' offsets.
type ends struct {
	at    time.Time
	lso   map[string]map[int32]int64
	start map[string]map[int32]int64
}

// position is a task's read position in one input partition.
type position struct {
	handed    atomic.Int64 // next offset after what the polling goroutine handed over
	processed atomic.Int64 // next offset after what the task has fed
}

// refreshEnds lists the inputs' offsets every endsRefresh until ctx ends.
// It runs on its own goroutine, owned by Run.
func (w *Worker) refreshEnds(ctx context.Context) {
	t := time.NewTicker(endsRefresh)
	defer t.Stop()
	for {
		at := time.Now()
		lctx, cancel := context.WithTimeout(ctx, endsRefresh)
		lsos, err1 := w.adm.ListCommittedOffsets(lctx, w.inputs...)
		starts, err2 := w.adm.ListStartOffsets(lctx, w.inputs...)
		cancel()
		if err1 == nil && err2 == nil {
			e := &ends{at: at, lso: map[string]map[int32]int64{}, start: map[string]map[int32]int64{}}
			lsos.Each(func(o kadm.ListedOffset) { put(e.lso, o.Topic, o.Partition, o.Offset, o.Err) })
			starts.Each(func(o kadm.ListedOffset) { put(e.start, o.Topic, o.Partition, o.Offset, o.Err) })
			w.ends.Store(e)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func put(m map[string]map[int32]int64, topic string, p int32, off int64, err error) {
	if err != nil {
		return
	}
	if m[topic] == nil {
		m[topic] = map[int32]int64{}
	}
	m[topic][p] = off
}

// backlog answers pipeline.TaskConfig.Backlog for one task.
func (tr *taskRunner) backlog(topic string, p int32) pipeline.Backlog {
	pos := tr.positions[topic]
	e := tr.w.ends.Load()
	if pos == nil || p != tr.id.part || e == nil || time.Since(e.at) > endsFresh {
		return pipeline.Backlog{}
	}
	handed, processed := pos.handed.Load(), pos.processed.Load()
	if processed < handed {
		return pipeline.Backlog{Known: true, Unread: true}
	}
	lso, ok := e.lso[topic][p]
	if !ok {
		return pipeline.Backlog{}
	}
	at := max(handed, e.start[topic][p])
	return pipeline.Backlog{Known: true, Unread: lso > at}
}

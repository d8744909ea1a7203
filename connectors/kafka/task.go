package kafka

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
	"github.com/twmb/franz-go/pkg/kgo"
)

// taskID is one partition index of one subtopology.
type taskID struct {
	sub  int
	part int32
}

func (id taskID) String() string { return fmt.Sprintf("%d_%d", id.sub, id.part) }

// LogValue logs a task id as "<subtopology>_<partition>" (its fields are
// unexported: slog would print {}).
func (id taskID) LogValue() slog.Value { return slog.StringValue(id.String()) }

type msgKind int

const (
	msgBatch msgKind = iota
	msgBarrier
	msgClose
	msgSnapshot
)

// taskMsg is what the polling goroutine sends a task, in order.
type taskMsg struct {
	kind msgKind
	recs []*kgo.Record
	// Barrier: the task replies once its checkpoint is staged, then waits
	// for the outcome of the transaction.
	reply  chan<- error
	resume <-chan outcome
	// Snapshot: the directory to write a copy of the committed state to.
	dir string
}

// outcome tells a task whether its checkpoint committed and, if so, the
// source offsets (for source-backed tables) it reflects.
type outcome struct {
	committed bool
	sources   map[string]int64
}

// taskRunner owns one task on its own goroutine.
type taskRunner struct {
	w     *Worker
	id    taskID
	task  *pipeline.Task
	store *state.Store
	in    chan taskMsg
	done  chan struct{}
	raw   pipeline.RawRecord
	hbuf  []pipeline.Header

	positions map[string]*position // input topic → read position (backlog.go)

	// queued counts the records in the input queue (QueueRecords bounds
	// it; the queue-fill metric).
	queued atomic.Int64

	promise    func(*kgo.Record, error)
	logPromise func(*kgo.Record, error)

	mu     sync.Mutex
	logEnd map[string]int64 // changelog topic → next offset after this checkpoint
	// repEnd is, per repartition topic and partition, the offset after
	// the last record the task wrote there (savepoints wait for it).
	repEnd  map[string]map[int32]int64
	prodErr error
	failed  error // task goroutine only

	// sweeping: a TTL sweep pass is in progress (started at passStart);
	// task goroutine only.
	sweeping  bool
	passStart time.Time

	// full: an operator of the task holds records waiting for room
	// (Task.Backpressured); the worker pauses the task's input meanwhile.
	full atomic.Bool
}

func (tr *taskRunner) init() {
	tr.in = make(chan taskMsg, queueChunks-1) // plus the chunk waiting to enter: QueueRecords
	tr.done = make(chan struct{})
	tr.logEnd = make(map[string]int64)
	tr.promise = tr.onProduced
	tr.logPromise = tr.onLogProduced
}

func (tr *taskRunner) onProduced(r *kgo.Record, err error) {
	if err != nil {
		tr.mu.Lock()
		if tr.prodErr == nil {
			tr.prodErr = err
		}
		tr.mu.Unlock()
		return
	}
	if !tr.w.repSet[r.Topic] {
		return
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.repEnd == nil {
		tr.repEnd = make(map[string]map[int32]int64)
	}
	ps := tr.repEnd[r.Topic]
	if ps == nil {
		ps = make(map[int32]int64)
		tr.repEnd[r.Topic] = ps
	}
	if next := r.Offset + 1; next > ps[r.Partition] {
		ps[r.Partition] = next
	}
}

func (tr *taskRunner) onLogProduced(r *kgo.Record, err error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if err != nil {
		if tr.prodErr == nil {
			tr.prodErr = err
		}
		return
	}
	if next := r.Offset + 1; next > tr.logEnd[r.Topic] {
		tr.logEnd[r.Topic] = next
	}
}

// errCheckpointAborted marks a task whose checkpoint did not commit: it
// waits, inert, for the worker to reopen it.
var errCheckpointAborted = errors.New("kafka: checkpoint aborted; the task reopens from its last checkpoint")

// run is the task goroutine; it ends on msgClose.
func (tr *taskRunner) run() {
	defer close(tr.done)
	tick := time.NewTicker(tr.w.cfg.TickInterval)
	defer tick.Stop()
	for {
		var err error
		select {
		case m := <-tr.in:
			switch m.kind {
			case msgBatch:
				if tr.failed == nil {
					err = tr.feed(m.recs)
				}
				// Counted until fed: a batch being fed is not "no input
				// queued" (Worker.idleCommitDue, the poll's wait).
				tr.queued.Add(-int64(len(m.recs)))
			case msgBarrier:
				err = tr.checkpoint(m)
			case msgClose:
				tr.close()
				return
			case msgSnapshot:
				m.reply <- tr.store.Checkpoint(m.dir)
			}
		case <-tr.task.Woken():
			if tr.failed == nil {
				err = tr.task.Drain()
			}
		case <-tick.C:
			if tr.failed == nil {
				err = tr.task.Tick()
				if err == nil {
					err = tr.sweep()
				}
				tr.task.PublishMetrics()
			}
		}
		// Dirty state that fills the write cache asks for a checkpoint now
		// rather than letting memory grow.
		if tr.failed == nil && tr.task.NeedsCheckpoint() {
			tr.w.needsCP.Store(true)
		}
		full := tr.failed == nil && tr.task.Backpressured()
		if was := tr.full.Swap(full); was && !full {
			tr.w.wakePoll()
		}
		if err != nil && tr.failed == nil {
			tr.failed = err
			tr.w.taskFailed(tr.id, err)
		}
	}
}

// sweep runs a tick's share of the TTL sweep; a new pass starts no sooner
// than SweepInterval after the last one started.
func (tr *taskRunner) sweep() error {
	now := time.Now()
	if !tr.sweeping {
		if iv := tr.w.cfg.SweepInterval; iv > 0 && !tr.passStart.IsZero() && now.Sub(tr.passStart) < iv {
			return nil
		}
		tr.sweeping, tr.passStart = true, now
	}
	res, err := tr.task.ExpireState(tr.w.cfg.ExpireBudget)
	if res.PassDone {
		tr.sweeping = false
	}
	return err
}

func (tr *taskRunner) feed(recs []*kgo.Record) error {
	start := time.Now()
	for _, r := range recs {
		if !r.Attrs.IsControl() {
			tr.convert(r)
			if err := tr.task.FeedRaw(&tr.raw); err != nil {
				return err
			}
		}
	}
	if n := len(recs); n > 0 {
		if pos := tr.positions[recs[0].Topic]; pos != nil {
			pos.processed.Store(recs[n-1].Offset + 1)
		}
	}
	if tr.w.metrics != nil {
		tr.w.metrics.Latency.WithLabelValues(tr.w.plan.Job, strconv.Itoa(tr.id.sub)).Observe(time.Since(start).Seconds())
	}
	return nil
}

func (tr *taskRunner) convert(r *kgo.Record) {
	tr.raw = pipeline.RawRecord{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Key: r.Key, Value: r.Value, Timestamp: r.Timestamp.UnixMilli()}
	if len(r.Headers) > 0 {
		tr.hbuf = tr.hbuf[:0]
		for _, h := range r.Headers {
			tr.hbuf = append(tr.hbuf, pipeline.Header{Key: h.Key, Value: h.Value})
		}
		tr.raw.Headers = tr.hbuf
	}
}

// checkpoint stages the task's state in the transaction, reports, and
// applies the outcome.
func (tr *taskRunner) checkpoint(m taskMsg) error {
	if tr.failed != nil {
		m.reply <- tr.failed
		<-m.resume
		return nil
	}
	tr.mu.Lock()
	clear(tr.logEnd)
	tr.mu.Unlock()
	err := tr.task.Checkpoint(func(mu state.Mutation) error {
		tr.w.logBytes.Add(int64(len(mu.Key) + len(mu.Value)))
		return tr.w.produce(&kgo.Record{Topic: mu.Log, Partition: tr.id.part, Key: mu.Key, Value: mu.Value}, tr.logPromise)
	})
	m.reply <- err
	oc := <-m.resume
	if err != nil {
		return err
	}
	if !oc.committed {
		// The worker reopens every task from its last checkpoint next:
		// until then the staged store must not be touched (a tick's TTL
		// sweep or timers would fail the task with state.ErrFlushing).
		tr.failed = errCheckpointAborted
		return nil
	}
	tr.mu.Lock()
	offsets := make(map[string]int64, len(tr.logEnd)+len(oc.sources))
	for t, o := range tr.logEnd {
		offsets[t] = o
	}
	tr.mu.Unlock()
	for t, o := range oc.sources {
		offsets[t] = o
	}
	return tr.task.Commit(offsets)
}

// producedErr returns the first produce error since the last checkpoint.
func (tr *taskRunner) producedErr() error {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	err := tr.prodErr
	tr.prodErr = nil
	return err
}

func (tr *taskRunner) close() {
	if err := tr.task.Close(); err != nil {
		tr.w.log.Warn("closing task", "task", tr.id, "err", err)
	}
	if err := tr.store.Close(); err != nil {
		tr.w.log.Warn("closing task state", "task", tr.id, "err", err)
	}
}

// Emit implements pipeline.Output: a record produced in the current
// transaction.
func (tr *taskRunner) Emit(r pipeline.OutRecord) error {
	kr := &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value, Timestamp: time.UnixMilli(r.Timestamp), Partition: r.Partition}
	if kr.Partition < 0 {
		n := tr.w.partitions(r.Topic)
		if r.Key != nil {
			kr.Partition = pipeline.KeyPartition(r.Key, n)
		} else {
			kr.Partition = tr.id.part % n
		}
	}
	for _, h := range r.Headers {
		kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
	}
	return tr.w.produce(kr, tr.promise)
}

// Dead-letter headers.
const (
	HeaderError     = "lf-error"
	HeaderOperator  = "lf-operator"
	HeaderJob       = "lf-job"
	HeaderTopic     = "lf-topic"
	HeaderPartition = "lf-partition"
	HeaderOffset    = "lf-offset"
)

// DeadLetter implements pipeline.Output: the failed record goes to
// dlq.<job> with what went wrong and where it came from.
func (tr *taskRunner) DeadLetter(d pipeline.DeadLetter) error {
	kr := &kgo.Record{Topic: pipeline.DeadLetterTopic(d.Job), Headers: []kgo.RecordHeader{
		{Key: HeaderError, Value: []byte(d.Err.Error())},
		{Key: HeaderOperator, Value: []byte(d.Operator)},
		{Key: HeaderJob, Value: []byte(d.Job)},
	}}
	if src := d.Source; src != nil {
		kr.Key = append([]byte(nil), src.Key...)
		kr.Value = append([]byte(nil), src.Value...)
		kr.Timestamp = time.UnixMilli(src.Timestamp)
		kr.Headers = append(kr.Headers,
			kgo.RecordHeader{Key: HeaderTopic, Value: []byte(src.Topic)},
			kgo.RecordHeader{Key: HeaderPartition, Value: []byte(strconv.Itoa(int(src.Partition)))},
			kgo.RecordHeader{Key: HeaderOffset, Value: []byte(strconv.FormatInt(src.Offset, 10))})
	} else {
		kr.Key, kr.Value = d.Key, d.Value
		if d.Timestamp != 0 {
			kr.Timestamp = time.UnixMilli(d.Timestamp)
		}
	}
	n := tr.w.partitions(kr.Topic)
	kr.Partition = tr.id.part % n
	return tr.w.produce(kr, tr.promise)
}

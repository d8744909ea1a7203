package pipeline

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/loanflow/loanflow/state"
)

// LocalOptions configures a Local runtime.
type LocalOptions struct {
	// FS holds the task's state; default an in-memory FS, which survives
	// Restart (it models the local disk).
	FS vfs.FS
	// Dir is the state directory within FS; default "state".
	Dir string
	// Start is the initial processing time; default 2026-01-01T00:00:00Z.
	Start time.Time
	// MaxCachedEntries bounds the state write cache (0 = default).
	MaxCachedEntries int
	// DiscardChangelog counts changelog mutations instead of keeping them
	// (benchmarks).
	DiscardChangelog bool
	Logger           *slog.Logger
	// FireSlice cuts the work a watermark releases into slices (see
	// TaskConfig.FireSlice); Continue runs the next one. 0: unbounded.
	FireSlice int
	// MaxWaitingRecords bounds the records waiting for room in async
	// operators at capacity: at the bound, Feed and FeedRaw block and run
	// completions until one fewer waits (see TaskConfig.MaxWaitingRecords;
	// default DefaultMaxWaitingRecords).
	MaxWaitingRecords int
}

// Local runs a whole job fused into one task in this process, with a
// manual processing-time clock and in-memory topics, in the manner of
// Kafka Streams' TopologyTestDriver. Tests and in-memory benchmarks use it;
// the Kafka runtime runs the same graph partitioned across workers.
//
// Outputs follow the exactly-once protocol: they are pending until
// Checkpoint commits them, and Restart (a simulated crash) drops pending
// outputs and uncommitted state.
type Local struct {
	plan   *Plan
	opts   LocalOptions
	mu     sync.Mutex
	clock  time.Time
	store  *state.Store
	task   *Task
	out    localOutput
	logs   map[string][]state.Mutation
	logLen map[string]int64
}

type localOutput struct {
	mu        sync.Mutex
	pending   []OutRecord
	committed []OutRecord
	dlqPend   []DeadLetter
	dlq       []DeadLetter
}

func (o *localOutput) Emit(r OutRecord) error {
	o.mu.Lock()
	o.pending = append(o.pending, r)
	o.mu.Unlock()
	return nil
}

func (o *localOutput) DeadLetter(d DeadLetter) error {
	o.mu.Lock()
	o.dlqPend = append(o.dlqPend, d)
	o.mu.Unlock()
	return nil
}

// NewLocal validates and starts the job built by b.
func NewLocal(b *Builder, opts LocalOptions) (*Local, error) {
	plan, err := b.Plan()
	if err != nil {
		return nil, err
	}
	if opts.FS == nil {
		opts.FS = vfs.NewMem()
	}
	if opts.Start.IsZero() {
		opts.Start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Local{plan: plan, opts: opts, clock: opts.Start, logs: make(map[string][]state.Mutation), logLen: make(map[string]int64)}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Local) now() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.clock
}

func (l *Local) open() error {
	dir := l.opts.Dir
	if dir == "" {
		dir = "state"
	}
	st, err := state.Open(state.Options{Dir: dir, FS: l.opts.FS, MaxCachedEntries: l.opts.MaxCachedEntries, Now: l.now})
	if err != nil {
		return err
	}
	t, err := NewTask(TaskConfig{Plan: l.plan, Subtopology: -1, Store: st, Output: &l.out, Now: l.now, Logger: l.opts.Logger, FireSlice: l.opts.FireSlice,
		MaxWaitingRecords: l.opts.MaxWaitingRecords})
	if err != nil {
		st.Close()
		return err
	}
	l.store, l.task = st, t
	return nil
}

// Task is the running task.
func (l *Local) Task() *Task { return l.task }

// Plan is the job's plan.
func (l *Local) Plan() *Plan { return l.plan }

// Feed runs one typed record through the named source, as read from
// partition p with event time ts (ms). While LocalOptions.MaxWaitingRecords
// records wait for room in async operators it first blocks, running their
// completions (see Input.Push).
func Feed[T any](l *Local, source string, p int32, v T, ts int64) error {
	in, err := InputOf[T](l.task, source)
	if err != nil {
		return err
	}
	return in.Push(p, v, ts)
}

// FeedRaw runs one raw record through the named source (decoding it as the
// Kafka runtime would). Like Feed, it first waits while
// LocalOptions.MaxWaitingRecords records wait for room in async operators.
func (l *Local) FeedRaw(source string, raw RawRecord) error {
	for _, s := range l.task.sourceList {
		if si, ok := s.(interface{ name() string }); ok && si.name() == source {
			if err := l.task.admit(); err != nil {
				return err
			}
			l.task.current = &raw
			err := s.feedRaw(&raw)
			l.task.current = nil
			return err
		}
	}
	return fmt.Errorf("pipeline: job %s has no source %q", l.plan.Job, source)
}

// Advance moves processing time forward, fires processing-time timers,
// checks idleness and runs queued async completions.
func (l *Local) Advance(d time.Duration) error {
	l.mu.Lock()
	l.clock = l.clock.Add(d)
	l.mu.Unlock()
	if err := l.task.Tick(); err != nil {
		return err
	}
	return l.task.Drain()
}

// Drain runs queued async completions.
func (l *Local) Drain() error { return l.task.Drain() }

// Continue runs the work an operator queued for the task loop (async
// completions, the next slice of a watermark's work) if there is any; it
// reports whether there was.
func (l *Local) Continue() (bool, error) {
	select {
	case <-l.task.Woken():
		return true, l.task.Drain()
	default:
		return false, nil
	}
}

// AwaitWork waits up to timeout for an async completion and runs what is
// queued; it reports whether anything arrived.
func (l *Local) AwaitWork(timeout time.Duration) (bool, error) {
	select {
	case <-l.task.Woken():
		return true, l.task.Drain()
	case <-time.After(timeout):
		return false, nil
	}
}

// Checkpoint flushes state and commits pending outputs, as a committed
// Kafka transaction would.
func (l *Local) Checkpoint() error {
	if err := l.task.Checkpoint(func(m state.Mutation) error {
		l.logLen[m.Log]++
		if !l.opts.DiscardChangelog {
			l.logs[m.Log] = append(l.logs[m.Log], m)
		}
		return nil
	}); err != nil {
		return err
	}
	offsets := make(map[string]int64, len(l.logLen))
	for log, n := range l.logLen {
		offsets[log] = n
	}
	if err := l.task.Commit(offsets); err != nil {
		return err
	}
	l.out.mu.Lock()
	l.out.committed = append(l.out.committed, l.out.pending...)
	l.out.dlq = append(l.out.dlq, l.out.dlqPend...)
	l.out.pending, l.out.dlqPend = nil, nil
	l.out.mu.Unlock()
	return nil
}

// Restart simulates a crash and restart: uncommitted outputs and state are
// dropped and the task reopens from its last checkpoint.
func (l *Local) Restart() error {
	l.task.Close()
	l.store.Close()
	l.out.mu.Lock()
	l.out.pending, l.out.dlqPend = nil, nil
	l.out.mu.Unlock()
	return l.open()
}

// Changelog returns the mutations committed to a changelog topic.
func (l *Local) Changelog(topic string) []state.Mutation { return l.logs[topic] }

// Emitted returns every record emitted to topic, committed or pending.
func (l *Local) Emitted(topic string) []OutRecord {
	l.out.mu.Lock()
	defer l.out.mu.Unlock()
	var out []OutRecord
	for _, r := range append(append([]OutRecord(nil), l.out.committed...), l.out.pending...) {
		if r.Topic == topic {
			out = append(out, r)
		}
	}
	return out
}

// Committed returns the records committed to topic.
func (l *Local) Committed(topic string) []OutRecord {
	l.out.mu.Lock()
	defer l.out.mu.Unlock()
	var out []OutRecord
	for _, r := range l.out.committed {
		if r.Topic == topic {
			out = append(out, r)
		}
	}
	return out
}

// DeadLetters returns every dead letter, committed or pending.
func (l *Local) DeadLetters() []DeadLetter {
	l.out.mu.Lock()
	defer l.out.mu.Unlock()
	return append(append([]DeadLetter(nil), l.out.dlq...), l.out.dlqPend...)
}

// Close stops the job.
func (l *Local) Close() error {
	err := l.task.Close()
	if cerr := l.store.Close(); err == nil {
		err = cerr
	}
	return err
}

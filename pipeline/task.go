package pipeline

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/loanflow/loanflow/state"
)

// Output is where a task's sinks, repartitions and dead letters go: a
// Kafka transaction in the Kafka runtime, memory in the local one.
type Output interface {
	Emit(r OutRecord) error
	DeadLetter(d DeadLetter) error
}

// DeadLetter is a record the job could not process.
type DeadLetter struct {
	Job      string
	Operator string
	Err      error
	// Source is the raw record read from a topic whose processing failed.
	// It is nil when the failure was not part of processing the record
	// being fed (timers, async completions, anything set off by a
	// watermark); it is only valid during Output.DeadLetter.
	Source *RawRecord
	// Value, Key and Timestamp describe the failed input when there is no
	// source record: its encoding (an async call's input by its InCodec, a
	// window's contents by its codec), its record key and its event time
	// (ms). All may be empty.
	Value     []byte
	Key       []byte
	Timestamp int64
}

// TaskConfig configures one task: one partition index of one
// subtopology (or of the whole job in the local runtime).
type TaskConfig struct {
	Plan *Plan
	// Subtopology is the index of the subtopology in Plan, or -1 to run the
	// whole job fused in one task (local runtime).
	Subtopology int
	Partition   int32
	Store       *state.Store
	Output      Output
	// Now is the processing-time clock. Default time.Now.
	Now     func() time.Time
	Metrics *Metrics
	Logger  *slog.Logger
	// Partitions gives the partition count of a topic the task writes to
	// by key (repartition topics).
	Partitions func(topic string) int32
	// Backlog tells whether a source partition holds records the task has
	// not read yet; a partition with a backlog (or of unknown backlog) is
	// never marked idle. Nil: every partition is caught up (the local
	// runtime, where records arrive by Push).
	Backlog func(topic string, partition int32) Backlog
	// FireSlice bounds the work one watermark releases in one go (the
	// temporal join: waiting probes' keys answered per slice); the rest
	// runs in later slices on the task goroutine, after a wake-up, so a
	// checkpoint's barrier passes between slices and a transaction does not
	// have to hold a whole backlog's answers. 0: unbounded (the local
	// runtime, which has no transactions).
	FireSlice int
	// MaxWaitingRecords bounds the records that may wait for room in the
	// task's operators (async operators at capacity, Context.SetWaiting)
	// when an in-process driver feeds it (Input.Push, Local.Feed,
	// Local.FeedRaw): at the bound, feeding blocks and runs the operators'
	// completions until one fewer waits. Default DefaultMaxWaitingRecords.
	// Task.FeedRaw (the Kafka runtime) never blocks: its driver pauses the
	// task's input while the task is Backpressured, and its own queue
	// bounds what still arrives meanwhile.
	MaxWaitingRecords int
}

// DefaultMaxWaitingRecords is TaskConfig.MaxWaitingRecords' default, the
// Kafka runtime's default input queue (QueueRecords): about as many
// records as can still reach a task's operators there once its input is
// paused.
const DefaultMaxWaitingRecords = 16384

// Task is one instance of a job's operator chain. A runtime driver owns it
// and calls it from one goroutine only.
type Task struct {
	plan      *Plan
	sub       *Subtopology
	partition int32
	store     *state.Store
	out       Output
	now       func() time.Time
	log       *slog.Logger
	metrics   *Metrics
	parts     func(string) int32
	backlog   func(string, int32) Backlog

	instances     []instance
	contexts      []*Context
	sources       map[string]sourceInstance // by topic, or by name when local
	sourceList    []sourceInstance
	snapshotters  []Snapshotter
	drainers      []Drainer
	procTimerCtxs []*Context
	notify        chan struct{}
	fireSlice     int
	// waiting: records waiting for room in the task's operators (the sum
	// of their Context.SetWaiting); maxWaiting: the bound feeding by an
	// in-process driver keeps it under (see admit).
	waiting    int64
	maxWaiting int64

	current   *RawRecord
	restoring bool
	closed    bool
	// censusOps are the operators whose live-state gauges were set.
	censusOps map[string]bool
}

// NewTask instantiates and opens the operators of one task.
func NewTask(cfg TaskConfig) (*Task, error) {
	if cfg.Plan == nil || cfg.Store == nil || cfg.Output == nil {
		return nil, errors.New("pipeline: TaskConfig needs Plan, Store and Output")
	}
	t := &Task{
		plan: cfg.Plan, partition: cfg.Partition, store: cfg.Store, out: cfg.Output,
		now: cfg.Now, log: cfg.Logger, metrics: cfg.Metrics, parts: cfg.Partitions, backlog: cfg.Backlog,
		fireSlice: cfg.FireSlice, sources: make(map[string]sourceInstance), notify: make(chan struct{}, 1),
		maxWaiting: int64(cfg.MaxWaitingRecords),
	}
	if t.maxWaiting <= 0 {
		t.maxWaiting = DefaultMaxWaitingRecords
	}
	if t.now == nil {
		t.now = time.Now
	}
	if t.log == nil {
		t.log = slog.Default()
	}
	t.log = t.log.With("job", cfg.Plan.Job, "partition", cfg.Partition)
	var roots []*node
	if cfg.Subtopology >= 0 {
		if cfg.Subtopology >= len(cfg.Plan.Subtopologies) {
			return nil, fmt.Errorf("pipeline: job %s has no subtopology %d", cfg.Plan.Job, cfg.Subtopology)
		}
		t.sub = cfg.Plan.Subtopologies[cfg.Subtopology]
		roots = t.sub.roots
	} else {
		roots = cfg.Plan.localRoots()
	}
	tb := &taskBuild{t: t, inst: make(map[int]instance)}
	for _, n := range roots {
		inst, err := tb.instance(n)
		if err != nil {
			t.Close()
			return nil, err
		}
		src := inst.(sourceInstance)
		t.sourceList = append(t.sourceList, src)
		t.sources[src.routeKey()] = src
	}
	for _, src := range t.sourceList {
		if err := src.start(); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// taskBuild instantiates a task's nodes, each once.
type taskBuild struct {
	t    *Task
	inst map[int]instance
}

func (tb *taskBuild) fused() bool { return tb.t.sub == nil }

// instance returns n's instance in this task, creating it (and,
// recursively, its consumers) on first use.
func (tb *taskBuild) instance(n *node) (instance, error) {
	if inst, ok := tb.inst[n.id]; ok {
		return inst, nil
	}
	inst, err := n.make(tb)
	if err != nil {
		return nil, err
	}
	tb.inst[n.id] = inst
	tb.t.instances = append(tb.t.instances, inst)
	return inst, nil
}

func (tb *taskBuild) newContext(n *node) (*Context, error) {
	c := &Context{task: tb.t, node: n, m: &opMetrics{}, wm: MinTime}
	for tag, d := range n.sides {
		if d.dropped && !d.used {
			c.sides = setSide(c.sides, tag, nil)
			continue
		}
		col, err := d.port.(anyPort).buildAny(tb)
		if err != nil {
			return nil, err
		}
		c.sides = setSide(c.sides, tag, col)
	}
	tb.t.contexts = append(tb.t.contexts, c)
	return c, nil
}

func setSide(m map[string]any, tag string, c any) map[string]any {
	if m == nil {
		m = make(map[string]any)
	}
	m[tag] = c
	return m
}

// Partition is the task's partition index.
func (t *Task) Partition() int32 { return t.partition }

// Store is the task's state.
func (t *Task) Store() *state.Store { return t.store }

func (t *Task) wake() {
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// Woken fires when an operator has work from another goroutine; the
// driver then calls Drain.
func (t *Task) Woken() <-chan struct{} { return t.notify }

// Drain runs work queued by other goroutines (async completions).
func (t *Task) Drain() error {
	for _, d := range t.drainers {
		if err := d.Drain(); err != nil {
			return err
		}
	}
	return nil
}

// InFlight is the number of async calls in flight in the task.
func (t *Task) InFlight() int {
	n := 0
	for _, c := range t.contexts {
		n += int(c.m.inFlight)
	}
	return n
}

// Backpressured reports whether an operator of the task holds records
// waiting for room (Context.SetWaiting): the driver should stop feeding it
// until it is not, and keep checkpointing meanwhile.
func (t *Task) Backpressured() bool { return t.waiting > 0 }

// Waiting is the number of records waiting for room in the task's
// operators (Context.SetWaiting).
func (t *Task) Waiting() int { return int(t.waiting) }

// admit runs before an in-process driver (Input.Push, Local.FeedRaw)
// feeds a record: while MaxWaitingRecords records or more wait for room
// in the task's operators, it waits for a wake-up and runs the completions
// (Drain), which start the calls of waiting records. That driver has no
// transaction to keep short and no input to pause, so it waits, as the
// Kafka runtime's paused fetches do; without it, records fed faster than
// calls complete would pile up in the operator without bound, and nothing
// would run the completions between two records. Only an operator that
// reports waiting records (Context.SetWaiting) wakes the task when room
// comes, so the wait ends.
func (t *Task) admit() error {
	for t.waiting >= t.maxWaiting {
		<-t.notify
		if err := t.Drain(); err != nil {
			return err
		}
	}
	return nil
}

// FeedRaw decodes a record read from a topic and runs it through the
// chain. Undecodable records go to the dead-letter topic.
func (t *Task) FeedRaw(raw *RawRecord) error {
	src, ok := t.sources[raw.Topic]
	if !ok {
		return fmt.Errorf("pipeline: task %d of job %s does not read topic %q", t.partition, t.plan.Job, raw.Topic)
	}
	t.current = raw
	err := src.feedRaw(raw)
	t.current = nil
	return err
}

// SetRestoring switches replay mode on or off: while on, records fed
// rebuild source-backed state and emit nothing, dead letters included (the
// first run wrote them).
func (t *Task) SetRestoring(on bool) { t.restoring = on }

// deadLetter writes a dead letter for the input in, or for the record
// being fed when in is nil. Callers skip it while restoring.
func (t *Task) deadLetter(op string, err error, in *Record[[]byte]) error {
	d := DeadLetter{Job: t.plan.Job, Operator: op, Err: err}
	if in == nil {
		d.Source = t.current
	} else {
		d.Value, d.Timestamp = in.Value, in.Time
		if in.Key != "" {
			d.Key = []byte(in.Key)
		}
	}
	if t.metrics != nil {
		t.metrics.deadLetters.WithLabelValues(t.plan.Job, op).Inc()
	}
	return t.out.DeadLetter(d)
}

// Tick advances processing time: processing-time timers fire and quiet
// source partitions are marked idle.
func (t *Task) Tick() error {
	now := t.now().UnixMilli()
	for _, c := range t.procTimerCtxs {
		if c.th == nil {
			continue
		}
		if err := fireTimers(c.procTimers, now, ProcessingTime, c.th); err != nil {
			return err
		}
	}
	for _, s := range t.sourceList {
		if err := s.tick(now); err != nil {
			return err
		}
	}
	return nil
}

// Checkpoint snapshots operator memory into state and flushes the state:
// emit receives every changelog mutation. The task must not process
// records until Commit or Close.
func (t *Task) Checkpoint(emit func(state.Mutation) error) error {
	for _, s := range t.snapshotters {
		if err := s.Snapshot(); err != nil {
			return err
		}
	}
	for _, s := range t.sourceList {
		if err := s.snapshot(); err != nil {
			return err
		}
	}
	return t.store.Flush(emit)
}

// Commit applies the checkpoint to local state once the driver made it
// durable, recording the log offsets it reflects.
func (t *Task) Commit(offsets map[string]int64) error {
	return t.store.Commit(offsets)
}

// CommitLocal commits state rebuilt by replaying a source topic (see
// SetRestoring) without a changelog: only source-backed state may have
// changed, so nothing goes to Kafka.
func (t *Task) CommitLocal(offsets map[string]int64) error {
	err := t.store.Flush(func(m state.Mutation) error {
		return fmt.Errorf("pipeline: replay of job %s changed logged state (%s)", t.plan.Job, m.Log)
	})
	if err != nil {
		t.store.Abort()
		return err
	}
	return t.store.Commit(offsets)
}

// NeedsCheckpoint reports whether dirty state fills the write cache: the
// runtime should checkpoint now rather than let memory grow (ExpireState's
// deletions count too).
func (t *Task) NeedsCheckpoint() bool { return t.store.NeedsFlush() }

// ExpireState runs the background TTL sweep of the task's state for up to
// budget committed entries (state.Store.Sweep; 0 means
// state.DefaultSweepBudget): entries whose TTL passed become deletions
// that the next checkpoint writes to Pebble and, as tombstones, to the
// changelog; each completed pass gives PublishMetrics new live-state
// figures. The runtime calls it on the task goroutine between batches (on
// its tick), never between Checkpoint and Commit; it does nothing while
// restoring.
func (t *Task) ExpireState(budget int) (state.SweepResult, error) {
	if t.restoring || t.closed {
		return state.SweepResult{}, nil
	}
	res, err := t.store.Sweep(budget)
	if err != nil {
		return res, fmt.Errorf("expiring state of job %s partition %d: %w", t.plan.Job, t.partition, err)
	}
	return res, nil
}

// Close closes every operator; uncommitted state is dropped. The store
// stays open: its owner closes it.
func (t *Task) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for i := len(t.instances) - 1; i >= 0; i-- {
		if err := t.instances[i].close(); err != nil {
			errs = append(errs, err)
		}
	}
	t.store.Abort()
	return errors.Join(errs...)
}

package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// maxTaskFailures is how many times in a row a task may fail (and be
// restored from its last checkpoint) before Run gives up.
const maxTaskFailures = 3

// Worker runs a job's tasks in this process. See the package doc.
type Worker struct {
	cfg     Config
	plan    *pipeline.Plan
	log     *slog.Logger
	metrics *pipeline.Metrics

	adm   *kadm.Client
	admCl *kgo.Client
	rcl   *kgo.Client
	sess  session
	// pctx bounds produce calls; cancelled by teardown.
	pctx    context.Context
	pcancel context.CancelFunc

	parts    map[string]int32
	topicSub map[string]int
	repSet   map[string]bool // the repartition topics
	// committedWrites is, per repartition partition, the offset after the
	// last record this worker wrote there in a committed checkpoint.
	committedWrites map[string]map[int32]int64
	inputs          []string
	tasks           map[taskID]*taskRunner

	mu         sync.Mutex
	assignment map[string]map[int32]bool
	rebalanced bool
	failures   map[taskID]int
	lastErr    map[taskID]error

	blocked          atomic.Bool
	ending           atomic.Bool // a transaction is ending (endTxn)
	needsCP          atomic.Bool
	produced         atomic.Int64 // records produced in the open transaction
	producedTotal    atomic.Int64 // records produced since the start
	hangingAborted   atomic.Int64 // hanging transactions this worker closed (hanging.go)
	hangingCommitted atomic.Int64
	hangMu           sync.Mutex
	hangNoted        map[string]time.Time // partition → when its wait was last logged
	ownTxnID         string               // this worker's transactional id
	ownTxnLog        []txnLogRecord       // its coordinator records, read before InitProducerId
	lastPurge        time.Time
	topicIDs         map[string][16]byte  // input topics, refreshed at each rebalance
	ends             atomic.Pointer[ends] // the inputs' offsets, listed every endsRefresh
	checkpoints      atomic.Int64
	lastCP           atomic.Int64 // unix ms of the last committed checkpoint
	logBytes         atomic.Int64 // changelog bytes staged in the open checkpoint
	stopReq          chan stopRequest
	leaving          bool // stopped gracefully: leave the group on teardown
	stopAsked        atomic.Bool
	summary          summaryState // owned by Run's goroutine
	ready            chan struct{}
	readyOnce        sync.Once
	// paused: the tasks whose input partitions are paused because an
	// operator of theirs is full (Task.Backpressured); owned by Run's
	// goroutine. pollWake cuts a poll short when one of them has room.
	paused   map[taskID]bool
	pollWake chan struct{}
}

// NewWorker prepares a worker for the job built in b. Nothing connects
// until Run.
func NewWorker(b *pipeline.Builder, cfg Config) (*Worker, error) {
	plan, err := b.Plan()
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults(plan.Job)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w := &Worker{
		cfg: cfg, plan: plan, log: cfg.Logger.With("job", plan.Job, "worker", cfg.WorkerID),
		topicSub: make(map[string]int), tasks: make(map[taskID]*taskRunner),
		assignment: make(map[string]map[int32]bool), failures: make(map[taskID]int), lastErr: make(map[taskID]error),
		stopReq: make(chan stopRequest), ready: make(chan struct{}),
		paused: make(map[taskID]bool), pollWake: make(chan struct{}, 1),
	}
	w.metrics = pipeline.NewMetrics(cfg.Registerer)
	for _, reason := range []string{"commit", "aborted", "task-failed"} {
		w.metrics.CheckpointFailures.WithLabelValues(plan.Job, reason) // at 0 from the start
	}
	w.repSet, w.committedWrites = make(map[string]bool), make(map[string]map[int32]int64)
	for _, s := range plan.Subtopologies {
		for _, in := range s.Inputs {
			w.topicSub[in.Topic] = s.ID
			w.inputs = append(w.inputs, in.Topic)
			if in.Repartition {
				w.repSet[in.Topic] = true
			}
		}
	}
	sort.Strings(w.inputs)
	return w, nil
}

// Plan is the job's plan (partition counts are known once Run started).
func (w *Worker) Plan() *pipeline.Plan { return w.plan }

// Ready is closed once the worker has joined its group and restored its
// first tasks.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Checkpoints is the number of committed checkpoints.
func (w *Worker) Checkpoints() int64 { return w.checkpoints.Load() }

// LastCheckpoint is when the last checkpoint committed (zero before any).
func (w *Worker) LastCheckpoint() time.Time {
	if ms := w.lastCP.Load(); ms > 0 {
		return time.UnixMilli(ms)
	}
	return time.Time{}
}

// ID is the worker's id.
func (w *Worker) ID() string { return w.cfg.WorkerID }

// Tasks lists the tasks this worker runs, as "<subtopology>_<partition>".
func (w *Worker) Tasks() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.tasks))
	for id := range w.tasks {
		out = append(out, id.String())
	}
	sort.Strings(out)
	return out
}

func (w *Worker) clientOpts(extra ...kgo.Opt) []kgo.Opt {
	opts := []kgo.Opt{kgo.SeedBrokers(w.cfg.Brokers...), kgo.ClientID(ClientID(w.cfg.JobID, w.cfg.AdminAddr))}
	opts = append(opts, w.cfg.ClientOpts...)
	return append(opts, extra...)
}

// setup creates the topics and the clients.
func (w *Worker) setup(ctx context.Context) error {
	var err error
	if w.admCl, err = kgo.NewClient(w.clientOpts()...); err != nil {
		return fmt.Errorf("creating admin client: %w", err)
	}
	w.adm = kadm.NewClient(w.admCl)
	if w.parts, err = ensureTopics(ctx, w.adm, w.plan, w.cfg); err != nil {
		return err
	}
	w.rcl, err = kgo.NewClient(w.clientOpts(kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords(),
		kgo.FetchMaxWait(200*time.Millisecond))...)
	if err != nil {
		return fmt.Errorf("creating restore client: %w", err)
	}
	if w.cfg.FromSavepoint != "" {
		if err := w.restoreSavepoint(ctx, w.cfg.FromSavepoint); err != nil {
			return err
		}
	}
	subscribed := make(map[string]int32, len(w.inputs))
	for _, t := range w.inputs {
		subscribed[t] = w.partitions(t)
	}
	if err := awaitTopicsVisible(ctx, w.admCl, subscribed); err != nil {
		return err
	}
	opts := w.clientOpts(
		kgo.ConsumerGroup(Group(w.cfg.JobID)),
		// Static membership: a restarted worker takes its place back at
		// once, without a rebalance, and fences its previous incarnation.
		kgo.InstanceID(w.cfg.WorkerID),
		kgo.ConsumeTopics(w.inputs...),
		kgo.Balancers(kgo.RangeBalancer()),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(w.onAssigned),
		kgo.OnPartitionsRevoked(w.onRevoked),
		kgo.OnPartitionsLost(w.onLost),
		kgo.OnPartitionsCallbackBlocked(w.onBlocked),
		kgo.SessionTimeout(w.cfg.SessionTimeout),
		kgo.HeartbeatInterval(w.cfg.SessionTimeout/3),
		kgo.RebalanceTimeout(w.cfg.RebalanceTimeout),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Transaction markers come through (tasks skip them), so the
		// consumer's position passes them: committed offsets leave no lag
		// of 1 behind a marker, and a position equal to the last stable
		// offset means caught up (backlog-aware idleness).
		kgo.KeepControlRecords(),
		kgo.DisableAutoCommit(),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if w.cfg.Delivery == ExactlyOnce {
		opts = append(opts,
			kgo.TransactionalID(Group(w.cfg.JobID)+"-"+w.cfg.WorkerID),
			kgo.TransactionTimeout(w.cfg.TransactionTimeout),
			kgo.RequireStableFetchOffsets())
		s, err := kgo.NewGroupTransactSession(opts...)
		if err != nil {
			return fmt.Errorf("creating transactional session: %w", err)
		}
		w.sess = eosSession{s}
		// Initialising the producer fences this worker's previous
		// incarnation and aborts the transaction it left open, before any
		// task restores: otherwise a restart waits for that transaction to
		// time out on every changelog it wrote to (with Apache Kafka after
		// a broker restart, longer than the restore would wait).
		// The coordinator's log as it stands before this incarnation
		// ends the last one's transaction: its latest record says how
		// that transaction ended even once the log compacts the rest
		// away (hanging.go).
		txnID := Group(w.cfg.JobID) + "-" + w.cfg.WorkerID
		if !w.cfg.KeepHangingTransactions {
			if w.ownTxnLog, err = w.readTxnLog(ctx, txnID); err != nil {
				w.log.Warn("cannot read the transaction coordinator's log: hanging transactions of an earlier incarnation will be left to an operator", "err", err)
			}
			w.ownTxnID = txnID
		}
		pid, epoch, err := s.Client().ProducerID(ctx)
		if err != nil {
			return fmt.Errorf("initialising the transactional producer %s: %w", Group(w.cfg.JobID)+"-"+w.cfg.WorkerID, err)
		}
		if !w.cfg.KeepHangingTransactions {
			w.closeOwnHanging(ctx, txnID, pid, epoch, w.writtenTopics(), Group(w.cfg.JobID))
		}
	} else {
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			return fmt.Errorf("creating consumer: %w", err)
		}
		w.sess = &alosSession{cl: cl}
	}
	return nil
}

// writtenTopics lists the topics the job writes: changelogs, repartition
// topics, sinks and its dead-letter topic.
func (w *Worker) writtenTopics() []string {
	seen := map[string]bool{}
	var out []string
	add := func(t string) {
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	for _, s := range w.plan.Subtopologies {
		for _, in := range s.Inputs {
			if in.Repartition {
				add(in.Topic)
			}
		}
		for _, c := range s.Changelogs {
			add(c)
		}
		for _, o := range s.Outputs {
			add(o)
		}
	}
	add(pipeline.DeadLetterTopic(w.plan.Job))
	sort.Strings(out)
	return out
}

func (w *Worker) partitions(topic string) int32 {
	if n := w.parts[topic]; n > 0 {
		return n
	}
	return 1
}

func (w *Worker) produce(r *kgo.Record, promise func(*kgo.Record, error)) error {
	w.produced.Add(1)
	w.producedTotal.Add(1)
	w.sess.Client().Produce(w.pctx, r, promise)
	return nil
}

// Group callbacks: they only record the new assignment; the polling
// goroutine acts on it between checkpoints.
func (w *Worker) onAssigned(_ context.Context, _ *kgo.Client, ps map[string][]int32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for t, parts := range ps {
		if w.assignment[t] == nil {
			w.assignment[t] = make(map[int32]bool)
		}
		for _, p := range parts {
			w.assignment[t][p] = true
		}
	}
	w.rebalanced = true
}

func (w *Worker) onRevoked(_ context.Context, _ *kgo.Client, ps map[string][]int32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for t, parts := range ps {
		for _, p := range parts {
			delete(w.assignment[t], p)
		}
	}
	w.rebalanced = true
}

func (w *Worker) onLost(ctx context.Context, cl *kgo.Client, ps map[string][]int32) {
	w.log.Warn("partitions lost: the group expelled this worker; its open transaction will not commit", "partitions", ps)
	w.onRevoked(ctx, cl, ps)
}

func (w *Worker) takeRebalance() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.rebalanced
	w.rebalanced = false
	return r
}

// assignedTasks derives whole tasks from the assigned partitions. A
// partition assigned without its co-partitioned topics' (one topic grew
// partitions while the job ran) cannot make a task: that is an error, as
// it is at start, rather than records consumed by no task and committed
// past.
func (w *Worker) assignedTasks() ([]taskID, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []taskID
	for _, s := range w.plan.Subtopologies {
		var have, missing []string
		for p := int32(0); p < s.Partitions; p++ {
			have, missing = have[:0], missing[:0]
			for _, in := range s.Inputs {
				if w.assignment[in.Topic][p] {
					have = append(have, in.Topic)
				} else {
					missing = append(missing, in.Topic)
				}
			}
			switch {
			case len(missing) == 0:
				out = append(out, taskID{s.ID, p})
			case len(have) > 0:
				return nil, fmt.Errorf("kafka: partition %d of %v was assigned without the same partition of %v: co-partitioned topics must keep equal partition counts (did one grow?)", p, have, missing)
			}
		}
		for t, ps := range w.assignment {
			if w.topicSub[t] != s.ID {
				continue
			}
			for p := range ps {
				if p >= s.Partitions {
					return nil, fmt.Errorf("kafka: partition %d of %s was assigned, but the job was planned with %d partitions per task set: co-partitioned topics must keep equal partition counts; restart the job to re-plan", p, t, s.Partitions)
				}
			}
		}
	}
	return out, nil
}

func (w *Worker) taskFailed(id taskID, err error) {
	w.log.Error("task failed; it restarts from its last checkpoint", "task", id, "err", err)
	w.mu.Lock()
	w.lastErr[id] = err
	w.mu.Unlock()
	w.needsCP.Store(true)
}

// Run runs the worker until ctx is cancelled (a graceful stop: a final
// checkpoint, then leaving the group) or a fatal error.
func (w *Worker) Run(ctx context.Context) error {
	w.pctx, w.pcancel = context.WithCancel(context.Background())
	if err := w.setup(ctx); err != nil {
		w.teardown()
		return err
	}
	defer w.teardown()
	ectx, stopEnds := context.WithCancel(context.Background())
	endsDone := make(chan struct{})
	go func() {
		defer close(endsDone)
		w.refreshEnds(ectx)
	}()
	defer func() {
		stopEnds()
		<-endsDone
	}()
	if err := w.sess.Begin(); err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	nextCommit := time.Now().Add(w.cfg.CommitInterval)
	for {
		select {
		case req := <-w.stopReq:
			if !req.keepRunning {
				w.stopAsked.Store(true)
				return w.stop(req)
			}
			if err := w.savepointRunning(ctx, req); err != nil {
				return err
			}
			nextCommit = time.Now().Add(w.cfg.CommitInterval)
			continue
		default:
		}
		if ctx.Err() != nil {
			return w.stop(stopRequest{})
		}
		wait := time.Until(nextCommit)
		if wait > w.cfg.TickInterval {
			wait = w.cfg.TickInterval
		}
		if m := w.cfg.MinCommitInterval; m > 0 && len(w.paused) == 0 && (w.produced.Load() > 0 || w.anyQueued()) {
			// Output may be ready to commit early (idleCommitDue): poll
			// only until MinCommitInterval after the last checkpoint (at
			// least a millisecond), so a decision at rest waits for one
			// short empty poll, not for a whole MinCommitInterval. (Not
			// while a task is paused: no early commit then, and a task
			// that gets room wakes the poll.)
			if early := time.Until(nextCommit.Add(m - w.cfg.CommitInterval)); early < wait {
				wait = early
			}
		}
		if wait < time.Millisecond {
			wait = time.Millisecond
		}
		w.applyBackpressure()
		pctx, cancel := context.WithTimeout(ctx, wait)
		if len(w.paused) > 0 {
			// A paused task that gets room resumes its input at once, not
			// at the end of this poll.
			go func() {
				select {
				case <-w.pollWake:
					cancel()
				case <-pctx.Done():
				}
			}()
		}
		fs := w.sess.PollFetches(pctx)
		cancel()
		if err := fetchError(fs); err != nil {
			return err
		}
		if w.takeRebalance() {
			if err := graceful(ctx, w.rebalance); err != nil {
				return err
			}
			nextCommit = time.Now().Add(w.cfg.CommitInterval)
			w.blocked.Store(false)
			w.sess.AllowRebalance()
			continue
		}
		w.dispatch(fs)
		w.maybeSummarize()
		if time.Now().After(nextCommit) || w.blocked.Load() || w.needsCP.Load() || w.idleCommitDue(nextCommit, fs.NumRecords()) {
			err := graceful(ctx, w.checkpoint)
			if err != nil {
				return err
			}
			nextCommit = time.Now().Add(w.cfg.CommitInterval)
			w.blocked.Store(false)
			w.sess.AllowRebalance()
		}
	}
}

// idleCommitDue reports whether an early checkpoint is due
// (Config.MinCommitInterval): output produced since the last checkpoint,
// input run dry (the last poll fetched nothing, no task has records
// queued, none is paused by a full operator: under load the checkpoints
// keep their interval's batching), and MinCommitInterval passed since the
// last checkpoint (nextCommit is CommitInterval after it).
func (w *Worker) idleCommitDue(nextCommit time.Time, fetched int) bool {
	m := w.cfg.MinCommitInterval
	if m <= 0 || fetched > 0 || w.produced.Load() == 0 || len(w.paused) > 0 || time.Until(nextCommit) > w.cfg.CommitInterval-m {
		return false
	}
	// Sparse output only: more than a record per MinCommitInterval since
	// the last checkpoint is load, which keeps the interval's batching (an
	// empty poll of a millisecond is no sign that the input ran dry; the
	// input is no measure either, since CDC heartbeats arrive at rest).
	if since := w.cfg.CommitInterval - time.Until(nextCommit); time.Duration(w.produced.Load())*m > since {
		return false
	}
	return !w.anyQueued()
}

// anyQueued reports whether a task has records queued or is full.
func (w *Worker) anyQueued() bool {
	for _, tr := range w.tasks {
		if tr.queued.Load() > 0 || tr.full.Load() {
			return true
		}
	}
	return false
}

// applyBackpressure pauses fetching the input partitions of every task
// with an operator full (an async operator at capacity: its records wait in
// the operator, see pipeline.Context.SetWaiting) and resumes them when it
// has room; paused partitions of tasks no longer here are resumed. The
// loop goes on checkpointing meanwhile: backpressure never holds a
// transaction open. Records already queued to a paused task are still fed
// to it (about QueueRecords records wait in its operator).
func (w *Worker) applyBackpressure() {
	var pause, resume map[string][]int32
	add := func(m *map[string][]int32, id taskID) {
		if *m == nil {
			*m = make(map[string][]int32)
		}
		for topic, sub := range w.topicSub {
			if sub == id.sub {
				(*m)[topic] = append((*m)[topic], id.part)
			}
		}
	}
	for id, tr := range w.tasks {
		full := tr.full.Load()
		switch {
		case full && !w.paused[id]:
			w.paused[id] = true
			add(&pause, id)
		case !full && w.paused[id]:
			delete(w.paused, id)
			add(&resume, id)
		}
	}
	for id := range w.paused {
		if w.tasks[id] == nil {
			delete(w.paused, id)
			add(&resume, id)
		}
	}
	if pause != nil {
		w.sess.Client().PauseFetchPartitions(pause)
	}
	if resume != nil {
		w.sess.Client().ResumeFetchPartitions(resume)
	}
	select {
	case <-w.pollWake: // a wake-up from before this look at the tasks
	default:
	}
	for id := range w.paused {
		if !w.tasks[id].full.Load() {
			w.wakePoll() // it got room meanwhile
		}
	}
}

// wakePoll cuts short the poll in progress (a paused task has room).
func (w *Worker) wakePoll() {
	select {
	case w.pollWake <- struct{}{}:
	default:
	}
}

// fetchError returns a fetch error that ends the worker; timeouts of our
// own poll deadline and transient errors are not.
func fetchError(fs kgo.Fetches) error {
	for _, fe := range fs.Errors() {
		switch {
		case errors.Is(fe.Err, context.DeadlineExceeded), errors.Is(fe.Err, context.Canceled):
		case errors.Is(fe.Err, kgo.ErrClientClosed):
			return fe.Err
		}
	}
	return nil
}

// queueChunks is the capacity of a task's input queue, in chunks of
// QueueRecords/queueChunks records.
const queueChunks = 16

func chunkOf(queueRecords int) int { return max(queueRecords/queueChunks, 1) }

// dispatch hands fetched records to their tasks, blocking on a full queue
// (backpressure: polling stops until the task catches up).
func (w *Worker) dispatch(fs kgo.Fetches) {
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		if len(p.Records) == 0 {
			return
		}
		id := taskID{w.topicSub[p.Topic], p.Partition}
		tr := w.tasks[id]
		if tr == nil {
			w.log.Warn("records for a task this worker does not run", "topic", p.Topic, "partition", p.Partition)
			return
		}
		next := p.Records[len(p.Records)-1].Offset + 1
		lag := max(p.LastStableOffset-next, 0)
		w.metrics.ConsumerLag.WithLabelValues(w.plan.Job, p.Topic, strconv.Itoa(int(p.Partition))).Set(float64(lag))
		w.summary.observe(p.Topic, p.Partition, len(p.Records), lag, tr.queued.Load() >= int64(w.cfg.QueueRecords-chunkOf(w.cfg.QueueRecords)))
		// Chunks of at most QueueRecords/queueChunks records: the queue
		// holds at most QueueRecords records, whatever the batch size.
		pos := tr.positions[p.Topic]
		chunk := chunkOf(w.cfg.QueueRecords)
		for recs := p.Records; len(recs) > 0; {
			n := min(chunk, len(recs))
			if pos != nil {
				pos.handed.Store(recs[n-1].Offset + 1)
			}
			tr.queued.Add(int64(n))
			tr.in <- taskMsg{kind: msgBatch, recs: recs[:n:n]}
			recs = recs[n:]
		}
		w.metrics.QueueFill.WithLabelValues(w.plan.Job, strconv.Itoa(id.sub), strconv.Itoa(int(id.part))).Set(float64(tr.queued.Load()) / float64(w.cfg.QueueRecords))
	})
}

// stopGrace is how long a checkpoint or rebalance in progress when a stop
// is requested may still take before it is cancelled.
const stopGrace = 30 * time.Second

// graceful runs fn, a checkpoint or a rebalance of the running worker, with
// a context that a stop (ctx cancelled) does not cancel at once: fn gets
// stopGrace to finish, and the stop then takes the final checkpoint.
// Cancelling it at once would fail the worker instead of stopping it.
func graceful(ctx context.Context, fn func(context.Context) error) error {
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var mu sync.Mutex
	var timer *time.Timer
	done := false
	stopWatch := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			timer = time.AfterFunc(stopGrace, cancel)
		}
	})
	defer func() {
		stopWatch()
		mu.Lock()
		done = true
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
	}()
	return fn(cctx)
}

// checkpoint runs the checkpoint protocol: every task stages its state,
// the transaction commits (or aborts), and the tasks apply the outcome.
func (w *Worker) checkpoint(ctx context.Context) error {
	start := time.Now()
	w.needsCP.Store(false)
	type pending struct {
		tr     *taskRunner
		reply  chan error
		resume chan outcome
	}
	var ps []pending
	for _, tr := range w.tasks {
		p := pending{tr: tr, reply: make(chan error, 1), resume: make(chan outcome, 1)}
		tr.in <- taskMsg{kind: msgBarrier, reply: p.reply, resume: p.resume}
		ps = append(ps, p)
	}
	var failed []taskID
	for _, p := range ps {
		if err := <-p.reply; err != nil {
			failed = append(failed, p.tr.id)
			w.mu.Lock()
			if w.lastErr[p.tr.id] == nil {
				w.lastErr[p.tr.id] = err
			}
			w.mu.Unlock()
		}
	}
	produced := w.produced.Load()
	barriersAt := time.Now()
	// Every record of the checkpoint is acknowledged (or failed) before
	// anything commits: a record the broker refused fails its task, which
	// restarts from its last checkpoint, instead of being committed past
	// (in at-least-once mode that loss was silent).
	if err := w.sess.Client().Flush(ctx); err != nil {
		for _, p := range ps {
			p.resume <- outcome{} // not committed: the tasks wait to be reopened
		}
		return fmt.Errorf("flushing the checkpoint's records: %w", err)
	}
	for _, p := range ps {
		if perr := p.tr.producedErr(); perr != nil {
			if !slices.Contains(failed, p.tr.id) {
				failed = append(failed, p.tr.id)
			}
			w.mu.Lock()
			if w.lastErr[p.tr.id] == nil {
				w.lastErr[p.tr.id] = fmt.Errorf("producing: %w", perr)
			}
			w.mu.Unlock()
		}
	}
	flushedAt := time.Now()
	committed, ended, err := w.endTxn(ctx, len(failed) == 0)
	w.log.Debug("checkpoint", "tasks", len(ps), "failed", len(failed), "produced", produced, "committed", committed, "ended", ended, "err", err,
		"barriers", barriersAt.Sub(start).String(), "flush", flushedAt.Sub(barriersAt).String(), "end", time.Since(flushedAt).String())
	var sources map[string]map[int32]kgo.EpochOffset
	if committed {
		sources = w.sess.Client().CommittedOffsets()
	}
	if committed && err == nil {
		// The tasks wait for their outcome: nothing of the next
		// transaction is written yet.
		for _, p := range ps {
			p.tr.mu.Lock()
			for t, parts := range p.tr.repEnd {
				if w.committedWrites[t] == nil {
					w.committedWrites[t] = make(map[int32]int64)
				}
				for part, next := range parts {
					w.committedWrites[t][part] = max(w.committedWrites[t][part], next)
				}
			}
			p.tr.mu.Unlock()
		}
	}
	var berr error
	if ended {
		berr = w.sess.Begin()
	}
	for _, p := range ps {
		oc := outcome{committed: committed && err == nil}
		if oc.committed {
			oc.sources = w.tableOffsets(p.tr.id, sources)
		}
		p.resume <- oc
	}
	if err != nil {
		w.metrics.CheckpointFailures.WithLabelValues(w.plan.Job, "commit").Inc()
		return fmt.Errorf("committing checkpoint: %w", err)
	}
	if berr != nil {
		return fmt.Errorf("beginning transaction: %w", berr)
	}
	if !committed || len(failed) > 0 {
		reason := "aborted"
		if len(failed) > 0 {
			reason = "task-failed"
		}
		var first error
		if len(failed) > 0 {
			w.mu.Lock()
			first = w.lastErr[failed[0]]
			w.mu.Unlock()
		}
		w.log.Warn("checkpoint aborted; tasks restart from the last checkpoint", "reason", reason, "failed_tasks", len(failed), "err", first)
		w.metrics.CheckpointFailures.WithLabelValues(w.plan.Job, reason).Inc()
		return w.reopen(ctx, failed)
	}
	w.checkpoints.Add(1)
	if time.Since(w.lastPurge) >= w.cfg.PurgeInterval {
		w.purgeRepartitions(ctx, sources)
	}
	w.mu.Lock()
	clear(w.failures)
	clear(w.lastErr)
	w.mu.Unlock()
	w.metrics.CheckpointDuration.WithLabelValues(w.plan.Job, w.cfg.WorkerID).Observe(time.Since(start).Seconds())
	w.metrics.LastCheckpoint.WithLabelValues(w.plan.Job, w.cfg.WorkerID).SetToCurrentTime()
	w.metrics.CheckpointBytes.WithLabelValues(w.plan.Job).Observe(float64(w.logBytes.Swap(0)))
	w.lastCP.Store(time.Now().UnixMilli())
	return nil
}

// endTxn ends the open transaction, committing if commit is set. Every
// transaction that commits carries an offset commit checked against the
// group's generation (KIP-447): the offsets it consumed, or, when it only
// produced (async results, timers), the committed offset of one assigned
// partition once more. A worker the group has expelled cannot commit
// anything, whether or not it has noticed: fencing does not depend on how
// long the worker paused or when it heard of a rebalance. An empty
// transaction is left open.
func (w *Worker) endTxn(ctx context.Context, commit bool) (committed, ended bool, err error) {
	produced := w.produced.Swap(0)
	consumed := len(w.sess.Client().UncommittedOffsets()) > 0
	if w.cfg.Delivery == ExactlyOnce && !consumed {
		if produced == 0 {
			return commit, false, nil
		}
		if commit {
			voucher, ok := w.voucher()
			if !ok {
				w.log.Warn("aborting a transaction without consumed offsets: no committed offset to vouch for the group membership")
				commit = false
			} else {
				ctx = kgo.PreTxnCommitFnContext(ctx, func(req *kmsg.TxnOffsetCommitRequest) error {
					if len(req.Topics) == 0 {
						req.Topics = append(req.Topics, voucher)
					}
					return nil
				})
			}
		}
	}
	w.ending.Store(true)
	if w.blocked.Load() {
		w.sess.AllowRebalance()
	}
	committed, err = w.sess.End(ctx, commit)
	w.ending.Store(false)
	return committed, true, err
}

// onBlocked is told (on a goroutine of its own) that a group callback
// waits for the worker to allow rebalancing. Normally the worker
// checkpoints and then allows it. While a transaction ends it allows it at
// once: End waits for a heartbeat to confirm the membership, and when the
// group coordinator has died the heartbeat loop is gone until the pending
// callback runs, so End would wait forever (seen on Apache Kafka when the
// coordinator's broker was killed). The callback marks the session
// revoked or lost and End aborts; a worker the group still counts on
// commits its next checkpoint under the new generation.
func (w *Worker) onBlocked(context.Context, *kgo.Client) {
	w.blocked.Store(true)
	if w.ending.Load() {
		w.sess.AllowRebalance()
	}
}

// voucher is the committed offset of one assigned input partition, to be
// committed again by a transaction that consumed nothing: the broker then
// checks this worker's generation before the transaction may commit.
func (w *Worker) voucher() (kmsg.TxnOffsetCommitRequestTopic, bool) {
	committed := w.sess.Client().CommittedOffsets()
	member, _ := w.sess.Client().GroupMetadata()
	for _, t := range w.inputs {
		ps := committed[t]
		ids := make([]int32, 0, len(ps))
		for p := range ps {
			ids = append(ids, p)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		for _, p := range ids {
			eo := ps[p]
			if eo.Offset < 0 || !w.assigned(t, p) {
				continue
			}
			rt := kmsg.NewTxnOffsetCommitRequestTopic()
			rt.Topic, rt.TopicID = t, w.topicIDs[t]
			rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
			rp.Partition, rp.Offset, rp.LeaderEpoch, rp.Metadata = p, eo.Offset, eo.Epoch, &member
			rt.Partitions = append(rt.Partitions, rp)
			return rt, true
		}
	}
	return kmsg.TxnOffsetCommitRequestTopic{}, false
}

func (w *Worker) assigned(topic string, p int32) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.assignment[topic][p]
}

// purgeRepartitions deletes what every reader of this worker's repartition
// partitions has committed (repartition topics keep records until then;
// brokers would otherwise apply time retention to old event times).
func (w *Worker) purgeRepartitions(ctx context.Context, committed map[string]map[int32]kgo.EpochOffset) {
	w.lastPurge = time.Now()
	os := kadm.Offsets{}
	for _, s := range w.plan.Subtopologies {
		for _, in := range s.Inputs {
			if !in.Repartition {
				continue
			}
			for p, eo := range committed[in.Topic] {
				if _, ok := w.tasks[taskID{s.ID, p}]; ok && eo.Offset > 0 {
					os.AddOffset(in.Topic, p, eo.Offset, -1)
				}
			}
		}
	}
	if len(os) == 0 {
		return
	}
	resp, err := w.adm.DeleteRecords(ctx, os)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		w.log.Warn("purging repartition topics", "err", err)
	}
}

func (w *Worker) tableOffsets(id taskID, committed map[string]map[int32]kgo.EpochOffset) map[string]int64 {
	sub := w.plan.Subtopologies[id.sub]
	if len(sub.TableSources) == 0 {
		return nil
	}
	out := make(map[string]int64, len(sub.TableSources))
	for _, t := range sub.TableSources {
		if eo, ok := committed[t][id.part]; ok {
			out[t] = eo.Offset
		}
	}
	return out
}

// reopen restarts every task from its last checkpoint after an aborted
// one; tasks that keep failing end the worker.
func (w *Worker) reopen(ctx context.Context, failed []taskID) error {
	w.mu.Lock()
	for _, id := range failed {
		w.failures[id]++
		if w.failures[id] >= maxTaskFailures {
			err := w.lastErr[id]
			w.mu.Unlock()
			return fmt.Errorf("task %s failed %d times in a row: %w", id, maxTaskFailures, err)
		}
	}
	w.mu.Unlock()
	w.closeTasks()
	return w.openTasks(ctx)
}

// rebalance closes the tasks (they committed at the last checkpoint), ends
// the empty transaction the rebalance poisoned, and opens the tasks of the
// new assignment. The next transaction begins before the tasks start: a
// task may emit at once (async calls re-issued from its checkpoint), and
// whatever it emits must belong to a transaction.
func (w *Worker) rebalance(ctx context.Context) error {
	w.closeTasks()
	if _, err := w.sess.End(ctx, false); err != nil {
		return fmt.Errorf("ending transaction after rebalance: %w", err)
	}
	if err := w.sess.Begin(); err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	return w.openTasks(ctx)
}

func (w *Worker) closeTasks() {
	for id, tr := range w.tasks {
		tr.in <- taskMsg{kind: msgClose}
		<-tr.done
		w.mu.Lock()
		delete(w.tasks, id)
		w.mu.Unlock()
	}
}

// openTasks opens and restores the tasks of the current assignment.
func (w *Worker) openTasks(ctx context.Context) error {
	ids, err := w.assignedTasks()
	if err != nil {
		return err
	}
	committed, err := w.groupOffsets(ctx)
	if err != nil {
		return err
	}
	if err := w.refreshTopicIDs(ctx); err != nil {
		return err
	}
	for _, id := range ids {
		start := time.Now()
		tr, n, err := w.openTask(ctx, id, committed)
		if err != nil {
			return fmt.Errorf("opening task %s: %w", id, err)
		}
		w.mu.Lock()
		w.tasks[id] = tr
		w.mu.Unlock()
		w.metrics.RestoreDuration.WithLabelValues(w.plan.Job).Observe(time.Since(start).Seconds())
		w.log.Info("task ready", "task", id, "restored_records", n, "took", time.Since(start).Round(time.Millisecond))
	}
	if len(ids) > 0 {
		w.readyOnce.Do(func() { close(w.ready) })
	}
	return nil
}

// groupOffsets returns the group's committed offsets, asked of the
// broker. The client's own view (CommittedOffsets) may not have fetched a
// just-assigned partition's offset yet, and a table source without its
// committed offset would be opened without replaying the topic: the table
// would miss every row before that offset.
func (w *Worker) groupOffsets(ctx context.Context) (map[string]map[int32]kgo.EpochOffset, error) {
	// Stable: a previous owner's pending transactional commit must resolve
	// (commit or time out) before its offsets mean anything, and before
	// the changelogs its transaction wrote are read. Every transaction
	// that commits carries offsets (see endTxn), so once the group's
	// offsets are stable no earlier owner's transaction can still commit.
	// Loading the producer id (InitProducerId) aborts this worker's own
	// transaction left open by its previous incarnation at once; without
	// it, franz-go loads the id only at the first produce, after this wait,
	// and the group stays unstable until that transaction times out (on an
	// Apache node restarted meanwhile, past the deadline below: the
	// worker exited with UNSTABLE_OFFSET_COMMIT).
	if _, _, err := w.sess.Client().ProducerID(ctx); err != nil {
		return nil, fmt.Errorf("initialising the producer of %s: %w", w.cfg.WorkerID, err)
	}
	deadline := time.Now().Add(w.cfg.TransactionTimeout + 30*time.Second)
	var resp kadm.OffsetResponses
	for {
		var err error
		resp, err = w.adm.FetchOffsets(kadm.RequireStable(ctx), Group(w.cfg.JobID))
		if err == nil {
			err = resp.Error()
		}
		if err == nil {
			break
		}
		if !offsetsRetriable(err) || time.Now().After(deadline) {
			return nil, fmt.Errorf("fetching the committed offsets of %s: %w", Group(w.cfg.JobID), err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	out := map[string]map[int32]kgo.EpochOffset{}
	resp.Each(func(o kadm.OffsetResponse) {
		if o.At < 0 {
			return
		}
		if out[o.Topic] == nil {
			out[o.Topic] = map[int32]kgo.EpochOffset{}
		}
		out[o.Topic][o.Partition] = kgo.EpochOffset{Epoch: o.LeaderEpoch, Offset: o.At}
	})
	return out, nil
}

// offsetsRetriable reports whether fetching the group's offsets may succeed
// if tried again: they are not stable yet, or the group coordinator is
// moving (its broker died: the fetch cannot dial it until the group has a
// new coordinator). CI saw a worker exit on "unable to dial ... connection
// refused" right after the broker holding the coordinator was killed
// (TestBrokerLeaderLoss).
func offsetsRetriable(err error) bool {
	var ne net.Error
	return errors.Is(err, kerr.UnstableOffsetCommit) || kerr.IsRetriable(err) || errors.As(err, &ne) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, io.EOF)
}

// refreshTopicIDs learns the input topics' ids (offset commits name topics
// by id from TxnOffsetCommit v6).
func (w *Worker) refreshTopicIDs(ctx context.Context) error {
	td, err := w.adm.ListTopics(ctx, w.inputs...)
	if err != nil {
		return fmt.Errorf("describing input topics: %w", err)
	}
	ids := make(map[string][16]byte, len(td))
	for t, d := range td {
		ids[t] = d.ID
	}
	w.topicIDs = ids
	return nil
}

// TaskDir is where a task's local state lives.
func (w *Worker) TaskDir(sub int, part int32) string {
	return filepath.Join(w.cfg.StateDir, sanitize(w.plan.Job), taskID{sub, part}.String())
}

func (w *Worker) openTask(ctx context.Context, id taskID, committed map[string]map[int32]kgo.EpochOffset) (*taskRunner, int, error) {
	st, err := state.Open(state.Options{Dir: w.TaskDir(id.sub, id.part), MaxCachedEntries: w.cfg.MaxCachedEntries})
	if err != nil {
		return nil, 0, err
	}
	sub := w.plan.Subtopologies[id.sub]
	n, err := w.restoreTask(ctx, st, sub, id.part)
	if err != nil {
		st.Close()
		return nil, 0, err
	}
	tr := &taskRunner{w: w, id: id, store: st, positions: make(map[string]*position, len(sub.Inputs))}
	tr.init()
	for _, in := range sub.Inputs {
		pos := &position{}
		if c, ok := committed[in.Topic][id.part]; ok {
			pos.handed.Store(c.Offset)
			pos.processed.Store(c.Offset)
		}
		tr.positions[in.Topic] = pos
	}
	tr.task, err = pipeline.NewTask(pipeline.TaskConfig{
		Plan: w.plan, Subtopology: id.sub, Partition: id.part, Store: st, Output: tr,
		Metrics: w.metrics, Logger: w.log, Partitions: w.partitions, Backlog: tr.backlog, FireSlice: w.cfg.FireSlice,
	})
	if err != nil {
		st.Close()
		return nil, 0, err
	}
	for _, t := range sub.TableSources {
		c, ok := committed[t][id.part]
		if !ok {
			continue
		}
		m, err := w.replayTable(ctx, tr, t, c.Offset)
		if err != nil {
			tr.close()
			return nil, 0, fmt.Errorf("replaying table source %s: %w", t, err)
		}
		n += m
	}
	go tr.run()
	return tr, n, nil
}

// stopRequest asks Run to stop, optionally writing a savepoint; with
// keepRunning it writes the savepoint and goes on.
type stopRequest struct {
	savepoint   string
	keepRunning bool
	done        chan error
}

// savepointRunning takes a checkpoint and writes a savepoint of it
// without stopping. Only a failed checkpoint ends Run (as it would have
// at the next commit); a failed savepoint is the requester's error.
func (w *Worker) savepointRunning(ctx context.Context, req stopRequest) error {
	if err := graceful(ctx, w.checkpoint); err != nil {
		req.done <- err
		return err
	}
	err := w.writeSavepoint(ctx, req.savepoint)
	w.blocked.Store(false)
	w.sess.AllowRebalance()
	req.done <- err
	return nil
}

// stop ends Run gracefully: a final checkpoint, an optional savepoint,
// then leaving the group.
func (w *Worker) stop(req stopRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := w.checkpoint(ctx)
	if err == nil && req.savepoint != "" {
		err = w.writeSavepoint(ctx, req.savepoint)
	}
	w.leaving = true
	if req.done != nil {
		req.done <- err
	}
	return err
}

func (w *Worker) teardown() {
	w.closeTasks()
	if w.leaving && w.sess != nil {
		// The tasks ran on after the final checkpoint (timers, async
		// completions, idle markers) in a transaction that must not
		// commit: abort it now rather than leave it open until the
		// broker times it out, holding every read_committed reader of
		// the outputs back for the transaction timeout (seen: 10s after
		// each stop in the fault tests).
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := w.sess.End(ctx, false); err != nil {
			w.log.Warn("aborting the transaction opened after the final checkpoint", "err", err)
		}
		cancel()
	}
	w.pcancel()
	if w.sess != nil {
		w.sess.Close()
	}
	if w.leaving && w.adm != nil {
		// A static member does not leave the group on close: on a graceful
		// stop the worker removes itself, so its tasks move at once.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := w.adm.LeaveGroup(ctx, kadm.LeaveGroup(Group(w.cfg.JobID)).InstanceIDs(w.cfg.WorkerID).Reason("worker stopped"))
		cancel()
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			w.log.Warn("leaving the group", "err", err)
		}
	}
	if w.rcl != nil {
		w.rcl.Close()
	}
	if w.admCl != nil {
		w.admCl.Close()
	}
}

// session is the consumer-producer pair of one delivery mode.
type session interface {
	PollFetches(ctx context.Context) kgo.Fetches
	Begin() error
	End(ctx context.Context, commit bool) (bool, error)
	AllowRebalance()
	Client() *kgo.Client
	Close()
}

type eosSession struct{ *kgo.GroupTransactSession }

// Close leaves the group; rebalances may be blocked by the last poll.
func (s eosSession) Close() { s.GroupTransactSession.CloseAllowingRebalance() }

func (s eosSession) End(ctx context.Context, commit bool) (bool, error) {
	return s.GroupTransactSession.End(ctx, kgo.TransactionEndTry(commit))
}

// alosSession commits offsets after flushing outputs, without transactions.
type alosSession struct{ cl *kgo.Client }

func (s *alosSession) PollFetches(ctx context.Context) kgo.Fetches { return s.cl.PollFetches(ctx) }
func (s *alosSession) Begin() error                                { return nil }
func (s *alosSession) AllowRebalance()                             { s.cl.AllowRebalance() }
func (s *alosSession) Client() *kgo.Client                         { return s.cl }
func (s *alosSession) Close()                                      { s.cl.CloseAllowingRebalance() }

func (s *alosSession) End(ctx context.Context, commit bool) (bool, error) {
	if !commit {
		s.cl.SetOffsets(s.cl.CommittedOffsets())
		return false, nil
	}
	if err := s.cl.Flush(ctx); err != nil {
		return false, err
	}
	if err := s.cl.CommitUncommittedOffsets(ctx); err != nil {
		return false, err
	}
	return true, nil
}

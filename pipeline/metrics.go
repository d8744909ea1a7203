package pipeline

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the engine's Prometheus metrics. One Metrics serves every
// task of a process; tasks publish their counters on each Tick.
type Metrics struct {
	recordsIn     *prometheus.CounterVec
	recordsOut    *prometheus.CounterVec
	deadLetters   *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	watermarkLag  *prometheus.GaugeVec
	asyncInFlight *prometheus.GaugeVec
	stateEntries  *prometheus.GaugeVec
	stateBytes    *prometheus.GaugeVec
	liveEntries   *prometheus.GaugeVec
	liveBytes     *prometheus.GaugeVec

	// Used by runtime drivers.
	Latency            *prometheus.HistogramVec
	QueueFill          *prometheus.GaugeVec
	CheckpointDuration *prometheus.HistogramVec
	CheckpointBytes    *prometheus.HistogramVec
	CheckpointFailures *prometheus.CounterVec
	LastCheckpoint     *prometheus.GaugeVec
	ConsumerLag        *prometheus.GaugeVec
	RestoreDuration    *prometheus.HistogramVec
}

// NewMetrics creates the engine metrics and registers them on reg (which
// may be nil to keep them unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	op := []string{"job", "operator"}
	task := []string{"job", "subtopology", "partition"}
	opTask := []string{"job", "operator", "subtopology", "partition"}
	m := &Metrics{
		recordsIn:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "loanflow", Subsystem: "engine", Name: "records_in_total", Help: "Records received per operator."}, op),
		recordsOut:    prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "loanflow", Subsystem: "engine", Name: "records_out_total", Help: "Records emitted per operator."}, op),
		deadLetters:   prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "loanflow", Subsystem: "engine", Name: "dead_letters_total", Help: "Records sent to the dead-letter topic, by the operator that failed them."}, op),
		dropped:       prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "loanflow", Subsystem: "engine", Name: "dropped_total", Help: "Records dropped on purpose (dropped side outputs, late data without a side output)."}, op),
		watermarkLag:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "watermark_lag_seconds", Help: "Processing time minus the operator's input watermark."}, op),
		asyncInFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "async_in_flight", Help: "Async I/O calls in flight."}, op),
		stateEntries:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "state_cached_entries", Help: "Entries in the state write cache."}, task),
		stateBytes:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "state_disk_bytes", Help: "Pebble state size on disk."}, task),
		liveEntries:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "state_live_entries", Help: "Committed state entries per operator and task that survived the last complete TTL sweep pass (see Task.ExpireState)."}, opTask),
		liveBytes:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "state_live_bytes", Help: "Key and value bytes of the entries in state_live_entries."}, opTask),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "loanflow", Subsystem: "engine", Name: "batch_latency_seconds", Help: "Time to process one fetched batch through the operator chain.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}, []string{"job", "subtopology"}),
		QueueFill:          prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "queue_fill_ratio", Help: "Fill of a task's bounded input queue (1 = backpressure)."}, task),
		CheckpointDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "loanflow", Subsystem: "engine", Name: "checkpoint_duration_seconds", Help: "Time to flush state and commit the checkpoint transaction, per worker.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}, []string{"job", "worker"}),
		CheckpointBytes:    prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "loanflow", Subsystem: "engine", Name: "checkpoint_changelog_bytes", Help: "Changelog bytes written per checkpoint.", Buckets: prometheus.ExponentialBuckets(1024, 4, 12)}, []string{"job"}),
		CheckpointFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "loanflow", Subsystem: "engine", Name: "checkpoint_failures_total", Help: "Checkpoints that aborted."}, []string{"job", "reason"}),
		LastCheckpoint:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "last_checkpoint_timestamp_seconds", Help: "Unix time of the worker's last committed checkpoint."}, []string{"job", "worker"}),
		ConsumerLag:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "loanflow", Subsystem: "engine", Name: "consumer_lag_records", Help: "Records between the committed position and the end of an input partition."}, []string{"job", "topic", "partition"}),
		RestoreDuration:    prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "loanflow", Subsystem: "engine", Name: "restore_duration_seconds", Help: "Time to restore a task's state.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"job"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.recordsIn, m.recordsOut, m.deadLetters, m.dropped, m.watermarkLag, m.asyncInFlight,
			m.stateEntries, m.stateBytes, m.liveEntries, m.liveBytes, m.Latency, m.QueueFill, m.CheckpointDuration, m.CheckpointBytes, m.CheckpointFailures, m.LastCheckpoint, m.ConsumerLag, m.RestoreDuration} {
			reg.MustRegister(c)
		}
	}
	return m
}

// opMetrics are one operator's counters in one task, owned by the task's
// goroutine and published as deltas.
type opMetrics struct {
	in, out, deadLettered, dropped int64
	inFlight                       int64
	waiting                        int64 // accepted records waiting for room (backpressure)
	async                          bool  // registered a drainer: reports async_in_flight
	published                      bool  // its failure counters exist
	pubIn, pubOut, pubDL, pubDrop  int64
}

// PublishMetrics adds the task's counters to the Prometheus metrics.
func (t *Task) PublishMetrics() {
	m := t.metrics
	if m == nil {
		return
	}
	job := t.plan.Job
	nowMs := t.now().UnixMilli()
	for _, c := range t.contexts {
		om, op := c.m, c.node.name
		if !om.published {
			// Failure counters exist at 0 from the start: increase()
			// alerts see the first failure.
			m.deadLetters.WithLabelValues(job, op)
			m.dropped.WithLabelValues(job, op)
			om.published = true
		}
		if d := om.in - om.pubIn; d > 0 {
			m.recordsIn.WithLabelValues(job, op).Add(float64(d))
			om.pubIn = om.in
		}
		if d := om.out - om.pubOut; d > 0 {
			m.recordsOut.WithLabelValues(job, op).Add(float64(d))
			om.pubOut = om.out
		}
		if d := om.dropped - om.pubDrop; d > 0 {
			m.dropped.WithLabelValues(job, op).Add(float64(d))
			om.pubDrop = om.dropped
		}
		if c.wm > MinTime {
			m.watermarkLag.WithLabelValues(job, op).Set(float64(nowMs-c.wm) / 1000)
		}
		if om.async {
			m.asyncInFlight.WithLabelValues(job, op).Set(float64(om.inFlight))
		}
	}
	sub := "local"
	if t.sub != nil {
		sub = strconv.Itoa(t.sub.ID)
	}
	part := strconv.Itoa(int(t.partition))
	m.stateEntries.WithLabelValues(job, sub, part).Set(float64(t.store.Cached()))
	m.stateBytes.WithLabelValues(job, sub, part).Set(float64(t.store.DiskBytes()))
	t.publishCensus(job, sub, part)
}

// unregisteredOperator labels state of handles no operator of the task
// registered (left by an older version of the job).
const unregisteredOperator = "(unregistered)"

// publishCensus sets the live-state gauges from the store's last complete
// sweep pass (see ExpireState), per operator; an operator whose state
// emptied is set to 0.
func (t *Task) publishCensus(job, sub, part string) {
	census, ok := t.store.Census()
	if !ok {
		return
	}
	type size struct{ entries, bytes int64 }
	byOp := make(map[string]size, len(t.censusOps))
	for op := range t.censusOps {
		byOp[op] = size{}
	}
	for _, c := range census {
		op := c.Operator
		if op == "" {
			op = unregisteredOperator
		}
		s := byOp[op]
		byOp[op] = size{s.entries + c.Entries, s.bytes + c.Bytes}
	}
	if t.censusOps == nil {
		t.censusOps = make(map[string]bool)
	}
	m := t.metrics
	for op, s := range byOp {
		m.liveEntries.WithLabelValues(job, op, sub, part).Set(float64(s.entries))
		m.liveBytes.WithLabelValues(job, op, sub, part).Set(float64(s.bytes))
		t.censusOps[op] = true
	}
}

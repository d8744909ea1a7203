package postgres

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the reader's Prometheus collectors, labelled by reader name.
type metrics struct {
	lagBytes      prometheus.Gauge
	lagSeconds    prometheus.Gauge
	changes       *changeCounter
	changesPerSec prometheus.Gauge
	committedLSN  prometheus.Gauge
	lastCommit    prometheus.Gauge
	commits       prometheus.Counter
	deadLetters   prometheus.Counter
	heartbeats    prometheus.Counter
	commitLatency prometheus.Observer
	snapRows      *prometheus.CounterVec
	snapExpected  *prometheus.GaugeVec
	snapProgress  prometheus.Gauge
	incRemaining  prometheus.Gauge
	incRows       *prometheus.GaugeVec
	incRowsEst    *prometheus.GaugeVec
	incChunks     *prometheus.GaugeVec
	incChunksEst  *prometheus.GaugeVec
	restarts      prometheus.Counter
	// Streamed (protocol v2) transactions: begun, aborted, spilled to disk.
	streamedTxns, streamedAborts, streamSpills prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, name string) *metrics {
	l := prometheus.Labels{"reader": name}
	g := func(n, help string) prometheus.Gauge {
		return registerCollector(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: n, Help: help, ConstLabels: l})).(prometheus.Gauge)
	}
	c := func(n, help string) prometheus.Counter {
		return registerCollector(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: n, Help: help, ConstLabels: l})).(prometheus.Counter)
	}
	gv := func(n, help string) *prometheus.GaugeVec {
		return registerCollector(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: n, Help: help, ConstLabels: l}, []string{"table"})).(*prometheus.GaugeVec)
	}
	return &metrics{
		lagBytes:      g("loanflow_cdc_replication_lag_bytes", "pg_current_wal_lsn() minus the slot's confirmed_flush_lsn (what the reader committed in Kafka and confirmed), read from a side connection every wal_guard.poll_interval."),
		lagSeconds:    g("loanflow_cdc_replication_lag_seconds", "Time from PostgreSQL commit to Kafka commit of the newest committed transaction; 0 when idle."),
		changes:       newChangeCounter(reg, name),
		changesPerSec: g("loanflow_cdc_changes_per_second", "Change records committed per second over the last few seconds."),
		committedLSN:  g("loanflow_cdc_committed_lsn", "Flush LSN of the position committed in Kafka (what the slot may confirm)."),
		lastCommit:    g("loanflow_cdc_last_commit_timestamp_seconds", "Unix time of the last Kafka commit (changes or heartbeats); its age shows a stalled reader."),
		commits:       c("loanflow_cdc_kafka_commits_total", "Kafka transactions committed."),
		deadLetters:   c("loanflow_cdc_dead_letters_total", "Changes sent to the dead-letter topic."),
		heartbeats:    c("loanflow_cdc_heartbeats_total", "Heartbeat messages turned into heartbeat records."),
		commitLatency: registerCollector(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "loanflow_cdc_commit_latency_seconds", Help: "PostgreSQL commit to Kafka commit, per transaction.",
			ConstLabels: l, Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		})).(prometheus.Histogram),
		snapRows: registerCollector(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loanflow_cdc_snapshot_rows_total", Help: "Rows read by the initial snapshot, per table.", ConstLabels: l,
		}, []string{"table"})).(*prometheus.CounterVec),
		snapExpected: registerCollector(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loanflow_cdc_snapshot_rows_expected", Help: "Rows of each table in the snapshot (counted in the snapshot).", ConstLabels: l,
		}, []string{"table"})).(*prometheus.GaugeVec),
		snapProgress: g("loanflow_cdc_snapshot_progress_ratio", "Fraction of snapshot rows read (1 when done)."),
		incRemaining: g("loanflow_cdc_incremental_snapshot_tables_remaining", "Tables an incremental snapshot is reading or has queued (0 when none runs)."),
		incRows: gv("loanflow_cdc_incremental_snapshot_rows",
			"Rows read by the running (or last) incremental snapshot of each table, including rows dropped because the stream carried a newer image; reaches the table's row count when it ends."),
		incRowsEst: gv("loanflow_cdc_incremental_snapshot_rows_estimated",
			"Rows of each table an incremental snapshot reads, estimated when it started (pg_class.reltuples, or count(*) for a table never analyzed)."),
		incChunks: gv("loanflow_cdc_incremental_snapshot_chunks",
			"Chunks read by the running (or last) incremental snapshot of each table."),
		incChunksEst: gv("loanflow_cdc_incremental_snapshot_chunks_estimated",
			"Chunks of each table an incremental snapshot reads: ceil(rows estimated / snapshot_txn_max_rows), at least the chunks read."),
		streamedTxns:   c("loanflow_cdc_streamed_transactions_total", "Transactions PostgreSQL streamed while in progress (larger than logical_decoding_work_mem; protocol v2), counted at their first block."),
		streamedAborts: c("loanflow_cdc_streamed_aborts_total", "Streamed transactions that aborted: their buffered changes were dropped, none reached Kafka."),
		streamSpills:   c("loanflow_cdc_stream_spills_total", "Streamed transactions whose buffered changes went to a file (stream_buffer_bytes exceeded)."),
		restarts:       c("loanflow_cdc_session_restarts_total", "Sessions restarted after a retryable error."),
	}
}

// registerCollector registers col, or returns the collector already registered
// under the same description (a reader restarted in one process).
func registerCollector(reg prometheus.Registerer, col prometheus.Collector) prometheus.Collector {
	if reg == nil {
		return col
	}
	if err := reg.Register(col); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			return are.ExistingCollector
		}
	}
	return col
}

// incProgress exports the progress of p's table (chunks of up to
// chunkRows rows).
func (m *metrics) incProgress(p *IncrementalProgress, chunkRows int) {
	est := max(p.Estimate, p.Read)
	chunks := max(p.Chunks, (est+int64(chunkRows)-1)/int64(max(chunkRows, 1)))
	m.incRows.WithLabelValues(p.Table).Set(float64(p.Read))
	m.incRowsEst.WithLabelValues(p.Table).Set(float64(est))
	m.incChunks.WithLabelValues(p.Table).Set(float64(p.Chunks))
	m.incChunksEst.WithLabelValues(p.Table).Set(float64(chunks))
}

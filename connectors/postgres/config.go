package postgres

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

// Mode is how a table's changes are written.
type Mode string

const (
	// ModeEnvelope writes Debezium-style envelopes (before, after, source,
	// op, ts_ms) keyed by the primary key, and a tombstone after a delete.
	ModeEnvelope Mode = "envelope"
	// ModeUpsert writes the row itself (the after-image) keyed by the
	// primary key, and only a tombstone for a delete: a compacted topic of
	// the table's current rows.
	ModeUpsert Mode = "upsert"
)

// SnapshotMode says what the first start does.
type SnapshotMode string

const (
	// SnapshotInitial reads every published table in a snapshot consistent
	// with the slot before streaming (default).
	SnapshotInitial SnapshotMode = "initial"
	// SnapshotNever streams from the slot's position without a snapshot.
	SnapshotNever SnapshotMode = "never"
)

// Config configures a Reader. Zero values take the defaults documented on
// each field; Validate reports what is missing or wrong.
type Config struct {
	// Name identifies the reader: the key of its position record, the
	// default slot and publication name, and its transactional id.
	// Default "loanflow_cdc".
	Name string `yaml:"name"`
	// DatabaseURL is the PostgreSQL connection URL (postgres://...). The
	// user needs the REPLICATION attribute (or superuser) and must own the
	// published tables to create the publication; with pg_read_all_stats
	// its heartbeats do not wait for other roles' idle transactions
	// (heartbeat.go). Required.
	DatabaseURL string `yaml:"database_url"`
	// Slot is the logical replication slot. Default Name.
	Slot string `yaml:"slot"`
	// Publication is the publication the slot streams. Default Name.
	Publication string `yaml:"publication"`
	// Views are flattened upsert topics built from several tables (e.g.
	// customer_360); their source tables are captured too.
	Views []ViewConfig `yaml:"views"`
	// Tables are the tables to capture, with their routing. Required unless
	// the publication already exists (then its tables are captured in
	// envelope mode unless listed here).
	Tables []TableConfig `yaml:"tables"`
	// IncludeTables and ExcludeTables select tables by regular expression
	// (Go syntax, matched against the whole schema.table): every ordinary
	// or partitioned table of the database that matches an include and no
	// exclude is captured with the default route, besides Tables. They are
	// resolved at each session start (a table created later joins at the
	// next start and is snapshotted incrementally; one that stops matching
	// leaves the publication). See filter.go.
	IncludeTables []string `yaml:"include_tables"`
	ExcludeTables []string `yaml:"exclude_tables"`
	// Types is how column types map to Avro: native (default) or debezium
	// (Debezium's semantic types: ZonedTimestamp strings,
	// VariableScaleDecimal, Uuid, with their connect.* properties; see
	// debezium.go).
	Types TypeMode `yaml:"types"`
	// TopicPrefix of envelope topics: <prefix>.<schema>.<table>. Default
	// "cdc".
	TopicPrefix string `yaml:"topic_prefix"`
	// Snapshot is the first start's behaviour. Default initial.
	Snapshot SnapshotMode `yaml:"snapshot"`
	// SnapshotTxnMaxRows is the chunk size of snapshots: the rows of one
	// Kafka transaction of the initial snapshot, and of one incremental
	// chunk (held in memory between its watermarks). Default 10000.
	SnapshotTxnMaxRows int `yaml:"snapshot_txn_max_rows"`
	// EnsureReplicaIdentityFull runs ALTER TABLE ... REPLICA IDENTITY FULL
	// on captured tables that have TOAST-able columns, so unchanged TOAST
	// values and before-images are complete. Otherwise such a table is an
	// error at start. Default false.
	EnsureReplicaIdentityFull bool `yaml:"ensure_replica_identity_full"`

	// AllowTimelineChange lets the reader resume from a position read on
	// another timeline of the same system (a promotion of a standby whose
	// slot was synchronized, PostgreSQL 17 failover slots). Positions
	// written afterwards carry the new timeline, so set it for one start
	// only. Default false: a timeline change stops the reader.
	AllowTimelineChange bool `yaml:"allow_timeline_change"`

	// Brokers are the Kafka seed brokers. Required.
	Brokers []string `yaml:"brokers"`
	// SchemaRegistryURL is the Confluent-compatible schema registry.
	// Required.
	SchemaRegistryURL string `yaml:"schema_registry_url"`
	// TransactionalID is the Kafka transactional id; a restarted reader with
	// the same id fences its predecessor. Default "loanflow-cdc-" + Name.
	TransactionalID string `yaml:"transactional_id"`
	// PositionsTopic is the compacted topic holding the committed source
	// position, written in the same transaction as the changes. Default
	// "_loanflow_cdc_positions".
	PositionsTopic string `yaml:"positions_topic"`
	// DeadLetterTopic receives changes whose values cannot be encoded.
	// Default "dlq.cdc-" + Name.
	DeadLetterTopic string `yaml:"dead_letter_topic"`
	// TopicPartitions for topics the reader creates. Default 6.
	TopicPartitions int `yaml:"topic_partitions"`
	// TopicReplicationFactor for topics the reader creates; -1 is the
	// broker default. Default -1.
	TopicReplicationFactor int `yaml:"topic_replication_factor"`
	// TransactionTimeout is the Kafka transaction timeout. Default 60s.
	TransactionTimeout time.Duration `yaml:"transaction_timeout"`

	// TxnMaxRecords bounds the change records of one Kafka transaction; a
	// larger PostgreSQL transaction is split over several Kafka transactions
	// (the position then records how far into it the reader got). Default
	// 20000.
	TxnMaxRecords int `yaml:"txn_max_records"`
	// MaxRecordBytes is the largest record the reader writes to a table
	// topic; a larger change goes to the dead-letter topic (reason
	// too_large) instead of failing its Kafka transaction. Keep it at or
	// below the topics' max.message.bytes. Default 1000000 (Kafka's
	// default limit is 1048588).
	MaxRecordBytes int `yaml:"max_record_bytes"`
	// TxnMaxBytes bounds the encoded bytes of one Kafka transaction, in the
	// same way. Default 16 MiB.
	TxnMaxBytes int `yaml:"txn_max_bytes"`
	// Streaming selects pgoutput protocol version 2 with streaming of
	// in-progress transactions (PostgreSQL 14 and later): a transaction
	// larger than the server's logical_decoding_work_mem is sent while it
	// runs, in chunks, instead of being spilled to disk on the server until
	// it commits. The reader keeps a streamed transaction's changes (in
	// memory up to stream_buffer_bytes, then in a file under
	// stream_spill_dir) and writes them to Kafka at its commit, exactly as
	// an ordinary transaction; an aborted one, or a rolled-back savepoint
	// inside one, leaves nothing. auto (default): on for PostgreSQL 14 and
	// later, protocol version 1 before; on: an older server is an error;
	// off: protocol version 1.
	Streaming StreamingMode `yaml:"streaming"`
	// StreamBufferBytes bounds the memory holding the changes of streamed
	// transactions not yet committed (all of them together); past it the
	// largest goes to a file. Default 64 MiB.
	StreamBufferBytes int `yaml:"stream_buffer_bytes"`
	// StreamSpillDir holds those files (deleted as soon as they are
	// created, so a crash leaves none). Default: os.TempDir().
	StreamSpillDir string `yaml:"stream_spill_dir"`
	// ignoreStreamAbort makes the receiver ignore Stream Abort (the
	// streaming test's negative control; never set otherwise).
	ignoreStreamAbort bool
	// CommitInterval is the longest a decoded change waits before its Kafka
	// transaction commits. The reader commits as soon as it has nothing
	// more to read, so this only matters under sustained load. Default 50ms.
	CommitInterval time.Duration `yaml:"commit_interval"`
	// QueueMaxBatches bounds the batches between the WAL receiver and the
	// Kafka writer. Default 64.
	QueueMaxBatches int `yaml:"queue_max_batches"`
	// StatusInterval is how often the reader reports its flushed position
	// to PostgreSQL. Default 1s.
	StatusInterval time.Duration `yaml:"status_interval"`
	// HeartbeatInterval is how often the reader emits a heartbeat with
	// pg_logical_emit_message, which moves the slot on an idle database and
	// sends heartbeat records to the heartbeat topic and every partition of
	// the view and table topics. Heartbeats are exact (heartbeat.go): one
	// of time H follows every change committed before H. Default 50ms
	// (measured cheap: docs/design.md, Exact heartbeats).
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// ProvideTransactionMetadata writes BEGIN and END records of each
	// PostgreSQL transaction to TransactionTopic and a transaction block to
	// every change record of envelope topics, as Debezium's
	// provide.transaction.metadata (see txmeta.go). Default false.
	ProvideTransactionMetadata bool `yaml:"provide_transaction_metadata"`
	// TransactionTopic is the transaction topic. Default
	// <topic_prefix>.transaction.
	TransactionTopic string `yaml:"transaction_topic"`
	// HeartbeatTopic receives one record per heartbeat (Avro key
	// {serverName}, value {ts_ms, lsn}; compacted), like Debezium's
	// __debezium-heartbeat topic. Default "__loanflow-heartbeat." + Name.
	HeartbeatTopic string `yaml:"heartbeat_topic"`
	// ReconnectBackoffMax caps the wait between reconnection attempts after
	// a lost connection. Default 5s.
	ReconnectBackoffMax time.Duration `yaml:"reconnect_backoff_max"`

	// WALGuard watches the slot's retained WAL from a side connection and
	// stops the reader (or drops the slot) past a limit (walguard.go).
	WALGuard WALGuardConfig `yaml:"wal_guard"`

	// MetricsAddr serves Prometheus metrics at /metrics when set (used by
	// `loanflow cdc run`; library users register Metrics themselves).
	MetricsAddr string `yaml:"metrics_addr"`

	// Registerer receives the reader's metrics. Default: none.
	Registerer prometheus.Registerer `yaml:"-"`
	// Logger. Default slog.Default().
	Logger *slog.Logger `yaml:"-"`
	// OnCommit, if set, is called after every Kafka commit with the commit
	// time of the newest PostgreSQL transaction in it and its change count
	// (benchmarks measure latency with it). It runs on the writer goroutine.
	OnCommit func(CommitInfo) `yaml:"-"`
}

// CommitInfo describes one Kafka transaction commit.
type CommitInfo struct {
	// Changes is the number of change records committed.
	Changes int
	// CommitTimes are the PostgreSQL commit times of the transactions that
	// completed in this Kafka transaction.
	CommitTimes []time.Time
	// Position is the committed source position.
	Position Position
	// At is when the Kafka commit returned.
	At time.Time
}

// TableConfig routes one table.
type TableConfig struct {
	// Table is schema.table, or table in schema public.
	Table string `yaml:"table"`
	// Mode is envelope (default) or upsert.
	Mode Mode `yaml:"mode"`
	// Topic overrides the topic: default <prefix>.<schema>.<table>.
	Topic string `yaml:"topic"`
	// Heartbeats writes heartbeat records to every partition of the
	// table's topic (see doc.go, Heartbeats), for consumers that use them
	// as per-partition watermarks (the portfolio and cache jobs). Default
	// true; set false for a topic only foreign consumers read.
	Heartbeats *bool `yaml:"heartbeats"`
	// Columns is the table's column allow-list: only these columns are
	// written (schemas, keys, before and after images, dead letters); the
	// primary key must be among them. Empty: every column.
	Columns []string `yaml:"columns"`
	// ExcludeColumns are columns never written (the complement of
	// Columns; set one or the other).
	ExcludeColumns []string `yaml:"exclude_columns"`
	// Truncate writes a TRUNCATE of the table as an op "t" envelope to
	// every partition of its topic. Default false: a TRUNCATE is logged,
	// not written (Flink's debezium-avro-confluent format and other
	// Debezium consumers reject op "t"). Envelope mode only.
	Truncate bool `yaml:"truncate"`
}

// route is a resolved TableConfig.
type route struct {
	mode       Mode
	topic      string
	prefix     string
	heartbeats bool
	// columns filters the table's columns (nil: every column); truncate
	// writes TRUNCATEs (see TableConfig.Truncate).
	columns  *columnFilter
	truncate bool
	types    TypeMode // Config.Types
	txmeta   bool     // Config.ProvideTransactionMetadata
}

// LoadConfig reads a YAML or JSON config file (JSON is YAML). Durations are
// strings such as "5s" or "250ms".
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("%w: reading %s: %v", ErrConfig, path, err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("%w: parsing %s: %v", ErrConfig, path, err)
	}
	return c, nil
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Name, "loanflow_cdc")
	def(&c.Slot, c.Name)
	def(&c.Publication, c.Name)
	def(&c.TopicPrefix, "cdc")
	def((*string)(&c.Snapshot), string(SnapshotInitial))
	def((*string)(&c.Types), string(TypesNative))
	def(&c.TransactionalID, "loanflow-cdc-"+c.Name)
	def(&c.PositionsTopic, "_loanflow_cdc_positions")
	def(&c.DeadLetterTopic, "dlq.cdc-"+c.Name)
	def(&c.HeartbeatTopic, "__loanflow-heartbeat."+c.Name)
	def(&c.TransactionTopic, c.TopicPrefix+".transaction")
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defInt(&c.SnapshotTxnMaxRows, 10000)
	defInt(&c.TopicPartitions, 6)
	defInt(&c.TopicReplicationFactor, -1)
	defInt(&c.TxnMaxRecords, 20000)
	defInt(&c.TxnMaxBytes, 16<<20)
	defInt(&c.MaxRecordBytes, 1000000)
	defInt(&c.QueueMaxBatches, 64)
	defInt(&c.StreamBufferBytes, 64<<20)
	def((*string)(&c.Streaming), string(StreamingAuto))
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defDur(&c.TransactionTimeout, 60*time.Second)
	defDur(&c.CommitInterval, 50*time.Millisecond)
	defDur(&c.StatusInterval, time.Second)
	defDur(&c.HeartbeatInterval, 50*time.Millisecond)
	defDur(&c.ReconnectBackoffMax, 5*time.Second)
	c.WALGuard = c.WALGuard.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	for i := range c.Tables {
		t := &c.Tables[i]
		if !strings.Contains(t.Table, ".") && t.Table != "" {
			t.Table = "public." + t.Table
		}
		def((*string)(&t.Mode), string(ModeEnvelope))
		def(&t.Topic, c.TopicPrefix+"."+t.Table)
	}
	return c
}

// identRE is what the reader accepts as a slot or publication name
// (PostgreSQL's rules for slots: lower-case letters, digits, underscore).
var identRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Validate reports every problem with c (after defaults), joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.DatabaseURL == "" {
		bad("database_url is required (postgres://user@host:port/db)")
	}
	switch c.Streaming {
	case StreamingAuto, StreamingOn, StreamingOff, "":
	default:
		bad("streaming %q: use auto, on or off", c.Streaming)
	}
	if len(c.Brokers) == 0 {
		bad("brokers is required (host:port of the Kafka seed brokers)")
	}
	if c.SchemaRegistryURL == "" {
		bad("schema_registry_url is required (http://host:port of the schema registry)")
	}
	if !identRE.MatchString(c.Slot) {
		bad("slot %q: use 1-63 lower-case letters, digits and underscores", c.Slot)
	}
	if !identRE.MatchString(c.Publication) {
		bad("publication %q: use 1-63 lower-case letters, digits and underscores", c.Publication)
	}
	if c.Types != TypesNative && c.Types != TypesDebezium {
		bad("types %q: use native or debezium", c.Types)
	}
	if c.Snapshot != SnapshotInitial && c.Snapshot != SnapshotNever {
		bad("snapshot %q: use initial or never", c.Snapshot)
	}
	seen := map[string]bool{}
	for _, t := range c.Tables {
		if t.Table == "" || strings.Count(t.Table, ".") != 1 {
			bad("tables: %q is not schema.table", t.Table)
		}
		if seen[t.Table] {
			bad("tables: %s listed twice", t.Table)
		}
		seen[t.Table] = true
		if t.Mode != ModeEnvelope && t.Mode != ModeUpsert {
			bad("tables: %s: mode %q: use envelope or upsert", t.Table, t.Mode)
		}
	}
	errs = append(errs, c.validateFilters()...)
	for i := range c.Views {
		if err := c.Views[i].validate(); err != nil {
			errs = append(errs, err)
		}
	}
	for name, v := range map[string]int{
		"snapshot_txn_max_rows": c.SnapshotTxnMaxRows, "txn_max_records": c.TxnMaxRecords,
		"txn_max_bytes": c.TxnMaxBytes, "max_record_bytes": c.MaxRecordBytes, "queue_max_batches": c.QueueMaxBatches, "topic_partitions": c.TopicPartitions, "stream_buffer_bytes": c.StreamBufferBytes,
	} {
		if v <= 0 {
			bad("%s must be positive, got %d", name, v)
		}
	}
	for name, d := range map[string]time.Duration{
		"transaction_timeout": c.TransactionTimeout, "commit_interval": c.CommitInterval,
		"status_interval": c.StatusInterval, "reconnect_backoff_max": c.ReconnectBackoffMax,
	} {
		if d <= 0 {
			bad("%s must be positive, got %v", name, d)
		}
	}
	if c.HeartbeatInterval < 0 {
		bad("heartbeat_interval must not be negative")
	}
	if err := c.WALGuard.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// routeFor returns the route of a table, defaulting to an envelope topic.
func (c *Config) routeFor(schema, name string) *route {
	q := schema + "." + name
	for _, t := range c.Tables {
		if t.Table == q {
			return &route{mode: t.Mode, topic: t.Topic, prefix: c.TopicPrefix, heartbeats: t.Heartbeats == nil || *t.Heartbeats,
				columns: newColumnFilter(t.Columns, t.ExcludeColumns), truncate: t.Truncate, types: c.Types, txmeta: c.ProvideTransactionMetadata}
		}
	}
	return &route{mode: ModeEnvelope, topic: c.TopicPrefix + "." + q, prefix: c.TopicPrefix, heartbeats: true, types: c.Types, txmeta: c.ProvideTransactionMetadata}
}

// topicPrefix is the logical server name written to source.name.
func (r *route) topicPrefix() string { return r.prefix }

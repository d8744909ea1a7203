// Package postgres is Loanflow's PostgreSQL change-data-capture reader: it
// streams committed row changes from a logical replication slot (pgoutput,
// protocol version 1, through github.com/jackc/pglogrepl) into Kafka,
// exactly once, as Avro registered in a Confluent-compatible schema
// registry.
//
//	r, err := postgres.NewReader(cfg) // cfg: Config, or LoadConfig(file)
//	err = r.Run(ctx)                  // blocks; nil after ctx ends
//
// `loanflow cdc run --config FILE` runs the same reader as its own process.
//
// # Records
//
// Each published table goes to cdc.<schema>.<table> (prefix configurable),
// keyed by its primary key (Avro record Key, subject <topic>-key), as a
// Debezium-style envelope (subject <topic>-value): before, after, source
// {version, connector, name, ts_ms, snapshot, db, sequence, schema, table,
// txId, lsn, xmin}, op (c, u, d, r for snapshot reads, t for TRUNCATE) and
// ts_ms. source.lsn is the change's own WAL position and sequence is
// ["<commit lsn>","<change lsn>"], so (source.lsn, key) identifies a change.
// A delete is followed by a tombstone (the key with a null value). An UPDATE
// that changes the primary key is written as a delete of the old key (and
// its tombstone) and a create of the new one. TRUNCATE, for a table
// configured with truncate: true, writes an op=t envelope with a null key
// to every partition of the table's topic; by default it is only logged
// (Flink's debezium-avro-confluent format rejects op t).
//
// Only the columns a table's columns/exclude_columns keep are written
// (schemas, keys, images, dead letters; see filter.go), and tables can be
// selected by regular expression (include_tables, exclude_tables). A
// partitioned table goes to one topic, its root's (publish_via_partition_root,
// partition.go). With
// provide_transaction_metadata, BEGIN/END records go to the transaction
// topic and change records carry a transaction block (txmeta.go).
//
// A table configured with mode upsert instead writes the row itself (the
// after-image) keyed by its primary key, to a compacted topic, and only a
// tombstone for a delete (e.g. customer_360). TRUNCATE of an upsert table
// cannot be expressed per key: it is logged, not written (truncate: true
// is refused for an upsert table).
//
// A view (Config.Views) is a flattened upsert topic built from several
// tables, such as customer_360 from customers, credit_profiles and loans:
// a change of a source table marks its key, and before each Kafka commit
// the reader runs the view's query for the marked keys and writes the rows
// (keyed by the key column as an Avro string, subject <topic>-key; value in
// the configured schema, e.g. schemas.Customer360Schema) or a tombstone for
// a key the query no longer returns, in the same transaction as the
// changes. The query sees the current database state, at most a commit
// interval after the change, so a row can include a transaction committed
// just after the one that triggered it; updated_at and source_lsn, when
// the query does not return them, are the triggering change's commit time
// and commit LSN. TRUNCATE does not refresh views.
//
// Row schemas are built from PostgreSQL relation metadata: the key columns
// keep their type, other columns are nullable unions with default null, so
// adding or dropping a column is a BACKWARD- and FORWARD-compatible change.
// When a Relation message describes a table whose columns differ from the
// known version, the next change of that table registers a new schema
// version (TopicNameStrategy subjects). A change the registry rejects (409,
// e.g. a column type change) goes to the dead-letter topic (reason
// schema), as does every later change of that table version, while the
// other tables flow; fix the subject's compatibility (or route the table
// to a new topic) and restart.
//
// Type mapping: bool→boolean; int2, int4→int; int8, oid→long;
// float4→float; float8→double (NaN and ±Infinity as such); numeric(p,s)→
// bytes decimal(p,s) (unconstrained numeric, or a negative scale, → its
// exact text as string); text, varchar, char, name and other scalar types
// (enums, inet, interval, money, ...) → string of their text form;
// uuid→string (logicalType uuid); json, jsonb→string; bytea→bytes;
// timestamptz→long timestamp-micros; timestamp→long local-timestamp-micros;
// date→int date; time→long time-micros; one-dimensional arrays of the
// above (bool, bytea, int2/4/8, text, varchar, bpchar, float4/8, numeric,
// uuid, json, jsonb, date, timestamp, timestamptz) → array of nullable
// items. Other array types (inet[], interval[], user-defined types) are
// carried as their text form ({a,b}) with a warning in the log. With types:
// debezium the mapping is Debezium's instead (debezium.go): ZonedTimestamp
// strings, MicroTimestamp, Date, MicroTime, Uuid, Json, Connect Decimal,
// VariableScaleDecimal for unconstrained numeric, with connect.* props.
//
// Values without a plain Avro form are represented, never dropped: BC
// dates and years past 9999 are exact (micros or days since 1970, the
// proleptic Gregorian calendar PostgreSQL uses); ±infinity timestamps are
// Debezium's sentinels TimestampPosInfinity/TimestampNegInfinity, ±infinity
// dates DatePosInfinity/DateNegInfinity; numeric NaN and ±Infinity in a
// decimal column are written as null and named in the record header
// loanflow.special ("after.n=NaN", one per line), as Debezium's precise
// decimal mode writes null for them. The before- and after-images are
// converted independently, so the update that fixes such a row is written
// like any other.
//
// # Poison changes
//
// A change that cannot be written goes to the dead-letter topic
// (dlq.cdc-<name>; JSON with table, op, LSNs, xid, reason, error and each
// column's text cut to 4 KiB; headers error, reason, source.table,
// source.lsn, source.commit_lsn, source.topic) and the stream goes on.
// Reasons: value (a key column holding NaN, a multi-dimensional array),
// unchanged_toast (see below), schema (registry rejection, or a table that
// cannot be mapped at all, e.g. two columns with one Avro name),
// too_large (a record over max_record_bytes, default 1,000,000, which the
// broker would reject) and skipped: `loanflow cdc skip --lsn X/Y` (or
// SkipChange) records in the positions topic that the change at that LSN
// goes to the dead-letter topic; a pgoutput message that cannot be decoded
// stops the reader with an error naming its LSN, and skipping that LSN
// sends its bytes (message_hex) to the dead-letter topic.
//
// # Unchanged TOAST values and REPLICA IDENTITY
//
// pgoutput does not send a TOASTed value an UPDATE left unchanged. The
// reader takes it from the old tuple, which REPLICA IDENTITY FULL provides
// (complete and detoasted), and never emits it as null. At start the reader
// therefore requires REPLICA IDENTITY FULL on captured tables that have
// TOAST-able columns (or sets it, with ensure_replica_identity_full); should
// a value still be missing (identity changed while running), the change
// goes to the dead-letter topic with reason unchanged_toast. Before-images follow the identity: FULL
// gives every column, DEFAULT only the key columns (other fields null).
//
// # Snapshot
//
// On first start (no position in Kafka) the reader creates the slot with an
// exported snapshot, imports it (SET TRANSACTION SNAPSHOT in a REPEATABLE
// READ transaction) and reads every published table in key order, writing
// op=r records (source.snapshot true, last for the final row; source.lsn
// the slot's consistent point, txId the snapshot's xmin) in chunks of
// snapshot_txn_max_rows rows (default 10,000), one Kafka transaction per
// chunk whose position records the table and the last key committed; then
// it streams from the slot's consistent point: a row committed during the
// snapshot is in exactly one of the two. Progress is logged and exported
// as metrics (row counts are the planner's estimate).
//
// An interrupted snapshot continues: the slot still stands at its
// consistent point, so the next session streams from there and reads the
// rest (the current table after its last committed key, then the tables
// not read) incrementally, as below. Every row is read once; a table
// without a primary key is read again from its start.
//
// # Incremental snapshots
//
// While streaming, tables are read in chunks between two watermarks, the
// DBLog approach: the writer asks for a chunk, the chunker writes a low
// watermark (pg_logical_emit_message(false, 'loanflow.snapshot', 'low:<id>')),
// selects the next snapshot_txn_max_rows rows after the last key, and
// writes a high watermark. When the stream reaches the high watermark, the
// writer writes the chunk's rows whose key the stream did not change since
// it asked (op=r, source.snapshot incremental, last_in_data_collection for
// a table's last row; source.lsn the high watermark), and commits the new
// last key in the position with them. A change in the window is at least
// as new as the chunk's row, so the row is dropped; a change after it
// follows the row. The chunk's query runs in a snapshot that sees every
// transaction whose commit is recorded (retaken while pg_xact_status still
// shows one in progress). Incremental snapshots run for tables added to
// the config (a published table missing from the position's table list),
// for the rest of an interrupted initial snapshot, and on request:
// `loanflow cdc snapshot --table T` (SignalSnapshot) writes a
// 'loanflow.signal' message {"snapshot": ["schema.table"]} that the reader
// queues when the stream reaches it, exactly once. A table removed from the
// config is removed from the publication. Progress: the position carries
// the running table's rows read, chunks and estimate (pg_class.reltuples,
// or count(*) for a table never analyzed) and, per table, the outcome of
// its last snapshot with the LSN of the signal it answered (Completed;
// RequestSnapshot returns that LSN, WatchPositions follows the positions
// so `loanflow cdc snapshot` shows a progress bar and ends when its
// request is done; a signal for a table the reader does not publish
// completes with an error). Metrics:
// loanflow_cdc_incremental_snapshot_rows{,_estimated},
// loanflow_cdc_incremental_snapshot_chunks{,_estimated} per table,
// loanflow_cdc_incremental_snapshot_tables_remaining and
// loanflow_cdc_snapshot_rows_total.
//
// # Exactly once
//
// The writer produces the change records and a position record (topic
// _loanflow_cdc_positions, compacted, key = reader name) in one Kafka
// transaction, with a transactional id stable per reader, so a restarted
// reader fences its predecessor (any open transaction of it is aborted).
// A session starts by committing a sentinel record in a transaction (which
// fences) and reading the positions topic read_committed up to it. The
// position holds the commit LSN of the newest transaction in Kafka, how many
// of its changes are there (a transaction with more than txn_max_records
// changes or txn_max_bytes is split over several Kafka transactions, which
// bounds memory: PostgreSQL spills big transactions to disk and the reader
// holds at most one Kafka transaction's records), and the flush LSN below
// which everything is in Kafka. On restart, transactions and changes the
// position covers are skipped. The slot's confirmed_flush_lsn is reported
// (standby status update) only from the committed flush LSN, so it never
// runs ahead of Kafka.
//
// If the slot is missing while Kafka holds a position, the reader stops
// with ErrSlotGone; if the slot's confirmed_flush_lsn is past the committed
// position (dropped and recreated, or advanced by someone else), it stops
// with ErrSlotGap naming the slot and the gap. It never skips WAL.
//
// The position also records the server's system identifier and timeline
// (IDENTIFY_SYSTEM), the xid of its transaction and the slot's nonce (a
// random value the reader writes with pg_logical_emit_message(false,
// 'loanflow.slot', ...) right after creating the slot, so the slot decodes
// it first). The reader stops with ErrSlotMismatch, saying what to do,
// when the server has another system identifier (another cluster, a dump
// restored elsewhere), another timeline (point-in-time recovery or a
// promotion; allow_timeline_change: true accepts it once, for a failover
// to a standby that synchronised the slot), a WAL end before the position,
// or when the slot decodes another reader's nonce. A slot that restarts
// before the position (PostgreSQL persists slots at checkpoints, so a
// server crash moves them back) is resumed only if the first transaction
// it replays at or past the position's commit LSN is that transaction,
// with its xid; otherwise the WAL is another history and the reader stops.
// The flush LSN reported to the server never exceeds the server's WAL end.
// `loanflow cdc reset` deletes a position (the next start re-snapshots).
// On PostgreSQL 17 and later slots are created with failover = true.
//
// # Large transactions: protocol v2 streaming
//
// With streaming auto (the default) or on, a session on PostgreSQL 14 or
// later asks pgoutput for protocol version 2 with streaming 'on': a
// transaction whose decoded changes exceed the server's
// logical_decoding_work_mem arrives while it runs, in blocks between
// Stream Start and Stream Stop that carry its xid, possibly interleaved
// with other streamed transactions and with ordinary ones, and ends with
// Stream Commit or Stream Abort. The receiver (streaming.go) keeps each
// streamed transaction's messages by xid: in memory up to
// stream_buffer_bytes over all of them, then the largest in an unlinked
// file under stream_spill_dir. A Stream Abort of the transaction drops
// it; one naming a subtransaction (ROLLBACK TO SAVEPOINT, with the
// subtransactions nested in it) drops that subtransaction's changes. At
// Stream Commit the kept messages are replayed to the writer as an
// ordinary transaction (Begin at the commit LSN, changes in WAL order,
// Commit), so nothing of an uncommitted transaction reaches Kafka and
// positions, split transactions and resume by change count work as
// above. A new session receives an unfinished transaction again from its
// start (the slot's restart_lsn precedes it). Metrics:
// loanflow_cdc_streamed_transactions_total, _streamed_aborts_total,
// _stream_spills_total. PostgreSQL 13 and older, or streaming off: protocol
// version 1 (the server spills large transactions on its side and sends
// them at commit).
//
// # Heartbeats
//
// Every heartbeat_interval (default 50ms) the reader runs
// pg_logical_emit_message(false, 'loanflow.heartbeat', <ms>), whose content
// is the database clock in milliseconds since the Unix epoch, read before
// the message is written. Heartbeats are exact (heartbeat.go): the message
// is written only once every transaction that may carry a commit time
// below that time has its commit record in the WAL already (transactions
// in progress when the time was read are waited for, unless they are seen
// idle in transaction, i.e. not committing). When that message arrives outside a
// transaction, the writer sends one heartbeat record to every partition of
// every view topic (e.g. customer_360) and of every table topic (unless the
// table is configured with heartbeats: false) and one to the heartbeat
// topic (__loanflow-heartbeat.<name>), and moves the flush position to the
// message, so the slot advances on an idle database. Keepalives from the
// server move the flush position too when nothing is pending (WAL of other
// databases).
//
// Every record of every topic decodes with a standard Confluent-Avro
// deserializer. A heartbeat's key is framed with the topic's key schema: in
// a view topic the Avro string "__loanflow_heartbeat"; in a table topic a
// Key record whose columns hold sentinels (that string, the int or long
// minimum, the nil UUID; a table whose key has another type gets no
// heartbeats). Its value is null: to a consumer that ignores heartbeats it
// is the tombstone of a key no row has. It carries the header
// "loanflow.heartbeat", whose value is the heartbeat's event time in
// milliseconds since the Unix epoch as decimal ASCII; the record timestamp
// is the same instant. Consumers that use heartbeats for event time (the
// decisions job's customer_360 source, the portfolio and cache jobs'
// table sources) recognise them by that header. The heartbeat topic (one
// partition, compacted) holds Debezium's heartbeat shape: key
// {serverName: <name>}, value {ts_ms, lsn}.
//
// A heartbeat of time H in a partition says "no record stamped before H is
// still to come in this partition": a watermark with no out-of-orderness
// bound. Change records carry the PostgreSQL commit time as their
// timestamp; view rows their change's commit time or, with stamp: query,
// the time their query ran.
//
// Why this holds for views: every transaction committed before H precedes
// the message in the WAL and is decoded first. Change records are
// produced as they are decoded; view rows are deferred, so before writing
// a heartbeat the writer refreshes the views (as it does before a Kafka
// commit): the rows of every key touched so far, read after those
// transactions, then the heartbeat, in one producer's order per partition.
// A heartbeat in customer_360 can thus serve as the table's watermark.
//
// # customer_360 stamps
//
// A view row is the result of its query when the reader refreshes the key,
// which may include transactions committed after the change that touched
// it (a reader working through a backlog reads today's state). A view's
// stamp says what the row carries as updated_at and record timestamp: the
// change's commit time (commit, the default), or the time the query ran,
// read after its snapshot (query: each row is the key's state as of its
// stamp, never a later state under an older commit time, but a version is
// valid only from when the reader read it).
//
// # Retained WAL
//
// For the whole of Run, across session restarts, a side connection reads
// the slot's row of pg_replication_slots every wal_guard.poll_interval and
// exports retained WAL (pg_current_wal_lsn() - restart_lsn), lag
// (pg_current_wal_lsn() - confirmed_flush_lsn), safe_wal_size and
// wal_status. With wal_guard.max_retained_bytes or min_safe_wal_bytes set,
// passing the limit (or a lost slot) logs an error, counts
// loanflow_cdc_wal_guard_trips_total and makes Run return ErrWALGuard;
// with action drop_slot the slot is dropped first, so PostgreSQL can free
// the WAL (the next start needs `loanflow cdc reset`). ReadStatus (`loanflow
// cdc status`) reads the same row and the committed position without
// disturbing a running reader.
//
// # Goroutines and errors
//
// Run owns everything: per session, one goroutine reads the replication
// connection (the snapshot first, then pgoutput), one writes Kafka, and one
// emits heartbeats; they are joined before a session ends. One more, for
// the whole of Run, watches the slot (Retained WAL); Run waits for it. The queue
// between reader and writer is bounded (queue_max_batches batches of at most
// 512 items). Retryable errors (lost connections, Kafka errors) end the
// session and a new one resumes from Kafka after a capped backoff; fatal
// errors (see errors.go: configuration, protocol, slot gone or recreated,
// schema rejected, fenced) are returned by Run.
//
// Metrics (label reader): loanflow_cdc_replication_lag_bytes,
// loanflow_cdc_replication_lag_seconds, loanflow_cdc_last_commit_timestamp_seconds
// (heartbeats commit too, so its age stays near heartbeat_interval on a
// healthy reader and grows on a stalled one), loanflow_cdc_changes_total
// (labels table, op; created at 0 for every published table),
// loanflow_cdc_changes_per_second, loanflow_cdc_committed_lsn,
// loanflow_cdc_commit_latency_seconds, loanflow_cdc_snapshot_rows_total,
// loanflow_cdc_snapshot_rows_expected, loanflow_cdc_snapshot_progress_ratio,
// loanflow_cdc_kafka_commits_total, loanflow_cdc_dead_letters_total,
// loanflow_cdc_heartbeats_total, loanflow_cdc_heartbeat_waits_total,
// loanflow_cdc_heartbeat_emit_seconds, loanflow_cdc_session_restarts_total;
// from the slot watch: loanflow_cdc_slot_retained_wal_bytes,
// loanflow_cdc_slot_safe_wal_bytes (+Inf without max_slot_wal_keep_size),
// loanflow_cdc_slot_wal_status (label status), loanflow_cdc_slot_active,
// loanflow_cdc_slot_last_poll_timestamp_seconds,
// loanflow_cdc_slot_poll_errors_total, loanflow_cdc_wal_guard_trips_total;
// loanflow_cdc_replication_lag_bytes is the slot watch's lag.
package postgres

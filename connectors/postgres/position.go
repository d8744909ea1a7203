package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Position is the source position committed in Kafka with the changes it
// covers (one record per Kafka transaction in the positions topic, keyed
// by the reader's name).
type Position struct {
	// Slot the position belongs to.
	Slot string `json:"slot"`
	// LSN is the commit LSN of the newest PostgreSQL transaction with
	// changes in Kafka.
	LSN pglogrepl.LSN `json:"lsn"`
	// Changes is how many changes of transaction LSN are in Kafka, and
	// Complete whether that is all of them (a transaction larger than
	// txn_max_records is split over several Kafka transactions).
	Changes  int  `json:"changes"`
	Complete bool `json:"complete"`
	// FlushLSN is the LSN up to which everything is in Kafka: the slot's
	// confirmed_flush_lsn may advance to it and never further.
	FlushLSN pglogrepl.LSN `json:"flush_lsn"`
	// XID is the transaction id of transaction LSN: a slot that restarts
	// before LSN (PostgreSQL persists a slot's position at checkpoints, so
	// a server crash moves it back) must decode that same transaction again,
	// which proves the server's WAL is the history the position was read
	// from.
	XID uint32 `json:"xid,omitempty"`
	// SystemID and Timeline identify the server's WAL history
	// (IDENTIFY_SYSTEM) and SlotNonce the slot (the content of the
	// loanflow.slot message written right after the slot was created). A
	// reader refuses to resume from a position whose identity differs from
	// the server's. Empty in positions written before they existed.
	SystemID  string `json:"system_id,omitempty"`
	Timeline  int32  `json:"timeline,omitempty"`
	SlotNonce string `json:"slot_nonce,omitempty"`
	// Snapshot is set while the initial snapshot is in progress.
	Snapshot *SnapshotProgress `json:"snapshot,omitempty"`
	// Incremental is set while watermark-based snapshots run (tables added
	// later, `loanflow cdc snapshot`, or the rest of an interrupted initial
	// snapshot).
	Incremental *IncrementalProgress `json:"incremental,omitempty"`
	// Tables are the tables whose snapshot is complete (schema.table); a
	// published table missing from them is snapshotted incrementally.
	// Nil in positions written before it existed (then every published
	// table counts as complete).
	Tables []string `json:"tables"`
	// Completed is the outcome of each table's last incremental snapshot
	// (at most maxCompleted tables, the oldest requests dropped first):
	// `loanflow cdc snapshot` waits for its request there.
	Completed map[string]CompletedSnapshot `json:"completed,omitempty"`
	// Txn is the transaction metadata of transaction LSN while it is split
	// over Kafka transactions (ProvideTransactionMetadata; txmeta.go).
	Txn *TxnProgress `json:"txn,omitempty"`
	// CommittedAt is when the Kafka transaction was committed (writer
	// clock, informational).
	CommittedAt time.Time `json:"committed_at"`
}

// SnapshotProgress is the position of an unfinished initial snapshot.
type SnapshotProgress struct {
	// ConsistentLSN is the slot's consistent point the snapshot is taken at.
	ConsistentLSN pglogrepl.LSN `json:"consistent_lsn"`
	// Rows read so far.
	Rows int64 `json:"rows"`
	// Table is the table being read and LastKey the text of the key
	// columns of its last row committed (tables are read in key order);
	// Done the tables read completely. An interrupted snapshot continues
	// from there, incrementally.
	Table   string   `json:"table,omitempty"`
	LastKey []string `json:"last_key,omitempty"`
	Done    []string `json:"done,omitempty"`
	// XID is the snapshot's xmin, written to source.txId of its rows.
	XID uint32 `json:"xid,omitempty"`
}

// IncrementalProgress is the state of watermark-based snapshots.
type IncrementalProgress struct {
	// Queue holds the tables still to read, in order.
	Queue []string `json:"queue,omitempty"`
	// Table is the table being read, LastKey the text of the key columns
	// of its last row written (nil: from the start).
	Table   string   `json:"table,omitempty"`
	LastKey []string `json:"last_key,omitempty"`
	// Rows written so far by the current table's snapshot.
	Rows int64 `json:"rows"`
	// Read counts the rows the current table's chunks read (Rows plus the
	// rows dropped because the stream carried a newer image), Chunks its
	// chunks written, and Estimate its row count as the reader estimated it
	// when the table started (pg_class.reltuples, or count(*) for a table
	// never analyzed): the progress `loanflow cdc snapshot` shows.
	Read     int64 `json:"read,omitempty"`
	Chunks   int64 `json:"chunks,omitempty"`
	Estimate int64 `json:"estimate,omitempty"`
	// Started is when the current table's first chunk was asked for
	// (writer clock).
	Started time.Time `json:"started,omitzero"`
	// Requested is the LSN of the newest loanflow.signal that asked for
	// each queued (or running) table.
	Requested map[string]pglogrepl.LSN `json:"requested,omitempty"`
}

// CompletedSnapshot is the outcome of a table's incremental snapshot.
type CompletedSnapshot struct {
	// Request is the LSN of the signal it answered (0: a table added to
	// the config, or the rest of an interrupted initial snapshot).
	Request pglogrepl.LSN `json:"request"`
	// LSN is the high watermark of its last chunk.
	LSN    pglogrepl.LSN `json:"lsn"`
	Rows   int64         `json:"rows"`
	Read   int64         `json:"read"`
	Chunks int64         `json:"chunks"`
	// Started and Finished are the writer's clock at the table's first
	// chunk request and at its last chunk.
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Error says why the table was not (completely) read: not published
	// by this reader, or unreadable (dropped, no access).
	Error string `json:"error,omitempty"`
}

// maxCompleted bounds IncrementalProgress.Completed.
const maxCompleted = 64

// active reports whether a table is being read or queued.
func (p *IncrementalProgress) active() bool { return p != nil && (p.Table != "" || len(p.Queue) > 0) }

// clone returns a deep copy (positions are values; their slices are not).
func (p Position) clone() Position {
	if p.Incremental != nil {
		inc := *p.Incremental
		inc.Queue = slices.Clone(inc.Queue)
		inc.LastKey = slices.Clone(inc.LastKey)
		inc.Requested = maps.Clone(inc.Requested)
		p.Incremental = &inc
	}
	if p.Tables != nil {
		p.Tables = append([]string{}, p.Tables...)
	}
	p.Txn = p.Txn.clone()
	p.Completed = maps.Clone(p.Completed)
	return p
}

// skip reports how many of a transaction's changes are already in Kafka:
// all (-1) or the first n.
func (p *Position) skip(commitLSN pglogrepl.LSN) int {
	switch {
	case p.Snapshot != nil || p.LSN == 0:
		return 0
	case commitLSN < p.LSN:
		return -1
	case commitLSN == p.LSN && p.Complete:
		return -1
	case commitLSN == p.LSN:
		return p.Changes
	}
	return 0
}

// positionRecord is the position record of the reader name.
func positionRecord(topic, name string, p Position) (*kgo.Record, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encoding position: %w", err)
	}
	return &kgo.Record{Topic: topic, Key: []byte(name), Value: b, Partition: 0, Context: manualPartition}, nil
}

// sentinelKey is the key of the record a session writes to find the end
// of the positions topic.
func sentinelKey(name string) []byte { return []byte("__sentinel__" + name) }

// readPosition fences older producers with the same transactional id (the
// transaction that writes a sentinel record initialises the producer id,
// which aborts a zombie's open transaction) and then reads the positions
// topic with read_committed up to that sentinel: the last position of name
// before it is the committed position.
func readPosition(ctx context.Context, prod *kgo.Client, seeds []string, topic, name string, skips map[pglogrepl.LSN]string) (Position, bool, error) {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	sentinel := []byte(hex.EncodeToString(nonce))
	if err := prod.BeginTransaction(); err != nil {
		return Position{}, false, fmt.Errorf("beginning fencing transaction: %w", err)
	}
	rec := &kgo.Record{Topic: topic, Key: sentinelKey(name), Value: sentinel, Partition: 0, Context: manualPartition}
	if err := prod.ProduceSync(ctx, rec).FirstErr(); err != nil {
		_ = prod.EndTransaction(context.WithoutCancel(ctx), kgo.TryAbort)
		return Position{}, false, fmt.Errorf("writing position sentinel: %w", err)
	}
	if err := prod.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return Position{}, false, fmt.Errorf("committing position sentinel: %w", err)
	}
	cons, err := kgo.NewClient(
		kgo.SeedBrokers(seeds...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
	)
	if err != nil {
		return Position{}, false, fmt.Errorf("creating position consumer: %w", err)
	}
	defer cons.Close()
	return scanPositions(ctx, cons, name, sentinel, skips)
}

// skipPrefix starts the key of an operator's skip record: <name>/skip/<lsn>.
func skipPrefix(name string) string { return name + "/skip/" }

func scanPositions(ctx context.Context, cons *kgo.Client, name string, sentinel []byte, skips map[pglogrepl.LSN]string) (Position, bool, error) {
	var (
		pos   Position
		found bool
	)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		fs := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return pos, found, fmt.Errorf("reading positions topic: %w", err)
		}
		for _, e := range fs.Errors() {
			return pos, found, fmt.Errorf("reading positions topic %s: %w", e.Topic, e.Err)
		}
		done := false
		var bad error
		fs.EachRecord(func(r *kgo.Record) {
			switch {
			case done:
			case string(r.Key) == string(sentinelKey(name)):
				done = string(r.Value) == string(sentinel)
			case strings.HasPrefix(string(r.Key), skipPrefix(name)):
				lsn, err := pglogrepl.ParseLSN(strings.TrimPrefix(string(r.Key), skipPrefix(name)))
				if err == nil && r.Value != nil {
					skips[lsn] = string(r.Value)
				} else if err == nil {
					delete(skips, lsn)
				}
			case string(r.Key) == name && r.Value == nil:
				pos, found = Position{}, false // reset by an operator
			case string(r.Key) == name:
				var p Position
				if err := json.Unmarshal(r.Value, &p); err != nil {
					bad = fmt.Errorf("%w: position record at offset %d of %s: %v", ErrProtocol, r.Offset, r.Topic, err)
					return
				}
				pos, found = p, true
			}
		})
		if bad != nil {
			return pos, found, bad
		}
		if done {
			return pos, found, nil
		}
	}
}

// ResetPosition deletes the committed position of the reader cfg names
// (a tombstone in the positions topic): its next start takes a new
// snapshot with a new slot, as a first start does. The reader must be
// stopped; the old slot, if any, is dropped by that start.
func ResetPosition(ctx context.Context, cfg Config) error {
	cfg = cfg.WithDefaults()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		return fmt.Errorf("%w: kafka client: %v", ErrConfig, err)
	}
	defer cl.Close()
	rec := &kgo.Record{Topic: cfg.PositionsTopic, Partition: 0, Key: []byte(cfg.Name)}
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return fmt.Errorf("deleting the position of %s: %w", cfg.Name, err)
	}
	return nil
}

// SkipChange records that the change at lsn (a source.lsn, or the LSN a
// reader's error names) must not stop the reader of cfg: at its next start
// the reader writes that change to the dead-letter topic (reason skipped,
// with reason) instead of the table topic, and goes on. The record stays
// in the positions topic (compacted), so the skip holds across restarts.
func SkipChange(ctx context.Context, cfg Config, lsn pglogrepl.LSN, reason string) error {
	cfg = cfg.WithDefaults()
	if lsn == 0 {
		return fmt.Errorf("%w: skip: LSN 0/0 names no change", ErrConfig)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		return fmt.Errorf("%w: kafka client: %v", ErrConfig, err)
	}
	defer cl.Close()
	if reason == "" {
		reason = "skipped by an operator"
	}
	rec := &kgo.Record{Topic: cfg.PositionsTopic, Partition: 0, Key: []byte(skipPrefix(cfg.Name) + lsn.String()), Value: []byte(reason)}
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return fmt.Errorf("recording the skip of %s: %w", lsn, err)
	}
	return nil
}

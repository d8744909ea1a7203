package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
	// Snapshot is set while the initial snapshot is in progress.
	Snapshot *SnapshotProgress `json:"snapshot,omitempty"`
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
func readPosition(ctx context.Context, prod *kgo.Client, seeds []string, topic, name string) (Position, bool, error) {
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
	return scanPositions(ctx, cons, name, sentinel)
}

func scanPositions(ctx context.Context, cons *kgo.Client, name string, sentinel []byte) (Position, bool, error) {
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

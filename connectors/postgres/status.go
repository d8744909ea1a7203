package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Status is what `loanflow cdc status` shows: the slot as PostgreSQL sees
// it and the position the reader committed in Kafka.
type Status struct {
	Reader string `json:"reader"`
	Slot   string `json:"slot"`
	// SlotState is the slot's row of pg_replication_slots.
	SlotState SlotState `json:"slot_state"`
	// Position is the committed position (nil when Kafka holds none, or
	// when no brokers were given).
	Position *Position `json:"position"`
	// PositionError says why the position could not be read.
	PositionError string `json:"position_error,omitempty"`
	// LastCommit is when the reader last committed a Kafka transaction
	// (the position's committed_at; heartbeats commit too).
	LastCommit *time.Time `json:"last_commit,omitempty"`
	// BytesBehindPosition is the server's WAL end minus the position's
	// flush LSN (what is not yet in Kafka).
	BytesBehindPosition *int64 `json:"bytes_behind_position,omitempty"`
}

// ReadStatus reads the status of the reader cfg names without disturbing
// it: the slot from pg_replication_slots and the committed position from
// the positions topic (read_committed, up to a sentinel record it writes
// without a transaction, so the running reader is not fenced). Without
// brokers in cfg only the slot is read.
func ReadStatus(ctx context.Context, cfg Config) (Status, error) {
	cfg = cfg.WithDefaults()
	st := Status{Reader: cfg.Name, Slot: cfg.Slot}
	if cfg.DatabaseURL == "" {
		return st, fmt.Errorf("%w: database_url is required (postgres://user@host:port/db)", ErrConfig)
	}
	conn, err := connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return st, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if st.SlotState, err = readSlotState(ctx, conn, cfg.Slot); err != nil {
		return st, err
	}
	if len(cfg.Brokers) == 0 {
		st.PositionError = "no brokers given: the committed position was not read"
		return st, nil
	}
	pos, found, err := peekPosition(ctx, cfg)
	if err != nil {
		st.PositionError = err.Error()
		return st, nil
	}
	if !found {
		st.PositionError = "Kafka holds no position for this reader (never started, or reset)"
		return st, nil
	}
	st.Position = &pos
	if !pos.CommittedAt.IsZero() {
		at := pos.CommittedAt
		st.LastCommit = &at
	}
	if cur, err := pglogrepl.ParseLSN(st.SlotState.CurrentWALLSN); err == nil && pos.FlushLSN > 0 {
		n := max(int64(cur)-int64(pos.FlushLSN), 0)
		st.BytesBehindPosition = &n
	}
	return st, nil
}

// peekPosition reads the committed position like readPosition, but ends
// the scan at a sentinel written without a transaction: it fences nothing.
func peekPosition(ctx context.Context, cfg Config) (Position, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{cfg.PositionsTopic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return Position{}, false, fmt.Errorf("%w: kafka client: %v", ErrConfig, err)
	}
	defer cl.Close()
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	sentinel := []byte("status-" + hex.EncodeToString(nonce))
	rec := &kgo.Record{Topic: cfg.PositionsTopic, Partition: 0, Key: sentinelKey(cfg.Name), Value: sentinel}
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		if errors.Is(err, kerr.UnknownTopicOrPartition) {
			return Position{}, false, fmt.Errorf("positions topic %s does not exist: the reader never committed (or another positions_topic is configured)", cfg.PositionsTopic)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return Position{}, false, fmt.Errorf("reading positions topic %s: Kafka at %v did not answer in 30s", cfg.PositionsTopic, cfg.Brokers)
		}
		return Position{}, false, fmt.Errorf("reading positions topic %s: %w", cfg.PositionsTopic, err)
	}
	return scanPositions(ctx, cl, cfg.Name, sentinel, map[pglogrepl.LSN]string{})
}

// WatchPositions follows the positions the reader cfg names commits (read
// committed, from the start of the positions topic, without writing to
// it) and calls fn with each, oldest first, until fn returns true, ctx
// ends or Kafka fails. `loanflow cdc snapshot` shows progress with it.
func WatchPositions(ctx context.Context, cfg Config, fn func(Position) bool) error {
	cfg = cfg.WithDefaults()
	if len(cfg.Brokers) == 0 {
		return fmt.Errorf("%w: brokers are required to follow the reader's position", ErrConfig)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{cfg.PositionsTopic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		return fmt.Errorf("%w: kafka client: %v", ErrConfig, err)
	}
	defer cl.Close()
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, e := range fs.Errors() {
			if errors.Is(e.Err, kerr.UnknownTopicOrPartition) {
				continue // the reader has not committed yet
			}
			return fmt.Errorf("reading positions topic %s: %w", e.Topic, e.Err)
		}
		stop := false
		var bad error
		fs.EachRecord(func(r *kgo.Record) {
			if stop || bad != nil || string(r.Key) != cfg.Name || r.Value == nil {
				return
			}
			var p Position
			if err := json.Unmarshal(r.Value, &p); err != nil {
				bad = fmt.Errorf("%w: position record at offset %d of %s: %v", ErrProtocol, r.Offset, r.Topic, err)
				return
			}
			stop = fn(p)
		})
		if bad != nil {
			return bad
		}
		if stop {
			return nil
		}
	}
}

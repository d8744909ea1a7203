package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// BenchConfig configures RunBenchmark.
type BenchConfig struct {
	// DatabaseURL of an empty database on a cluster with wal_level=logical.
	DatabaseURL string
	// Brokers and SchemaRegistryURL the reader writes to.
	Brokers           []string
	SchemaRegistryURL string
	// PGBinDir holds pg_recvlogical (localsvc.Postgres.BinDir()).
	PGBinDir string
	// Name prefixes the benchmark's slots, publication and topics.
	// Default "cdcbench".
	Name string
	// BacklogChanges is the WAL backlog both pg_recvlogical and the reader
	// drain (saturation). Default 200000.
	BacklogChanges int
	// Rate is the fixed rate in changes per second. Default 10000.
	Rate int
	// RateDuration is how long the fixed-rate and the concurrent saturation
	// phases run. Default 10s.
	RateDuration time.Duration
	// Logger. Default discards.
	Logger *slog.Logger
}

// BenchResult holds the figures of one benchmark run.
type BenchResult struct {
	// RecvlogicalChangesPerSec is pg_recvlogical's raw decode rate of the
	// backlog (pgoutput to /dev/null): the ceiling.
	RecvlogicalChangesPerSec float64
	// BacklogChangesPerSec is the reader's rate draining the same backlog
	// into Kafka transactions (Avro, registry, position).
	BacklogChangesPerSec float64
	// RatioToRecvlogical is BacklogChangesPerSec / RecvlogicalChangesPerSec.
	RatioToRecvlogical float64
	// Fixed is the fixed-rate phase, Saturation the phase where the load
	// generator runs as fast as it can while the reader streams.
	Fixed, Saturation Phase
}

// Phase is the figures of one streaming phase: changes committed to Kafka
// per second and the latency from PostgreSQL commit to Kafka commit.
type Phase struct {
	OfferedChangesPerSec   float64
	CommittedChangesPerSec float64
	LatencyP50, LatencyP90 time.Duration
	LatencyP99, LatencyMax time.Duration
	Transactions           int
}

func (c *BenchConfig) defaults() {
	if c.Name == "" {
		c.Name = "cdcbench"
	}
	if c.BacklogChanges == 0 {
		c.BacklogChanges = 200000
	}
	if c.Rate == 0 {
		c.Rate = 10000
	}
	if c.RateDuration == 0 {
		c.RateDuration = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// benchRows is the number of rows per generated transaction.
const benchRows = 100

// RunBenchmark measures the reader on table <name>_t: commit-to-commit
// latency at a fixed rate, the rate at which it drains a WAL backlog beside
// pg_recvlogical's rate on the same WAL, and throughput and latency at
// saturation (the generator as fast as it can go). It creates and drops its
// own slots.
func RunBenchmark(ctx context.Context, cfg BenchConfig) (BenchResult, error) {
	cfg.defaults()
	var res BenchResult
	conn, err := connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	b := &bench{cfg: cfg, conn: conn, table: cfg.Name + "_t"}
	defer b.cleanup()
	if err := b.setup(ctx); err != nil {
		return res, err
	}
	// The fixed rate runs first, on a quiet system: after the backlog phase
	// an in-process broker holds every record in memory and its garbage
	// collection shows up as latency spikes of the whole process.
	if res.Fixed, err = b.stream(ctx, cfg.Rate); err != nil {
		return res, err
	}
	if err := b.backlog(ctx, &res); err != nil {
		return res, err
	}
	if res.Saturation, err = b.stream(ctx, 0); err != nil {
		return res, err
	}
	return res, nil
}

type bench struct {
	cfg    BenchConfig
	conn   *pgx.Conn
	table  string
	nextID int64

	mu         sync.Mutex
	lat        []time.Duration
	changes    int
	flushed    pglogrepl.LSN
	firstAt    time.Time // first commit with changes
	firstCount int       // changes in it
}

func (b *bench) setup(ctx context.Context) error {
	t := pgx.Identifier{b.table}.Sanitize()
	for _, sql := range []string{
		"SET synchronous_commit = on", // commits reach the walsender at once
		"DROP TABLE IF EXISTS " + t,
		"CREATE TABLE " + t + " (id bigint PRIMARY KEY, v text NOT NULL, n numeric(12,2) NOT NULL, ts timestamptz NOT NULL DEFAULT now())",
		"ALTER TABLE " + t + " REPLICA IDENTITY FULL",
	} {
		if _, err := b.conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("bench setup: %s: %w", sql, err)
		}
	}
	return nil
}

func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range []string{b.cfg.Name + "_recv", b.cfg.Name} {
		_, _ = b.conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", s)
	}
}

func (b *bench) readerConfig() Config {
	return Config{
		Name: b.cfg.Name, DatabaseURL: b.cfg.DatabaseURL, Brokers: b.cfg.Brokers, SchemaRegistryURL: b.cfg.SchemaRegistryURL,
		Tables: []TableConfig{{Table: b.table}}, TopicPrefix: b.cfg.Name, PositionsTopic: b.cfg.Name + "_positions",
		Logger: b.cfg.Logger, OnCommit: b.onCommit, StatusInterval: 200 * time.Millisecond,
	}
}

func (b *bench) onCommit(ci CommitInfo) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range ci.CommitTimes {
		b.lat = append(b.lat, ci.At.Sub(t))
	}
	if ci.Position.Snapshot == nil {
		if b.firstAt.IsZero() && ci.Changes > 0 {
			b.firstAt, b.firstCount = ci.At, ci.Changes
		}
		b.changes += ci.Changes
		b.flushed = max(b.flushed, ci.Position.FlushLSN)
	}
}

func (b *bench) committed() (pglogrepl.LSN, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushed, b.changes
}

// startReader runs the reader until the returned stop is called.
func (b *bench) startReader(ctx context.Context) (stop func() error, err error) {
	r, err := NewReader(b.readerConfig())
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	var once sync.Once
	var runErr error
	return func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}, nil
}

// waitFlushed waits until the reader committed everything up to lsn.
func (b *bench) waitFlushed(ctx context.Context, lsn pglogrepl.LSN, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if f, _ := b.committed(); f >= lsn {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: reader did not reach %s within %v", lsn, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (b *bench) insertLSN(ctx context.Context) (pglogrepl.LSN, error) {
	var s string
	if err := b.conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(s)
}

// generate commits n changes (inserts, then updates of the same rows) in
// transactions of benchRows rows, on conn.
func (b *bench) generate(ctx context.Context, conn *pgx.Conn, n int) error {
	t := pgx.Identifier{b.table}.Sanitize()
	ins := "INSERT INTO " + t + " (id, v, n) SELECT g, 'v' || g, g * 0.01 FROM generate_series($1::bigint, $2::bigint) g"
	for done := 0; done < n; done += benchRows {
		lo := b.nextID
		b.nextID += benchRows
		if _, err := conn.Exec(ctx, ins, lo, lo+benchRows-1); err != nil {
			return fmt.Errorf("bench load: %w", err)
		}
	}
	return nil
}

// backlog builds a WAL backlog with both slots behind it and times
// pg_recvlogical and the reader draining it.
func (b *bench) backlog(ctx context.Context, res *BenchResult) error {
	stop, err := b.startReader(ctx) // creates publication and slot
	if err != nil {
		return err
	}
	start, _ := b.insertLSN(ctx)
	if err := b.waitFlushed(ctx, start, time.Minute); err != nil {
		stop()
		return err
	}
	if err := stop(); err != nil {
		return err
	}
	recv := b.cfg.Name + "_recv"
	if _, err := b.conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", recv); err != nil {
		return fmt.Errorf("bench: creating %s: %w", recv, err)
	}
	if err := b.generate(ctx, b.conn, b.cfg.BacklogChanges); err != nil {
		return err
	}
	end, err := b.insertLSN(ctx)
	if err != nil {
		return err
	}
	if res.RecvlogicalChangesPerSec, err = b.recvlogical(ctx, recv, end); err != nil {
		return err
	}
	b.mu.Lock()
	b.changes, b.lat, b.firstAt = 0, nil, time.Time{}
	b.mu.Unlock()
	if stop, err = b.startReader(ctx); err != nil {
		return err
	}
	defer stop()
	if err := b.waitFlushed(ctx, end, 10*time.Minute); err != nil {
		return err
	}
	b.mu.Lock()
	// From the first commit on: the reader's session start (fencing,
	// reading the position, connecting) is not decoding.
	res.BacklogChangesPerSec = float64(b.changes-b.firstCount) / time.Since(b.firstAt).Seconds()
	b.mu.Unlock()
	if res.RecvlogicalChangesPerSec > 0 {
		res.RatioToRecvlogical = res.BacklogChangesPerSec / res.RecvlogicalChangesPerSec
	}
	return stop()
}

// recvlogical times pg_recvlogical decoding slot up to end into /dev/null.
func (b *bench) recvlogical(ctx context.Context, slot string, end pglogrepl.LSN) (float64, error) {
	bin := filepath.Join(b.cfg.PGBinDir, "pg_recvlogical")
	cmd := exec.CommandContext(ctx, bin, "--dbname="+b.cfg.DatabaseURL, "--slot="+slot, "--start",
		"--endpos="+end.String(), "--file=/dev/null", "--no-loop",
		"--option=proto_version=1", "--option=publication_names="+b.cfg.Name)
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("bench: %s: %w\n%s", bin, err, out)
	}
	return float64(b.cfg.BacklogChanges) / time.Since(t0).Seconds(), nil
}

// stream runs the reader while a generator commits changes at rate per
// second (0: as fast as it can) for RateDuration, and reports what the
// reader committed and the latency of each transaction.
func (b *bench) stream(ctx context.Context, rate int) (Phase, error) {
	var ph Phase
	stop, err := b.startReader(ctx)
	if err != nil {
		return ph, err
	}
	defer stop()
	now, _ := b.insertLSN(ctx)
	if err := b.waitFlushed(ctx, now, time.Minute); err != nil {
		return ph, err
	}
	gen, err := connect(ctx, b.cfg.DatabaseURL)
	if err != nil {
		return ph, err
	}
	defer gen.Close(context.WithoutCancel(ctx))
	if _, err := gen.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		return ph, err
	}
	b.mu.Lock()
	b.changes, b.lat = 0, nil
	b.mu.Unlock()
	t0 := time.Now()
	offered := 0
	for time.Since(t0) < b.cfg.RateDuration {
		if err := b.generate(ctx, gen, benchRows); err != nil {
			return ph, err
		}
		offered += benchRows
		if rate > 0 {
			if ahead := time.Duration(float64(offered)/float64(rate)*float64(time.Second)) - time.Since(t0); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
	elapsed := time.Since(t0)
	end, _ := b.insertLSN(ctx)
	if err := b.waitFlushed(ctx, end, 5*time.Minute); err != nil {
		return ph, err
	}
	total := time.Since(t0)
	b.mu.Lock()
	defer b.mu.Unlock()
	ph.OfferedChangesPerSec = float64(offered) / elapsed.Seconds()
	ph.CommittedChangesPerSec = float64(b.changes) / total.Seconds()
	ph.Transactions = len(b.lat)
	if len(b.lat) == 0 {
		return ph, errors.New("bench: no transactions committed")
	}
	slices.Sort(b.lat)
	ph.LatencyP50 = b.lat[len(b.lat)/2]
	ph.LatencyP90 = b.lat[len(b.lat)*90/100]
	ph.LatencyP99 = b.lat[len(b.lat)*99/100]
	ph.LatencyMax = b.lat[len(b.lat)-1]
	return ph, stop()
}

package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
)

// runUntilError runs a reader and returns its Run error, or fails the
// test when the reader is still running after the commits of want rows
// (it returns nil then, to let the caller report what it delivered).
func (e *cdcEnv) runUntilError(cfg Config, limit time.Duration) error {
	e.t.Helper()
	r, err := NewReader(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	return r.Run(ctx)
}

// creates counts the op=c envelopes of a topic per id.
func (e *cdcEnv) creates(topic string) map[int32]int {
	e.t.Helper()
	out := map[int32]int{}
	for _, r := range e.readAll(topic) {
		if !r.heartbeat() && r.value != nil && (r.value["op"] == "c" || r.value["op"] == "r") {
			out[r.key["id"].(int32)]++
		}
	}
	return out
}

// lastPosition reads the reader's committed position.
func (e *cdcEnv) lastPosition(cfg Config) Position {
	e.t.Helper()
	var pos Position
	for _, r := range e.readRaw(cfg.PositionsTopic) {
		if string(r.rec.Key) == cfg.Name && r.rec.Value != nil {
			if err := json.Unmarshal(r.rec.Value, &pos); err != nil {
				e.t.Fatal(err)
			}
		}
	}
	return pos
}

// writePosition appends a position record for the reader (as an operator
// or a restored Kafka would).
func (e *cdcEnv) writePosition(cfg Config, pos Position) {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	b, _ := json.Marshal(pos)
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: cfg.PositionsTopic, Partition: 0, Key: []byte(cfg.Name), Value: b}).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
}

// TestPositionFromAnotherClusterRefused: a reader whose position was read
// from cluster A, pointed at cluster B (as after a dump/restore or a
// failover with a hand-made slot), stops with ErrSlotMismatch naming both
// system identifiers, and never confirms an LSN on B. Before positions
// carried the server's identity the reader ran on B, skipped B's new rows
// (their LSNs lie below A's position) and confirmed A's LSN on B's slot.
func TestPositionFromAnotherClusterRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE moved (id int PRIMARY KEY)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "moved"}}
	stop := e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	// Enough WAL on A that A's position is past B's WAL end.
	e.exec(c, "CREATE TABLE pad AS SELECT g, repeat('x', 200) AS p FROM generate_series(1, 200000) g")
	e.exec(c, "INSERT INTO moved SELECT generate_series(1, 10)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	posA := e.lastPosition(cfg)
	if posA.SystemID == "" || posA.Timeline == 0 || posA.SlotNonce == "" || posA.XID == 0 {
		t.Fatalf("position lacks the server's identity: %+v", posA)
	}

	b, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{Dir: testenv.Dir(t, "cluster_b")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	dsnB, err := b.CreateDatabase(ctx, "moved")
	if err != nil {
		t.Fatal(err)
	}
	cb := e.connTo(dsnB)
	e.exec(cb, "CREATE TABLE moved (id int PRIMARY KEY)")
	e.exec(cb, "CREATE PUBLICATION "+cfg.Name+" FOR TABLE moved")
	e.exec(cb, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", cfg.Name)
	e.exec(cb, "INSERT INTO moved SELECT generate_series(101, 110)")
	walEndB := e.currentLSN(cb)
	if walEndB >= posA.FlushLSN {
		t.Fatalf("cluster B's WAL (%s) is already past A's position %s; the test needs A ahead", walEndB, posA.FlushLSN)
	}

	cfgB := cfg
	cfgB.DatabaseURL = dsnB
	err = e.runUntilError(cfgB, time.Minute)
	if !errors.Is(err, ErrSlotMismatch) {
		t.Fatalf("Run on another cluster = %v, want ErrSlotMismatch", err)
	}
	if !strings.Contains(err.Error(), posA.SystemID) || !strings.Contains(err.Error(), "new snapshot") {
		t.Errorf("error does not name the systems or the fix: %v", err)
	}
	if got := e.confirmedFlush(cb, cfg.Name); got > walEndB {
		t.Errorf("B's slot confirmed %s, past B's WAL end %s", got, walEndB)
	}
	t.Logf("refused: %v", err)
}

func (e *cdcEnv) connTo(dsn string) *pgx.Conn {
	e.t.Helper()
	old := e.dsn
	e.dsn = dsn
	defer func() { e.dsn = old }()
	return e.conn()
}

// TestSlotBehindPosition: a slot that restarts before the committed
// position (here a copy of the slot taken earlier; a server crash does the
// same, since slots are persisted at checkpoints) is resumed only when the
// WAL it replays holds the position's own transaction: with a forged
// position (another transaction id at that LSN, as from another history)
// the reader stops with ErrSlotMismatch; with the true position it resumes
// and every row is in the topic exactly once.
func TestSlotBehindPosition(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE behind (id int PRIMARY KEY)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "behind"}}
	cfg.HeartbeatInterval = 0 // the position stays at a transaction
	stop := e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO behind SELECT generate_series(1, 10)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	e.exec(c, "SELECT pg_copy_logical_replication_slot($1, $2)", cfg.Name, cfg.Name+"_old")
	e.exec(c, "INSERT INTO behind SELECT generate_series(11, 20)")
	e.exec(c, "INSERT INTO behind SELECT generate_series(21, 30)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	pos := e.lastPosition(cfg)
	e.exec(c, "SELECT pg_drop_replication_slot($1)", cfg.Name)
	e.exec(c, "SELECT pg_copy_logical_replication_slot($1, $2)", cfg.Name+"_old", cfg.Name)
	e.exec(c, "SELECT pg_drop_replication_slot($1)", cfg.Name+"_old")
	if got := e.confirmedFlush(c, cfg.Name); got >= pos.LSN {
		t.Fatalf("restored slot at %s, not behind the position %s", got, pos.LSN)
	}
	e.exec(c, "INSERT INTO behind SELECT generate_series(31, 40)")

	forged := pos
	forged.XID++
	e.writePosition(cfg, forged)
	err := e.runUntilError(cfg, time.Minute)
	if !errors.Is(err, ErrSlotMismatch) {
		t.Fatalf("Run with a position from another history = %v, want ErrSlotMismatch", err)
	}
	t.Logf("refused: %v", err)

	e.writePosition(cfg, pos)
	e.runReader(cfg)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	got := e.creates(cfg.TopicPrefix + ".public.behind")
	for id := int32(1); id <= 40; id++ {
		if got[id] != 1 {
			t.Errorf("id %d written %d times, want once", id, got[id])
		}
	}
	if len(got) != 40 {
		t.Errorf("%d ids in the topic, want 40", len(got))
	}
}

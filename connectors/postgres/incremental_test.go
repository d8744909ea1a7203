package postgres

import (
	"context"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// posWatch records the reader's committed positions (OnCommit).
type posWatch struct {
	mu   sync.Mutex
	last Position
	n    int
}

func (p *posWatch) on(ci CommitInfo) {
	p.mu.Lock()
	p.last, p.n = ci.Position, p.n+1
	p.mu.Unlock()
}

// wait waits until cond holds for the last committed position.
func (p *posWatch) wait(t *testing.T, what string, cond func(Position) bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		ok := cond(p.last)
		p.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last position %+v", what, p.last)
}

// tableState is a table's rows (id → v, n as text).
func tableState(t *testing.T, c *pgx.Conn, table string) map[int32][2]string {
	t.Helper()
	want := map[int32][2]string{}
	rows, err := c.Query(context.Background(), "SELECT id, v, n::text FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int32
		var v, n string
		if err := rows.Scan(&id, &v, &n); err != nil {
			t.Fatal(err)
		}
		want[id] = [2]string{v, n}
	}
	return want
}

// checkTopicEqualsTable folds the topic and compares it with the table;
// it returns the records and the number of snapshot reads per id.
func (e *cdcEnv) checkTopicEqualsTable(t *testing.T, c *pgx.Conn, table, topic string) ([]consumed, map[int32]int) {
	t.Helper()
	recs := e.readAll(topic)
	got := lastValues(t, recs)
	want := tableState(t, c, table)
	if len(got) != len(want) {
		t.Errorf("%s: topic has %d keys, table has %d rows", topic, len(got), len(want))
	}
	bad := 0
	for id, w := range want {
		g, ok := got[id]
		if !ok || g["v"] != w[0] || g["n"].(*big.Rat).FloatString(2) != w[1] {
			if bad++; bad <= 10 {
				t.Errorf("%s id %d: topic has %v, table has %v", topic, id, g, w)
			}
		}
	}
	reads := map[int32]int{}
	for _, r := range recs {
		if r.value != nil && r.value["op"] == "r" {
			reads[r.key["id"].(int32)]++
			src := r.value["source"].(map[string]any)
			if src["lsn"] == nil || src["txId"] == nil || src["sequence"] == nil {
				t.Fatalf("snapshot read without source.lsn/txId/sequence: %v", src)
			}
		}
	}
	return recs, reads
}

// TestInitialSnapshotResumes: an initial snapshot committed in chunks and
// interrupted after a few of them continues where it stopped (the rest
// read incrementally while streaming from the slot's consistent point):
// every row is read once, rows changed meanwhile end in their current
// state, and the snapshot took many Kafka transactions, not one. Before,
// an interrupted snapshot started over with a new slot and wrote every
// committed chunk's rows again.
func TestInitialSnapshotResumes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL, n numeric(12,2) NOT NULL)")
	e.exec(c, "ALTER TABLE items REPLICA IDENTITY FULL")
	e.exec(c, "INSERT INTO items SELECT g, 'seed' || g, g * 1.5 FROM generate_series(0, 19999) g")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "items"}}
	cfg.SnapshotTxnMaxRows = 1000
	var pw posWatch
	var stopAt atomic.Bool
	cfg.OnCommit = func(ci CommitInfo) {
		pw.on(ci)
		if s := ci.Position.Snapshot; s != nil && s.Rows >= 5000 {
			stopAt.Store(true)
		}
	}
	stop := e.runReader(cfg)
	for !stopAt.Load() {
		time.Sleep(5 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	interrupted := e.lastPosition(cfg)
	if interrupted.Snapshot == nil || interrupted.Snapshot.Rows >= 19999 {
		t.Fatalf("the snapshot was not interrupted: %+v", interrupted)
	}
	t.Logf("interrupted after %d rows (table %s, last key %v)", interrupted.Snapshot.Rows, interrupted.Snapshot.Table, interrupted.Snapshot.LastKey)
	// Changes while the reader is down, in both the committed and the
	// unread range, then more while the rest is read.
	e.exec(c, "UPDATE items SET v = 'down', n = n + 1 WHERE id % 97 = 0")
	e.exec(c, "DELETE FROM items WHERE id % 101 = 0")
	e.exec(c, "INSERT INTO items SELECT g, 'new' || g, 1 FROM generate_series(20000, 20499) g")
	commitsBefore := pw.n
	e.runReader(cfg)
	if err := workload(ctx, c, "items", 5000, 21000, 7); err != nil {
		t.Fatal(err)
	}
	pw.wait(t, "the snapshot to finish", func(p Position) bool {
		return p.Snapshot == nil && p.Incremental == nil && slices.Contains(p.Tables, "public.items")
	})
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), 2*time.Minute)
	_, reads := e.checkTopicEqualsTable(t, c, "items", cfg.TopicPrefix+".public.items")
	for id, n := range reads {
		if n != 1 {
			t.Errorf("id %d read %d times by the snapshot, want once", id, n)
		}
	}
	if len(reads) < 15000 {
		t.Errorf("only %d ids read by the snapshot", len(reads))
	}
	if commitsBefore < 5 {
		t.Errorf("%d Kafka commits before the interruption: the snapshot is not chunked", commitsBefore)
	}
}

// TestIncrementalSnapshots: a table added to the config later is
// snapshotted incrementally (interleaved with a workload on it), `loanflow
// cdc snapshot` (SignalSnapshot) re-reads a table while the reader runs,
// and a table removed from the config leaves the publication. The topics
// end equal to the tables; the progress metric falls back to 0.
func TestIncrementalSnapshots(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	for _, tb := range []string{"a", "b"} {
		e.exec(c, "CREATE TABLE "+tb+" (id int PRIMARY KEY, v text NOT NULL, n numeric(12,2) NOT NULL)")
		e.exec(c, "ALTER TABLE "+tb+" REPLICA IDENTITY FULL")
		e.exec(c, "INSERT INTO "+tb+" SELECT g, 'seed' || g, g FROM generate_series(0, 4999) g")
	}
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "a"}}
	cfg.SnapshotTxnMaxRows = 500
	var pw posWatch
	cfg.OnCommit = pw.on
	stop := e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// b is added: snapshotted incrementally while a workload changes it.
	cfg.Tables = []TableConfig{{Table: "a"}, {Table: "b"}}
	stop = e.runReader(cfg)
	if err := workload(ctx, c, "b", 4000, 6000, 3); err != nil {
		t.Fatal(err)
	}
	pw.wait(t, "b's snapshot", func(p Position) bool {
		return p.Incremental == nil && slices.Contains(p.Tables, "public.b")
	})
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	_, readsB := e.checkTopicEqualsTable(t, c, "b", cfg.TopicPrefix+".public.b")
	if len(readsB) < 1000 {
		t.Errorf("b: only %d rows read by the incremental snapshot", len(readsB))
	}

	// a is re-read on request, interleaved with a workload on a.
	if err := SignalSnapshot(ctx, e.dsn, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	pw.wait(t, "a's snapshot to start", func(p Position) bool { return p.Incremental != nil })
	if err := workload(ctx, c, "a", 3000, 6000, 4); err != nil {
		t.Fatal(err)
	}
	pw.wait(t, "a's snapshot", func(p Position) bool { return p.Incremental == nil })
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	_, readsA := e.checkTopicEqualsTable(t, c, "a", cfg.TopicPrefix+".public.a")
	twice := 0
	for _, n := range readsA {
		if n == 2 {
			twice++
		}
	}
	if twice < 1000 {
		t.Errorf("a: %d ids read by both the initial and the requested snapshot", twice)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// b is removed from the config: it leaves the publication.
	cfg.Tables = []TableConfig{{Table: "a"}}
	e.runReader(cfg)
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'b'", cfg.Name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b is still in the publication")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

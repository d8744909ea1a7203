package postgres

import (
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// workload runs n mixed INSERT/UPDATE/DELETE changes on table t(id, v, n)
// in transactions of 1-20 changes over keys [0, keys).
func workload(ctx context.Context, c *pgx.Conn, table string, n, keys int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 1))
	for done := 0; done < n; {
		b := &pgx.Batch{}
		k := 1 + rng.IntN(20)
		for i := 0; i < k && done < n; i++ {
			id := rng.IntN(keys)
			switch rng.IntN(10) {
			case 0, 1, 2, 3:
				b.Queue("INSERT INTO "+table+" (id, v, n) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = excluded.n", id, "ins"+strconv.Itoa(done), fmt.Sprintf("%d.%02d", rng.IntN(100000), rng.IntN(100)))
			case 4, 5, 6, 7:
				b.Queue("UPDATE "+table+" SET v = $2, n = n + 1 WHERE id = $1", id, "upd"+strconv.Itoa(done))
			default:
				b.Queue("DELETE FROM "+table+" WHERE id = $1", id)
			}
			done++
		}
		if err := c.SendBatch(ctx, wrapTx(b)).Close(); err != nil {
			return err
		}
	}
	return nil
}

// wrapTx makes a batch one transaction.
func wrapTx(b *pgx.Batch) *pgx.Batch {
	out := &pgx.Batch{}
	out.Queue("BEGIN")
	out.QueuedQueries = append(out.QueuedQueries, b.QueuedQueries...)
	out.Queue("COMMIT")
	return out
}

// lastValues folds an envelope topic into the last row per key.
func lastValues(t *testing.T, recs []consumed) map[int32]map[string]any {
	t.Helper()
	rows := map[int32]map[string]any{}
	for _, r := range recs {
		if r.heartbeat() {
			continue
		}
		if r.key == nil {
			t.Fatalf("record without key at offset %d: %v", r.rec.Offset, r.value)
		}
		id := r.key["id"].(int32)
		if r.value == nil {
			delete(rows, id)
			continue
		}
		switch op := r.value["op"].(string); op {
		case "c", "u", "r":
			rows[id] = r.value["after"].(map[string]any)
		case "d":
			// the tombstone that follows removes the key
		default:
			t.Fatalf("unexpected op %q", op)
		}
	}
	return rows
}

func TestSnapshotThenStream(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL, n numeric(12,2) NOT NULL)")
	e.exec(c, "ALTER TABLE items REPLICA IDENTITY FULL")
	e.exec(c, "INSERT INTO items SELECT g, 'seed' || g, g * 1.5 FROM generate_series(0, 19999) g")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "items"}}
	cfg.SnapshotTxnMaxRows = 5000
	var streaming atomic.Bool
	cfg.OnCommit = func(ci CommitInfo) {
		if ci.Position.Snapshot == nil && ci.Position.FlushLSN > 0 {
			streaming.Store(true)
		}
	}
	// Insert rows (ids 100000+) while the snapshot runs: each must appear
	// exactly once, as a snapshot read or as a streamed create.
	ins := e.conn()
	var during atomic.Int64
	insDone := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if _, err := ins.Exec(ctx, "INSERT INTO items VALUES ($1, 'during', 0)", 100000+i); err != nil {
				insDone <- err
				return
			}
			during.Add(1)
			if streaming.Load() && i > 200 {
				insDone <- nil
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	e.runReader(cfg)
	if err := <-insDone; err != nil {
		t.Fatal(err)
	}
	if err := workload(ctx, c, "items", 50000, 30000, 1); err != nil {
		t.Fatal(err)
	}
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), 3*time.Minute)
	topic := cfg.TopicPrefix + ".public.items"
	recs := e.readAll(topic)
	got := lastValues(t, recs)
	want := map[int32][2]string{}
	rows, _ := c.Query(ctx, "SELECT id, v, n::text FROM items")
	for rows.Next() {
		var id int32
		var v, n string
		if err := rows.Scan(&id, &v, &n); err != nil {
			t.Fatal(err)
		}
		want[id] = [2]string{v, n}
	}
	if len(got) != len(want) {
		t.Errorf("topic has %d keys, table has %d rows", len(got), len(want))
	}
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			t.Errorf("id %d: missing from topic", id)
			continue
		}
		gn := g["n"].(*big.Rat).FloatString(2)
		if g["v"] != w[0] || gn != w[1] {
			t.Errorf("id %d: topic has (%v, %s), table has (%s, %s)", id, g["v"], gn, w[0], w[1])
		}
	}
	// Rows inserted during the snapshot: exactly one r or c each.
	seen := map[int32]int{}
	var tombstones, deletes int
	for _, r := range recs {
		if r.heartbeat() {
			continue
		}
		if r.value == nil {
			tombstones++
			continue
		}
		op := r.value["op"].(string)
		if op == "d" {
			deletes++
		}
		if id := r.key["id"].(int32); id >= 100000 && (op == "r" || op == "c") {
			seen[id]++
		}
	}
	for i := int32(0); i < int32(during.Load()); i++ {
		if n := seen[100000+i]; n != 1 {
			t.Errorf("row %d inserted during the snapshot appears %d times", 100000+i, n)
		}
	}
	if tombstones != deletes || deletes == 0 {
		t.Errorf("%d deletes, %d tombstones", deletes, tombstones)
	}
	t.Logf("%d records, %d keys, %d rows inserted during the snapshot, %d deletes", len(recs), len(got), during.Load(), deletes)
}

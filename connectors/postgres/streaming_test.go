package postgres

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// streamModel is what the test wrote to PostgreSQL and committed: per id,
// the ops in commit order ("c:v", "u:v", "d").
type streamModel map[int32][]string

func (m streamModel) insert(lo, hi int32, v int) {
	for id := lo; id <= hi; id++ {
		m[id] = append(m[id], fmt.Sprintf("c:%d", v))
	}
}

func (m streamModel) update(lo, hi int32, v func(id int32) int) {
	for id := lo; id <= hi; id++ {
		m[id] = append(m[id], fmt.Sprintf("u:%d", v(id)))
	}
}

func (m streamModel) delete(lo, hi int32) {
	for id := lo; id <= hi; id++ {
		m[id] = append(m[id], "d")
	}
}

// topicOps folds a topic into per-id ops in partition order (a key's
// records are in one partition).
func topicOps(recs []consumed) streamModel {
	got := streamModel{}
	for _, r := range recs {
		if r.heartbeat() || r.value == nil || r.key == nil {
			continue
		}
		id := r.key["id"].(int32)
		switch op := r.value["op"].(string); op {
		case "c", "u":
			got[id] = append(got[id], fmt.Sprintf("%s:%d", op, r.value["after"].(map[string]any)["v"].(int32)))
		case "d":
			got[id] = append(got[id], "d")
		default:
			got[id] = append(got[id], op)
		}
	}
	return got
}

// diffModel lists how got differs from want (at most 10 lines).
func diffModel(want, got streamModel) []string {
	var out []string
	for id, w := range want {
		if !slices.Equal(w, got[id]) {
			out = append(out, fmt.Sprintf("id %d: topic %v, PostgreSQL %v", id, got[id], w))
		}
	}
	for id, g := range got {
		if _, ok := want[id]; !ok {
			out = append(out, fmt.Sprintf("id %d: topic %v, never committed in PostgreSQL", id, g))
		}
	}
	slices.Sort(out)
	if len(out) > 10 {
		out = append(out[:10], fmt.Sprintf("... %d more", len(out)-10))
	}
	return out
}

// streamedStats is the slot's streamed transactions and bytes from
// pg_stat_replication_slots (PostgreSQL's count, not the reader's).
func streamedStats(t *testing.T, c *pgx.Conn, slot string) (txns, bytes int64) {
	t.Helper()
	err := c.QueryRow(context.Background(), "SELECT coalesce(sum(stream_txns), 0)::int8, coalesce(sum(stream_bytes), 0)::int8 FROM pg_stat_replication_slots WHERE slot_name = $1", slot).Scan(&txns, &bytes)
	if err != nil {
		t.Fatal(err)
	}
	return txns, bytes
}

// streamEnv makes a database whose walsenders stream any transaction
// over 64kB of decoded changes (logical_decoding_work_mem is read by the
// walsender at connection: a SET in the writing session would not apply).
func streamEnv(t *testing.T) (*cdcEnv, *pgx.Conn) {
	e := newEnv(t)
	c := e.conn()
	var db string
	if err := c.QueryRow(context.Background(), "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	e.exec(c, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET logical_decoding_work_mem = '64kB'")
	e.exec(c, "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL)")
	return e, c
}

// abortScenarios writes (b): a large aborted transaction, and a committed
// one with a rolled-back savepoint (holding a nested, released one), each
// far over 64kB; it returns what was committed.
func abortScenarios(t *testing.T, e *cdcEnv, c *pgx.Conn, want streamModel) {
	tx := func(stmts ...string) {
		t.Helper()
		for _, s := range stmts {
			e.exec(c, s)
		}
	}
	tx("BEGIN", "INSERT INTO big SELECT g, 1 FROM generate_series(100001, 104000) g", "UPDATE big SET v = 5 WHERE id > 100000", "ROLLBACK")
	tx("BEGIN",
		"INSERT INTO big SELECT g, 2 FROM generate_series(1, 2000) g",
		"SAVEPOINT a",
		"INSERT INTO big SELECT g, 2 FROM generate_series(2001, 5000) g",
		"SAVEPOINT b",
		"UPDATE big SET v = 99 WHERE id <= 1000",
		"RELEASE b",
		"ROLLBACK TO a",
		"UPDATE big SET v = 3 WHERE id <= 500",
		"INSERT INTO big SELECT g, 2 FROM generate_series(5001, 6000) g",
		"COMMIT")
	want.insert(1, 2000, 2)
	want.update(1, 500, func(int32) int { return 3 })
	want.insert(5001, 6000, 2)
}

// TestStreamingV2 runs the reader with pgoutput protocol v2 streaming on a
// database where every transaction over 64kB is streamed while in
// progress, and checks against what the test committed: (b) a large
// aborted transaction and a rolled-back savepoint (with a nested released
// one) inside a committed one leave nothing; (a) every row of a large
// committed transaction (inserts, updates, deletes) arrives exactly once
// and in order; (c) two large transactions interleaved on two connections
// are kept apart. PostgreSQL's pg_stat_replication_slots shows that they
// were streamed. TestStreamingV2AbortIgnored is the negative control.
func TestStreamingV2(t *testing.T) {
	e, c := streamEnv(t)
	reg := prometheus.NewRegistry()
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "big"}}
	cfg.Registerer = reg
	cfg.TxnMaxRecords = 3000         // the largest transaction spans Kafka transactions
	cfg.StreamBufferBytes = 32 << 10 // the largest transactions go to files
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)

	want := streamModel{}
	abortScenarios(t, e, c, want)

	// (a) a large transaction, in order.
	for _, s := range []string{"BEGIN",
		"INSERT INTO big SELECT g, 1 FROM generate_series(10001, 14000) g",
		"UPDATE big SET v = v + id WHERE id BETWEEN 10001 AND 14000",
		"DELETE FROM big WHERE id BETWEEN 10001 AND 10500",
		"COMMIT"} {
		e.exec(c, s)
	}
	want.insert(10001, 14000, 1)
	want.update(10001, 14000, func(id int32) int { return 1 + int(id) })
	want.delete(10001, 10500)
	e.exec(c, "INSERT INTO big VALUES (40001, 7)") // an ordinary one between
	want.insert(40001, 40001, 7)

	// (c) two interleaved large transactions.
	c2 := e.conn()
	e.exec(c, "BEGIN")
	e.exec(c2, "BEGIN")
	for round := int32(0); round < 6; round++ {
		lo1, lo2 := 20000+round*500, 30000+round*500
		e.exec(c, "INSERT INTO big SELECT g, $1 FROM generate_series($2::int, $3::int) g", round, lo1, lo1+499)
		e.exec(c2, "INSERT INTO big SELECT g, $1 FROM generate_series($2::int, $3::int) g", 100+round, lo2, lo2+499)
	}
	e.exec(c2, "UPDATE big SET v = v + 1000 WHERE id BETWEEN 30000 AND 32999")
	e.exec(c2, "COMMIT")
	e.exec(c, "COMMIT")
	for round := int32(0); round < 6; round++ {
		want.insert(30000+round*500, 30000+round*500+499, 100+int(round))
	}
	want.update(30000, 32999, func(id int32) int { return 1100 + int((id-30000)/500) })
	for round := int32(0); round < 6; round++ {
		want.insert(20000+round*500, 20000+round*500+499, int(round))
	}

	e.waitFlushed(c, cfg.Name, e.currentLSN(c), 3*time.Minute)
	got := topicOps(e.readAll(cfg.TopicPrefix + ".public.big"))
	if d := diffModel(want, got); len(d) > 0 {
		t.Errorf("topic differs from what was committed:\n%v", d)
	}
	txns, bytes := streamedStats(t, c, cfg.Name)
	if txns < 5 {
		t.Errorf("PostgreSQL streamed %d transactions (%d bytes); the test needs the 5 large ones streamed", txns, bytes)
	}
	streamed := gaugeOrCounter(t, reg, "loanflow_cdc_streamed_transactions_total")
	aborts := gaugeOrCounter(t, reg, "loanflow_cdc_streamed_aborts_total")
	spills := gaugeOrCounter(t, reg, "loanflow_cdc_stream_spills_total")
	if streamed < 5 || aborts < 1 || spills < 1 {
		t.Errorf("reader metrics: %v streamed, %v aborted, %v spilled; want >= 5, >= 1, >= 1", streamed, aborts, spills)
	}
	t.Logf("%d ids; PostgreSQL streamed %d transactions, %d bytes; reader: %v streamed, %v aborted, %v spilled to disk", len(want), txns, bytes, streamed, aborts, spills)
}

// gaugeOrCounter is the value of an unlabelled metric name in reg.
func gaugeOrCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			m := mf.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// TestStreamingV2AbortIgnored is TestStreamingV2's negative control: a
// reader that ignores Stream Abort writes the aborted transaction and the
// rolled-back savepoint, and the same check reports it.
func TestStreamingV2AbortIgnored(t *testing.T) {
	e, c := streamEnv(t)
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "big"}}
	cfg.ignoreStreamAbort = true
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	want := streamModel{}
	abortScenarios(t, e, c, want)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), 3*time.Minute)
	got := topicOps(e.readAll(cfg.TopicPrefix + ".public.big"))
	d := diffModel(want, got)
	if len(d) == 0 {
		t.Fatal("the check found nothing wrong with a reader that ignores Stream Abort")
	}
	t.Logf("the check caught the ignored aborts: %v", d[:min(3, len(d))])
}

// TestStreamingV2Crash SIGKILLs the reader process while a large
// transaction is being streamed (PostgreSQL shows streamed bytes for the
// slot, the transaction still open), restarts it, has the transaction
// grow and commit, and SIGKILLs it again once a position inside that
// transaction (split over Kafka transactions) is committed: every row
// arrives exactly once, in order. Before that, the aborts of
// TestStreamingV2 with the buffers in memory (that test spills them).
func TestStreamingV2Crash(t *testing.T) {
	e, c := streamEnv(t)
	ctx := context.Background()
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "big"}}
	cfg.TxnMaxRecords = 1000
	cfg.Logger = nil
	cfgPath := writeConfig(t, cfg)

	sctx, stopFollow := context.WithCancel(ctx)
	var plog positionLog
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); plog.follow(sctx, t, e.brokers, cfg.PositionsTopic, cfg.Name) }()
	defer func() { stopFollow(); wg.Wait() }()

	logf, _ := os.CreateTemp("", "cdc-stream-child-*.log")
	defer os.Remove(logf.Name())
	child := startChild(t, cfgPath, logf)
	defer func() { _ = child.Process.Kill(); _, _ = child.Process.Wait() }()
	kill := func() {
		_ = child.Process.Signal(syscall.SIGKILL)
		_, _ = child.Process.Wait()
		child = startChild(t, cfgPath, logf)
	}
	e.waitSnapshot(c, cfg.Name)

	want := streamModel{}
	// The aborts first, kept in memory (the default stream_buffer_bytes).
	abortScenarios(t, e, c, want)
	_, before := streamedStats(t, c, cfg.Name)
	e.exec(c, "BEGIN")
	var xid int64
	if err := c.QueryRow(ctx, "SELECT txid_current() % 4294967296").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	e.exec(c, "INSERT INTO big SELECT g, 1 FROM generate_series(200001, 204000) g")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		other := e.conn()
		_, b := streamedStats(t, other, cfg.Name)
		other.Close(ctx)
		if b > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("PostgreSQL never streamed the open transaction to the reader")
		}
		time.Sleep(50 * time.Millisecond)
	}
	kill() // mid-stream: the transaction is open
	e.exec(c, "UPDATE big SET v = 2 WHERE id BETWEEN 200001 AND 204000")
	e.exec(c, "INSERT INTO big SELECT g, 3 FROM generate_series(204001, 208000) g")
	midTxn := plog.when(func(p Position) bool { return p.XID == uint32(xid) && !p.Complete && p.Changes > 0 })
	e.exec(c, "COMMIT")
	want.insert(200001, 204000, 1)
	want.update(200001, 204000, func(int32) int { return 2 })
	want.insert(204001, 208000, 3)
	select {
	case <-midTxn:
		kill() // inside the committed transaction's Kafka transactions
	case <-time.After(3 * time.Minute):
		t.Fatal("no position inside the large transaction")
	}
	e.exec(c, "INSERT INTO big VALUES (9001, 9)")
	want.insert(9001, 9001, 9)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), 3*time.Minute)
	got := topicOps(e.readAll(cfg.TopicPrefix + ".public.big"))
	if d := diffModel(want, got); len(d) > 0 {
		b, _ := os.ReadFile(logf.Name())
		t.Errorf("topic differs from what was committed:\n%v\nreader log:\n%s", d, tail(b, 4000))
	}
	plog.mu.Lock()
	inBig := 0
	for _, p := range plog.history {
		if p.XID == uint32(xid) && !p.Complete {
			inBig++
		}
	}
	plog.mu.Unlock()
	t.Logf("%d ids; positions inside split transactions: %d, inside the large one (xid %d): %d", len(want), plog.partialCount(), xid, inBig)
}

// TestStreamingFor: auto streams from PostgreSQL 14 (protocol v2) and
// falls back to v1 before; on refuses an older server; off never streams.
func TestStreamingFor(t *testing.T) {
	for _, c := range []struct {
		mode    StreamingMode
		major   int
		want    bool
		wantErr bool
	}{
		{StreamingAuto, 13, false, false}, {StreamingAuto, 14, true, false}, {StreamingAuto, 17, true, false},
		{"", 15, true, false}, {StreamingOn, 13, false, true}, {StreamingOn, 14, true, false},
		{StreamingOff, 13, false, false}, {StreamingOff, 16, false, false},
	} {
		got, err := streamingFor(c.mode, c.major)
		if got != c.want || (err != nil) != c.wantErr {
			t.Errorf("streamingFor(%q, %d) = %v, %v; want %v, error %v", c.mode, c.major, got, err, c.want, c.wantErr)
		}
	}
}

// TestStreamingOff: with streaming: off the same large transactions come
// as ordinary ones (PostgreSQL spills them on its side: no streamed
// transactions in pg_stat_replication_slots) and the topic is the same.
func TestStreamingOff(t *testing.T) {
	e, c := streamEnv(t)
	reg := prometheus.NewRegistry()
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "big"}}
	cfg.Streaming = StreamingOff
	cfg.Registerer = reg
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	want := streamModel{}
	abortScenarios(t, e, c, want)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), 3*time.Minute)
	got := topicOps(e.readAll(cfg.TopicPrefix + ".public.big"))
	if d := diffModel(want, got); len(d) > 0 {
		t.Errorf("topic differs from what was committed:\n%v", d)
	}
	if txns, _ := streamedStats(t, c, cfg.Name); txns != 0 {
		t.Errorf("PostgreSQL streamed %d transactions with streaming off", txns)
	}
	if n := gaugeOrCounter(t, reg, "loanflow_cdc_streamed_transactions_total"); n != 0 {
		t.Errorf("reader counted %v streamed transactions with streaming off", n)
	}
}

// FuzzStreamMessages feeds arbitrary sequences of messages (each a length
// byte and its bytes; Relation messages left out, they need a catalog) to
// a receiver with protocol v2 streaming on, over a small memory bound so
// buffers spill to files: errors are fine, panics are not, and nothing of
// a transaction reaches the writer before its commit.
func FuzzStreamMessages(f *testing.F) {
	begin := func(xid byte, first byte) []byte { return []byte{'S', 0, 0, 0, xid, first} }
	ins := func(xid byte) []byte {
		return append([]byte{'I', 0, 0, 0, xid, 0, 0, 0, 1, 'N', 0, 1, 't', 0, 0, 0, 1}, '7')
	}
	commit := func(xid byte) []byte {
		return append([]byte{'c', 0, 0, 0, xid, 0}, make([]byte, 24)...)
	}
	seq := func(msgs ...[]byte) []byte {
		var out []byte
		for _, m := range msgs {
			out = append(append(out, byte(len(m))), m...)
		}
		return out
	}
	f.Add(seq(begin(5, 1), ins(5), ins(6), []byte{'E'}, begin(6, 1), ins(6), []byte{'E'}, []byte{'A', 0, 0, 0, 5, 0, 0, 0, 6}, commit(5), commit(6)))
	f.Add(seq(begin(5, 0), ins(5), commit(5)))
	f.Add(seq([]byte{'E'}, []byte{'c', 0}, []byte{'A', 0, 0}, []byte{'S'}))
	f.Fuzz(func(t *testing.T, data []byte) {
		out := make(chan []item, 1)
		done := make(chan struct{})
		var items []item
		go func() {
			defer close(done)
			for b := range out {
				items = append(items, b...)
			}
		}()
		cfg := &Config{Logger: slogDiscard()}
		r := &receiver{cfg: cfg, out: out, m: newMetrics(nil, "fuzz"), tables: map[uint32]*table{1: fuzzTable(1)},
			streams: streams{on: true, bufs: map[uint32]*streamBuf{}, maxBytes: 64, dir: t.TempDir()}}
		ctx := context.Background()
		for len(data) > 0 {
			n := int(data[0])
			data = data[1:]
			if n > len(data) {
				break
			}
			msg := data[:n:n]
			data = data[n:]
			if len(msg) > 0 && msg[0] == 'R' {
				continue
			}
			if err := r.message(ctx, pglogrepl.XLogData{WALStart: pglogrepl.LSN(len(data))}, append([]byte(nil), msg...)); err != nil {
				break
			}
		}
		_ = r.send(ctx)
		r.streams.close()
		close(out)
		<-done
		open := false
		for _, it := range items {
			switch it.kind {
			case itBegin:
				open = true
			case itCommit:
				open = false
			case itChange:
				if !open {
					t.Fatalf("a change outside Begin/Commit: %+v", it)
				}
			}
		}
	})
}

func slogDiscard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
)

// changeID identifies one row change: its LSN and primary key.
type changeID struct {
	lsn pglogrepl.LSN
	id  int64
}

var oracleRE = regexp.MustCompile(`^table public\.items: (INSERT|UPDATE|DELETE): (?:old-key: )?id\[integer\]:(-?\d+)`)

// oracleChanges reads every change of table items from an independent
// test_decoding slot: the truth the reader's output is counted against.
func oracleChanges(t *testing.T, c *pgx.Conn, slot string) map[changeID]bool {
	t.Helper()
	rows, err := c.Query(context.Background(), "SELECT lsn::text, data FROM pg_logical_slot_get_changes($1, NULL, NULL)", slot)
	if err != nil {
		t.Fatal(err)
	}
	out := map[changeID]bool{}
	for rows.Next() {
		var lsnText, data string
		if err := rows.Scan(&lsnText, &data); err != nil {
			t.Fatal(err)
		}
		m := oracleRE.FindStringSubmatch(data)
		if m == nil {
			continue
		}
		lsn, _ := pglogrepl.ParseLSN(lsnText)
		id, _ := strconv.ParseInt(m[2], 10, 64)
		out[changeID{lsn, id}] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// posSample is one slot-safety sample: the slot's confirmed_flush_lsn and,
// read after it, the positions topic's last stable offset.
type posSample struct {
	confirmed pglogrepl.LSN
	lso       int64
}

// positionLog follows the positions topic (read_committed) and records
// each committed position of the reader with its offset.
type positionLog struct {
	mu       sync.Mutex
	recs     []posRec
	partials int // positions inside a split transaction
	last     Position
	history  []Position // every committed position, in order
	triggers []posTrigger
}

type posTrigger struct {
	cond  func(Position) bool
	fired chan struct{}
}

// when returns a channel closed at the first committed position, from now
// on, for which cond holds.
func (p *positionLog) when(cond func(Position) bool) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	tr := posTrigger{cond: cond, fired: make(chan struct{})}
	p.triggers = append(p.triggers, tr)
	return tr.fired
}

// await waits for ch or fails after a while.
func await(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(3 * time.Minute):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitFor waits until cond holds for the last committed position.
func (p *positionLog) waitFor(t *testing.T, what string, cond func(Position) bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		p.mu.Lock()
		ok := cond(p.last)
		last := p.last
		p.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last position %+v", what, last)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type posRec struct {
	offset int64
	flush  pglogrepl.LSN
}

// partialCount is how many split-transaction positions were committed.
func (p *positionLog) partialCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.partials
}

func (p *positionLog) follow(ctx context.Context, t *testing.T, brokers []string, topic, name string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Error(err)
		return
	}
	defer cl.Close()
	for ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			if string(r.Key) != name {
				return
			}
			var pos Position
			if err := jsonUnmarshal(r.Value, &pos); err != nil {
				t.Errorf("position record: %v", err)
				return
			}
			p.mu.Lock()
			p.recs = append(p.recs, posRec{r.Offset, pos.FlushLSN})
			if !pos.Complete && pos.Snapshot == nil {
				p.partials++
			}
			p.last = pos
			p.history = append(p.history, pos)
			for i := 0; i < len(p.triggers); i++ {
				if tr := p.triggers[i]; tr.cond(pos) {
					close(tr.fired)
					p.triggers = append(p.triggers[:i], p.triggers[i+1:]...)
					i--
				}
			}
			p.mu.Unlock()
		})
	}
}

// committedThrough is the highest flush LSN committed at an offset below
// lso, or at lso itself: the position record at the last stable offset
// belongs to the transaction whose commit markers were not yet written
// when lso was read. Apache Kafka answers EndTxn once PREPARE_COMMIT is in
// the transaction log and writes the markers after, so the reader may
// already confirm a committed position the LSO has not passed (seen after
// the broker's restart: the confirmed position at exactly the sampled LSO,
// committed). A position of an aborted transaction never enters the log.
func (p *positionLog) committedThrough(lso int64) pglogrepl.LSN {
	p.mu.Lock()
	defer p.mu.Unlock()
	var max pglogrepl.LSN
	for _, r := range p.recs {
		if r.offset <= lso && r.flush > max {
			max = r.flush
		}
	}
	return max
}

// TestCrashExactlyOnce SIGKILLs the reader process during a chunked
// initial snapshot of 20,000 rows, during the incremental snapshot of a
// table added to the config later, and every few seconds during 50,000
// mixed changes and a 10,000-row single-transaction COPY, and counts, per
// (LSN, key), what read_committed consumers see against an independent
// test_decoding slot; snapshot reads are counted per key, and both topics
// must end equal to their tables. It runs on the embedded broker and on
// Apache Kafka; on Apache the broker itself is SIGKILLed and restarted
// mid-run too.
func TestCrashExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test starts processes")
	}
	testenv.EachBroker(t, func(t *testing.T, kind string, seeds []string) {
		var k *localsvc.Kafka
		if kind == testenv.Apache {
			k = testenv.NewKafka(t, localsvc.KafkaOptions{})
			seeds = k.Addrs()
		}
		crashExactlyOnce(t, seeds, k)
	})
}

func crashExactlyOnce(t *testing.T, seeds []string, broker *localsvc.Kafka) {
	e := newEnvOn(t, seeds)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL, n numeric(12,2) NOT NULL)")
	e.exec(c, "ALTER TABLE items REPLICA IDENTITY FULL")
	e.exec(c, "INSERT INTO items SELECT g, 'seed', 1 FROM generate_series(0, 99999) g")
	e.exec(c, "CREATE TABLE added (id int PRIMARY KEY, v text NOT NULL, n numeric(12,2) NOT NULL)")
	e.exec(c, "ALTER TABLE added REPLICA IDENTITY FULL")
	e.exec(c, "INSERT INTO added SELECT g, 'added', g FROM generate_series(0, 49999) g")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "items"}}
	cfg.TxnMaxRecords = 2000 // the COPY spans several Kafka transactions
	cfg.SnapshotTxnMaxRows = 500
	cfg.Logger = nil
	cfgPath := writeConfig(t, cfg)
	oracle := testenvName(cfg.Name, "oracle")
	e.exec(c, "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", oracle)
	t.Cleanup(func() { c.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", oracle) })

	sctx, stopSampling := context.WithCancel(ctx)
	var plog positionLog
	inSnapshot := plog.when(func(p Position) bool { return p.Snapshot != nil && p.Snapshot.Rows >= 2000 })
	resumed := plog.when(func(p Position) bool { return p.Incremental != nil && p.Incremental.Table == "public.items" })
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); plog.follow(sctx, t, e.brokers, cfg.PositionsTopic, cfg.Name) }()

	logf, _ := os.CreateTemp("", "cdc-child-*.log")
	defer os.Remove(logf.Name())
	child := startChild(t, cfgPath, logf)
	defer func() { _ = child.Process.Kill(); _, _ = child.Process.Wait() }()
	kills := 0
	kill := func() {
		_ = child.Process.Signal(syscall.SIGKILL)
		_, _ = child.Process.Wait()
		kills++
		child = startChild(t, cfgPath, logf)
	}
	// Kill inside the chunked initial snapshot (200 chunks), after its
	// fourth.
	await(t, inSnapshot, "four snapshot chunks")
	killedAt := time.Now()
	kill()
	plog.waitFor(t, "the initial snapshot", func(p Position) bool { return p.Snapshot == nil && p.Incremental == nil && len(p.Tables) == 1 })
	// Where the kill landed is read from the positions the killed process
	// committed (it commits nothing after its death), not from when the
	// follower saw them: on a busy machine the snapshot can finish between
	// the fourth chunk's position and the kill.
	plog.mu.Lock()
	var before Position
	for _, p := range plog.history {
		if p.CommittedAt.Before(killedAt) {
			before = p
		}
	}
	plog.mu.Unlock()
	if before.Snapshot != nil {
		select {
		case <-resumed:
		default:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("killed inside the initial snapshot (%+v), the rest was not read incrementally; child log:\n%s", *before.Snapshot, tail(b, 3000))
		}
	} else {
		t.Logf("the kill landed after the initial snapshot ended (position %+v): its resume is not exercised in this run", before)
	}

	// A table added to the config: killed inside its incremental snapshot.
	inIncremental := plog.when(func(p Position) bool {
		return p.Incremental != nil && p.Incremental.Table == "public.added" && p.Incremental.Rows >= 1000
	})
	cfg.Tables = append(cfg.Tables, TableConfig{Table: "added"})
	cfgPath = writeConfig(t, cfg)
	kill()
	await(t, inIncremental, "two incremental chunks") // of 100
	kill()
	resumedInc := plog.when(func(p Position) bool {
		return p.Incremental != nil && p.Incremental.Table == "public.added" && p.Incremental.Rows >= 1000
	})
	plog.waitFor(t, "the added table's snapshot", func(p Position) bool { return p.Incremental == nil && len(p.Tables) == 2 })
	select {
	case <-resumedInc:
	default:
		t.Error("the kill did not land inside the added table's snapshot (it was complete after the restart)")
	}

	var samples []posSample
	wg.Add(1)
	go func() { defer wg.Done(); samples = e.sampleSlot(sctx, cfg.Name, cfg.PositionsTopic) }()
	loadDone := make(chan error, 1)
	copied := make(chan struct{})
	go func() { loadDone <- pacedLoad(ctx, e, copied) }()

	midCopy, brokerKilled := false, false
	rng := rand.New(rand.NewPCG(7, 7))
loop:
	for {
		select {
		case err := <-loadDone:
			if err != nil {
				t.Fatal(err)
			}
			break loop
		case <-copied:
			// Kill mid-way through the COPY's transaction: right after the
			// first of its split Kafka commits.
			copied = nil
			before := plog.partialCount()
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && plog.partialCount() == before; {
				time.Sleep(time.Millisecond)
			}
			midCopy = plog.partialCount() > before
			kill()
		case <-time.After(time.Duration(1500+rng.IntN(2000)) * time.Millisecond):
			if broker != nil && !brokerKilled && kills >= 8 {
				// The broker dies (SIGKILL) under the reader and comes back
				// on the same data directory.
				brokerKilled = true
				broker.Kill(1)
				if err := broker.Start(1); err != nil {
					t.Fatal(err)
				}
				continue
			}
			kill()
		}
	}
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), 3*time.Minute)
	stopSampling()
	wg.Wait()

	want := oracleChanges(t, c, oracle)
	seen := map[changeID]int{}
	reads := map[string]map[int32]int{}
	recs := e.readAll(cfg.TopicPrefix+".public.items", cfg.TopicPrefix+".public.added")
	for _, r := range recs {
		if r.heartbeat() || r.value == nil {
			continue
		}
		if r.value["op"] == "r" {
			if reads[r.rec.Topic] == nil {
				reads[r.rec.Topic] = map[int32]int{}
			}
			reads[r.rec.Topic][r.key["id"].(int32)]++
			continue
		}
		src := r.value["source"].(map[string]any)
		seen[changeID{pglogrepl.LSN(src["lsn"].(int64)), int64(r.key["id"].(int32))}]++
	}
	lost, dup, extra := 0, 0, 0
	for id := range want {
		if seen[id] == 0 {
			lost++
		}
	}
	for id, n := range seen {
		if n > 1 {
			dup += n - 1
		}
		if !want[id] {
			extra++
		}
	}
	// Snapshot reads: every row of items once (the load starts after the
	// snapshot), every row of added once (nothing changes it).
	readLost, readDup := 0, 0
	for topic, n := range map[string]int32{cfg.TopicPrefix + ".public.items": 100000, cfg.TopicPrefix + ".public.added": 50000} {
		for id := int32(0); id < n; id++ {
			switch reads[topic][id] {
			case 0:
				readLost++
			case 1:
			default:
				readDup += reads[topic][id] - 1
			}
		}
	}
	var stateDiff int
	for _, tb := range []string{"items", "added"} {
		var topicRecs []consumed
		for _, r := range recs {
			if r.rec.Topic == cfg.TopicPrefix+".public."+tb {
				topicRecs = append(topicRecs, r)
			}
		}
		got, wantRows := lastValues(t, topicRecs), tableState(t, c, tb)
		for id, w := range wantRows {
			if g, ok := got[id]; !ok || g["v"] != w[0] {
				stateDiff++
			}
		}
		stateDiff += max(0, len(got)-len(wantRows))
	}
	ahead := 0
	for _, s := range samples {
		if committed := plog.committedThrough(s.lso); s.confirmed > committed {
			ahead++
			t.Errorf("slot confirmed %s while Kafka had committed only %s", s.confirmed, committed)
		}
	}
	fmt.Printf("crash test (%s): kills=%d (one mid-COPY: %v, broker killed: %v) changes=%d lost=%d duplicated=%d unexpected=%d snapshot_reads lost=%d duplicated=%d state_diff=%d slot_samples=%d slot_ahead=%d\n",
		t.Name(), kills, midCopy, brokerKilled, len(want), lost, dup, extra, readLost, readDup, stateDiff, len(samples), ahead)
	if !midCopy {
		t.Error("no kill landed inside the COPY's transaction (no split commit seen)")
	}
	if broker != nil && !brokerKilled {
		t.Error("the broker was never killed")
	}
	if lost != 0 || dup != 0 || extra != 0 || readLost != 0 || readDup != 0 || stateDiff != 0 || kills < 10 || len(want) < 40000 {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("lost=%d duplicated=%d unexpected=%d reads lost=%d duplicated=%d state_diff=%d kills=%d changes=%d\nchild log:\n%s",
			lost, dup, extra, readLost, readDup, stateDiff, kills, len(want), tail(b, 4000))
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func testenvName(base, suffix string) string {
	s := base + "_" + suffix
	if len(s) > 63 {
		s = s[len(s)-63:]
	}
	return s
}

// pacedLoad runs 50,000 mixed changes over about 35 s, with a 10,000-row
// single-transaction COPY half-way (signalled on copied).
func pacedLoad(ctx context.Context, e *cdcEnv, copied chan<- struct{}) error {
	c, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	for i := 0; i < 50; i++ {
		if err := workload(ctx, c, "items", 1000, 5000, uint64(i)); err != nil {
			return err
		}
		if i == 25 {
			src := make([][]any, 10000)
			for j := range src {
				src[j] = []any{200000 + j, "copy", "1.00"}
			}
			if _, err := c.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "v", "n"}, pgx.CopyFromRows(src)); err != nil {
				return err
			}
			close(copied)
		}
		time.Sleep(700 * time.Millisecond)
	}
	return nil
}

// waitSnapshot waits until the reader's slot exists and has moved past its
// creation point (the snapshot is committed and streaming confirmed).
func (e *cdcEnv) waitSnapshot(c *pgx.Conn, slot string) {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	var first pglogrepl.LSN
	for time.Now().Before(deadline) {
		l := e.confirmedFlush(c, slot)
		if first == 0 {
			first = l
		} else if l > first {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("slot %s did not start streaming", slot)
}

// sampleSlot samples confirmed_flush_lsn and then the positions topic's
// last stable offset every 100 ms.
func (e *cdcEnv) sampleSlot(ctx context.Context, slot, topic string) []posSample {
	c, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		e.t.Error(err)
		return nil
	}
	defer c.Close(context.Background())
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		e.t.Error(err)
		return nil
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	var out []posSample
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
		}
		s := posSample{confirmed: e.confirmedFlush(c, slot)}
		offs, err := adm.ListCommittedOffsets(ctx, topic)
		if err != nil {
			continue
		}
		o, ok := offs.Lookup(topic, 0)
		if !ok || o.Err != nil {
			continue
		}
		s.lso = o.Offset
		out = append(out, s)
	}
}

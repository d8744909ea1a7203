package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// txModel is a PostgreSQL transaction the test ran: its xid and the
// change records it must produce per table.
type txModel struct {
	xid    int64
	counts map[string]int64
}

// txObserved is what a consumer sees: the transaction topic's records in
// order and the data records that carry a transaction block.
type txObserved struct {
	txRecs []map[string]any // decoded values, in topic order
	data   []txDataRec
	splits map[string]int // transaction id → Kafka commits inside it (positions topic)
}

type txDataRec struct {
	table string
	block map[string]any
	txID  int64 // source.txId
}

// checkTransactions rebuilds each transaction from the transaction topic
// and the data records and compares it with the model; it returns the
// problems found.
func checkTransactions(model []txModel, obs txObserved) []string {
	var bad []string
	badf := func(f string, a ...any) { bad = append(bad, fmt.Sprintf(f, a...)) }
	if len(obs.txRecs) != 2*len(model) {
		badf("transaction topic has %d records, want BEGIN and END of %d transactions", len(obs.txRecs), len(model))
	}
	byID := map[string][]txDataRec{}
	for _, d := range obs.data {
		id := d.block["id"].(string)
		byID[id] = append(byID[id], d)
	}
	for i, m := range model {
		if 2*i+1 >= len(obs.txRecs) {
			break
		}
		begin, end := obs.txRecs[2*i], obs.txRecs[2*i+1]
		id, _ := begin["id"].(string)
		if begin["status"] != "BEGIN" || end["status"] != "END" || end["id"] != id {
			badf("transaction %d: records %v / %v, want BEGIN and END of one id", i, begin, end)
			continue
		}
		if !strings.HasPrefix(id, strconv.FormatInt(m.xid, 10)+":") {
			badf("transaction %d: id %s, want xid %d", i, id, m.xid)
		}
		if begin["ts_ms"] != end["ts_ms"] || begin["event_count"] != nil || begin["data_collections"] != nil {
			badf("transaction %s: BEGIN %v END %v", id, begin, end)
		}
		var total int64
		got := map[string]int64{}
		for _, c := range end["data_collections"].([]any) {
			cm := c.(map[string]any)
			got[cm["data_collection"].(string)] = cm["event_count"].(int64)
		}
		for tbl, n := range m.counts {
			total += n
			if got[tbl] != n {
				badf("transaction %s: END counts %s: %d, want %d", id, tbl, got[tbl], n)
			}
		}
		if len(got) != len(m.counts) || end["event_count"] != total {
			badf("transaction %s: END %v, want %v (total %d)", id, got, m.counts, total)
		}
		if kt, _ := end["kafka_transactions"].(int32); int(kt) != obs.splits[id]+1 {
			badf("transaction %s: kafka_transactions %v, want %d (Kafka commits inside it + 1)", id, end["kafka_transactions"], obs.splits[id]+1)
		}
		// The data records: total_order 1..n, data_collection_order 1..k
		// per table, counts as END says, source.txId the xid.
		recs := byID[id]
		if int64(len(recs)) != total {
			badf("transaction %s: %d data records carry its id, END says %d", id, len(recs), total)
		}
		var orders []int64
		per := map[string][]int64{}
		for _, d := range recs {
			orders = append(orders, d.block["total_order"].(int64))
			per[d.table] = append(per[d.table], d.block["data_collection_order"].(int64))
			if d.txID != m.xid {
				badf("transaction %s: a record of %s has source.txId %d", id, d.table, d.txID)
			}
		}
		slices.Sort(orders)
		for k, o := range orders {
			if o != int64(k+1) {
				badf("transaction %s: total_order values %v, want 1..%d", id, orders, len(orders))
				break
			}
		}
		for tbl, os := range per {
			slices.Sort(os)
			if int64(len(os)) != got[tbl] || (len(os) > 0 && os[len(os)-1] != int64(len(os))) {
				badf("transaction %s: %s data_collection_order %v, want 1..%d", id, tbl, os, got[tbl])
			}
		}
		delete(byID, id)
	}
	for id, recs := range byID {
		badf("%d data records of transaction %s, which the transaction topic does not hold", len(recs), id)
	}
	return bad
}

// TestTransactionTopic: with provide_transaction_metadata the transaction
// topic and the transaction blocks rebuild every PostgreSQL transaction
// the test ran (the model: each transaction's xid from txid_current() and
// the records its statements must produce per table, written down by
// hand): BEGIN and END in commit order, END's per-table counts, every
// data record carrying the id with total_order and data_collection_order
// contiguous, and a transaction of 120 rows over txn_max_records 50 saying
// how many Kafka transactions it took (as many as the positions topic
// shows commits inside it, plus one: more than one), also when the reader
// stops right after a Kafka commit inside a split transaction and the next
// one resumes inside it (no second BEGIN, counts go on). A transaction on an
// uncaptured table writes nothing; snapshot reads carry no block. The
// transaction topic's schemas are Debezium's field names. Negative
// control: the checker fails on the same records with one data record
// dropped, and with one END count changed.
func TestTransactionTopic(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL)")
	e.exec(c, "CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL)")
	e.exec(c, "CREATE TABLE other (id int PRIMARY KEY)")
	e.exec(c, "INSERT INTO a VALUES (-1, 0)") // a snapshot read
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "a"}, {Table: "b"}}
	cfg.ProvideTransactionMetadata = true
	cfg.TransactionTopic = cfg.TopicPrefix + "_tx"
	cfg.TxnMaxRecords = 50
	// The first reader stops right after the first Kafka commit inside a
	// split transaction once armed; the second resumes inside it.
	var armed atomic.Bool
	ctx1, cancel1 := context.WithCancel(ctx)
	defer cancel1()
	first := cfg
	first.OnCommit = func(ci CommitInfo) {
		if armed.Load() && !ci.Position.Complete && ci.Position.LSN != 0 {
			cancel1()
		}
	}
	r1, err := NewReader(first)
	if err != nil {
		t.Fatal(err)
	}
	done1 := make(chan error, 1)
	go func() { done1 <- r1.Run(ctx1) }()
	e.waitSnapshot(c, cfg.Name)

	var model []txModel
	run := func(counts map[string]int64, stmts ...string) {
		t.Helper()
		var xid int64
		err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, "SELECT txid_current()").Scan(&xid); err != nil {
				return err
			}
			for _, s := range stmts {
				if _, err := tx.Exec(ctx, s); err != nil {
					return fmt.Errorf("%s: %w", s, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if counts != nil {
			model = append(model, txModel{xid: xid, counts: counts})
		}
	}
	run(map[string]int64{"public.a": 1, "public.b": 2}, "INSERT INTO a VALUES (1, 1)", "INSERT INTO b VALUES (1, 1), (2, 2)")
	// An update (1), a key change (a delete and a create: 2), a delete (1;
	// its tombstone carries no block).
	run(map[string]int64{"public.a": 3, "public.b": 1}, "UPDATE a SET v = 2 WHERE id = 1", "UPDATE a SET id = 100 WHERE id = 1", "DELETE FROM b WHERE id = 1")
	run(nil, "INSERT INTO other VALUES (1)")
	run(map[string]int64{"public.a": 120}, "INSERT INTO a SELECT g, g FROM generate_series(1000, 1119) g")
	run(map[string]int64{"public.a": 2, "public.b": 1}, "INSERT INTO a VALUES (2, 2)", "INSERT INTO b VALUES (3, 3)", "UPDATE a SET v = 3 WHERE id = 2")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	armed.Store(true)
	run(map[string]int64{"public.a": 100, "public.b": 30}, "INSERT INTO b SELECT g, g FROM generate_series(100, 129) g",
		"INSERT INTO a SELECT g, g FROM generate_series(2000, 2099) g")
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	if p := e.lastPosition(cfg); p.Complete || p.Txn == nil || !p.Txn.Begun {
		t.Fatalf("the first reader stopped at %+v, want inside the last transaction", p)
	}
	e.runReader(cfg) // resumes inside the transaction
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	var obs txObserved
	for _, r := range e.readAll(cfg.TransactionTopic) {
		if r.key["id"] != r.value["id"] {
			t.Errorf("transaction record key %v, value id %v", r.key, r.value["id"])
		}
		obs.txRecs = append(obs.txRecs, r.value)
	}
	for _, tbl := range []string{"a", "b"} {
		for _, r := range e.readAll(cfg.TopicPrefix + ".public." + tbl) {
			if r.value == nil || r.heartbeat() {
				continue
			}
			blk, _ := r.value["transaction"].(map[string]any)
			if r.value["op"] == "r" {
				if blk != nil {
					t.Errorf("snapshot read with a transaction block %v", blk)
				}
				continue
			}
			if blk == nil {
				t.Errorf("%s change without a transaction block: %v", tbl, r.value)
				continue
			}
			src := r.value["source"].(map[string]any)
			obs.data = append(obs.data, txDataRec{table: "public." + tbl, block: blk, txID: src["txId"].(int64)})
		}
	}
	obs.splits = map[string]int{}
	for _, r := range e.readRaw(cfg.PositionsTopic) {
		var p Position
		if string(r.rec.Key) != cfg.Name || json.Unmarshal(r.rec.Value, &p) != nil || p.Complete || p.LSN == 0 {
			continue
		}
		obs.splits[txID(p.XID, uint64(p.LSN))]++
	}
	if problems := checkTransactions(model, obs); len(problems) > 0 {
		t.Errorf("transactions not rebuilt:\n%s", strings.Join(problems, "\n"))
	}
	big := 0
	for _, n := range obs.splits {
		big = max(big, n)
	}
	if big < 2 {
		t.Errorf("the 120-row transaction was committed in %d Kafka transactions, want at least 3 (txn_max_records 50)", big+1)
	}
	fields := map[string]bool{}
	for _, f := range e.rowSchemaFieldsNamed(cfg.TransactionTopic+"-value", "TransactionMetadataValue") {
		fields[f] = true
	}
	for _, f := range []string{"status", "id", "event_count", "data_collections", "ts_ms"} {
		if !fields[f] {
			t.Errorf("transaction value schema lacks Debezium's field %s: %v", f, fields)
		}
	}

	// Negative controls.
	if len(obs.data) > 0 {
		dropped := obs
		dropped.data = slices.Delete(slices.Clone(obs.data), 3, 4)
		if len(checkTransactions(model, dropped)) == 0 {
			t.Error("control: the checker accepts a transaction with a data record missing")
		}
	}
	changed := slices.Clone(model)
	changed[1] = txModel{xid: model[1].xid, counts: map[string]int64{"public.a": 2, "public.b": 1}}
	if len(checkTransactions(changed, obs)) == 0 {
		t.Error("control: the checker accepts a wrong per-table count")
	}
}

// rowSchemaFieldsNamed are the top-level fields of the latest schema of
// subject, whose record must be named name.
func (e *cdcEnv) rowSchemaFieldsNamed(subject, name string) []string {
	e.t.Helper()
	var root map[string]any
	s := e.latestSchema(subject)
	if err := json.Unmarshal([]byte(s), &root); err != nil {
		e.t.Fatal(err)
	}
	if root["name"] != name {
		e.t.Fatalf("%s: record %v, want %s", subject, root["name"], name)
	}
	var out []string
	for _, f := range root["fields"].([]any) {
		out = append(out, f.(map[string]any)["name"].(string))
	}
	return out
}

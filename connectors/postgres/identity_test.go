package postgres

import (
	"testing"
	"time"
)

// TestBeforeImagesKeyChangesAndTruncate: before-images follow REPLICA
// IDENTITY (FULL: every column; DEFAULT: the key columns of a delete, and
// none for an update that keeps the key, as PostgreSQL logs), an UPDATE of the
// primary key is a delete (with its tombstone) of the old key and a create
// of the new one, and TRUNCATE of a table configured with truncate: true
// writes an op=t envelope with a null key to every partition of the
// table's topic, while a TRUNCATE of a table left at the default writes
// nothing (Flink's debezium-avro-confluent format fails on op t). Negative
// control of the default: the same TRUNCATE on full_t is seen.
func TestBeforeImagesKeyChangesAndTruncate(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE full_t (id int PRIMARY KEY, v int NOT NULL)")
	e.exec(c, "ALTER TABLE full_t REPLICA IDENTITY FULL")
	e.exec(c, "CREATE TABLE def_t (id int PRIMARY KEY, v int NOT NULL)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "full_t", Truncate: true}, {Table: "def_t"}}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	for _, tbl := range []string{"full_t", "def_t"} {
		e.exec(c, "INSERT INTO "+tbl+" VALUES (1, 10), (2, 20)")
		e.exec(c, "UPDATE "+tbl+" SET v = 11 WHERE id = 1")
		e.exec(c, "UPDATE "+tbl+" SET id = 3 WHERE id = 2")
		e.exec(c, "DELETE FROM "+tbl+" WHERE id = 1")
	}
	e.exec(c, "TRUNCATE full_t")
	e.exec(c, "TRUNCATE def_t")
	e.exec(c, "INSERT INTO def_t VALUES (7, 70)") // after the TRUNCATE: proves it was decoded
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	type ev struct {
		op     string
		key    any
		before map[string]any
		after  map[string]any
		tomb   bool
	}
	read := func(tbl string) []ev {
		var out []ev
		for _, r := range e.readAll(cfg.TopicPrefix + ".public." + tbl) {
			if r.heartbeat() || (r.value != nil && r.value["op"] == "r") {
				continue
			}
			var k any
			if r.key != nil {
				k = r.key["id"]
			}
			if r.value == nil {
				out = append(out, ev{tomb: true, key: k})
				continue
			}
			x := ev{op: r.value["op"].(string), key: k}
			x.before, _ = r.value["before"].(map[string]any)
			x.after, _ = r.value["after"].(map[string]any)
			out = append(out, x)
		}
		return out
	}
	for _, tbl := range []string{"full_t", "def_t"} {
		evs := read(tbl)
		var upd, del *ev
		ops := map[string]int{}
		for i := range evs {
			x := &evs[i]
			if x.tomb {
				ops["tombstone"]++
				continue
			}
			ops[x.op]++
			switch {
			case x.op == "u":
				upd = x
			case x.op == "d" && x.key == int32(1):
				del = x
			}
		}
		if upd == nil || del == nil {
			t.Fatalf("%s: events %+v", tbl, evs)
		}
		switch {
		case upd.after["id"] != int32(1) || upd.after["v"] != int32(11):
			t.Errorf("%s update: after %v", tbl, upd.after)
		case tbl == "full_t" && (upd.before["id"] != int32(1) || upd.before["v"] != int32(10)):
			t.Errorf("full_t update: before %v, want the whole old row", upd.before)
		case tbl == "def_t" && upd.before != nil: // DEFAULT and the key unchanged: no old tuple
			t.Errorf("def_t update: before %v, want null", upd.before)
		}
		wantDelV := any(int32(11))
		if tbl == "def_t" {
			wantDelV = nil
		}
		if del.before["id"] != int32(1) || del.before["v"] != wantDelV || del.after != nil {
			t.Errorf("%s delete: before %v after %v", tbl, del.before, del.after)
		}
		// 2 inserts + the new key of the key change; deletes: id 2 (key
		// change) and id 1, each with a tombstone.
		wantC := 3
		if tbl == "def_t" {
			wantC = 4 // and id 7 after the TRUNCATE
			if ops["t"] != 0 {
				t.Errorf("def_t: %d op t records, want none (truncate not enabled)", ops["t"])
			}
		}
		if ops["c"] != wantC || ops["u"] != 1 || ops["d"] != 2 || ops["tombstone"] != 2 {
			t.Errorf("%s: ops %v", tbl, ops)
		}
		if tbl == "full_t" {
			truncs := map[any]int{}
			for _, x := range evs {
				if x.op == "t" {
					truncs[x.key]++
				}
			}
			if len(truncs) != 1 || truncs[nil] != cfg.TopicPartitions {
				t.Errorf("truncate records by key: %v, want one null-key record per partition (%d)", truncs, cfg.TopicPartitions)
			}
		}
	}
}

package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestPartitionedTableOneTopic: a partitioned table is published as its
// root (pg_publication.pubviaroot), so its partitions' rows, those of a
// partition attached while the reader runs and a row moved across
// partitions by an UPDATE (a delete and an insert) all go to the root's
// one topic, and no partition gets a topic. Folding the topic by key gives
// the table as PostgreSQL returns it (the model), and the snapshot reads
// every partition. Before, each partition was published under its own
// name, to a topic of its own.
func TestPartitionedTableOneTopic(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE m (id int NOT NULL, region text NOT NULL, v int NOT NULL, PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
	e.exec(c, "CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu')")
	e.exec(c, "CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us')")
	e.exec(c, "INSERT INTO m VALUES (1, 'eu', 1), (2, 'us', 2), (3, 'eu', 3)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "m"}}
	cfg.EnsureReplicaIdentityFull = true
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO m VALUES (4, 'us', 4)")
	e.exec(c, "UPDATE m SET v = 30 WHERE id = 3")
	e.exec(c, "DELETE FROM m WHERE id = 2")
	e.exec(c, "UPDATE m SET region = 'us' WHERE id = 1") // moves the row to m_us
	e.exec(c, "CREATE TABLE m_ap PARTITION OF m FOR VALUES IN ('ap')")
	e.exec(c, "INSERT INTO m VALUES (5, 'ap', 5)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	var viaRoot bool
	if err := c.QueryRow(context.Background(), "SELECT pubviaroot FROM pg_publication WHERE pubname = $1", cfg.WithDefaults().Publication).Scan(&viaRoot); err != nil || !viaRoot {
		t.Errorf("publication: pubviaroot %v (%v), want true", viaRoot, err)
	}
	td, err := e.admin().ListTopics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"m_eu", "m_us", "m_ap"} {
		if td.Has(cfg.TopicPrefix + ".public." + p) {
			t.Errorf("partition %s has a topic of its own", p)
		}
	}
	state := map[string]string{}
	for _, r := range e.readAll(cfg.TopicPrefix + ".public.m") {
		if r.heartbeat() {
			continue
		}
		k := fmt.Sprint(r.key["id"], "/", r.key["region"])
		if r.value == nil {
			delete(state, k)
			continue
		}
		if after, _ := r.value["after"].(map[string]any); after != nil {
			state[k] = fmt.Sprint(after["v"])
		}
	}
	want := map[string]string{}
	rows, err := c.Query(context.Background(), "SELECT id, region, v FROM m")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, v int32
		var region string
		if err := rows.Scan(&id, &region, &v); err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprint(id, "/", region)] = fmt.Sprint(v)
	}
	if fmt.Sprint(state) != fmt.Sprint(want) {
		t.Errorf("topic folds to %v, the table is %v", state, want)
	}
}

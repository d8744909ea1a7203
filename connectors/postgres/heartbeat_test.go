package postgres

import (
	"strconv"
	"testing"
	"time"
)

// TestHeartbeatsReachEveryPartition: with one busy table, one idle table
// and an upsert table, every partition of every CDC topic receives
// heartbeat records (header loanflow.heartbeat = event time in ms, equal to
// the record timestamp), read_committed, after the snapshot and with event
// times that do not go backwards per partition: a downstream temporal join
// never waits on a quiet partition or an idle table.
func TestHeartbeatsReachEveryPartition(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE busy (id int PRIMARY KEY, v int NOT NULL)")
	e.exec(c, "CREATE TABLE idle (id int PRIMARY KEY, v int NOT NULL)")
	e.exec(c, "CREATE TABLE flat (id int PRIMARY KEY, v int NOT NULL)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "busy"}, {Table: "idle"}, {Table: "flat", Mode: ModeUpsert, Topic: cfg.TopicPrefix + "_flat"}}
	cfg.TopicPartitions = 4
	cfg.HeartbeatInterval = 300 * time.Millisecond
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	start := time.Now()
	e.exec(c, "INSERT INTO busy VALUES (1, 1)")
	time.Sleep(4 * cfg.HeartbeatInterval)
	e.exec(c, "UPDATE busy SET v = 2 WHERE id = 1")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	time.Sleep(3 * cfg.HeartbeatInterval)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	topics := []string{cfg.TopicPrefix + ".public.busy", cfg.TopicPrefix + ".public.idle", cfg.TopicPrefix + "_flat"}
	type part struct {
		topic string
		p     int32
	}
	beats := map[part]int{}
	last := map[part]int64{}
	for _, r := range e.readAll(topics...) {
		if !r.heartbeat() {
			continue
		}
		k := part{r.rec.Topic, r.rec.Partition}
		ms, err := strconv.ParseInt(string(r.rec.Headers[0].Value), 10, 64)
		if err != nil || r.rec.Headers[0].Key != HeartbeatHeader {
			t.Fatalf("%s/%d: heartbeat header %q=%q", k.topic, k.p, r.rec.Headers[0].Key, r.rec.Headers[0].Value)
		}
		if r.rec.Timestamp.UnixMilli() != ms || string(r.rec.Key) != string(heartbeatKey) || r.rec.Value != nil {
			t.Errorf("%s/%d: heartbeat record timestamp %v, key %q, value %q; header says %d", k.topic, k.p, r.rec.Timestamp, r.rec.Key, r.rec.Value, ms)
		}
		if ms < last[k] {
			t.Errorf("%s/%d: heartbeat event time went back from %d to %d", k.topic, k.p, last[k], ms)
		}
		last[k] = ms
		beats[k]++
	}
	for _, topic := range topics {
		for p := int32(0); p < int32(cfg.TopicPartitions); p++ {
			k := part{topic, p}
			// The upsert topic is compacted on the heartbeat key, so the
			// broker may have kept only the newest heartbeat.
			want := 2
			if topic == cfg.TopicPrefix+"_flat" {
				want = 1
			}
			if beats[k] < want {
				t.Errorf("%s/%d: %d heartbeats, want at least %d", topic, p, beats[k], want)
				continue
			}
			if age := time.Since(time.UnixMilli(last[k])); age > time.Since(start) {
				t.Errorf("%s/%d: newest heartbeat %v old, from before the test's changes", topic, p, age)
			}
		}
	}
}

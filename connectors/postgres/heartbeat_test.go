package postgres

import (
	"strconv"
	"testing"
	"time"
)

// TestHeartbeatsDecodable: heartbeats reach every partition of the view
// topic (the decisions job's customer_360 watermark), of the table topics
// (the portfolio and cache jobs' watermarks) except those configured with
// heartbeats: false, and the heartbeat topic; every record of every topic
// decodes as Confluent-framed Avro with the registry's schemas (readAll
// fails on any record whose key or value does not): a heartbeat's key is
// framed with the topic's key schema (the Avro string
// __loanflow_heartbeat in a view topic, {id: -2147483648} for an int
// key), its value null, its header loanflow.heartbeat the event time in ms
// (equal to the record timestamp), not going backwards per partition. Before, heartbeats went to every partition of every topic
// with the raw key __loanflow_heartbeat, which a Confluent-Avro consumer
// rejects ("Unknown magic byte").
func TestHeartbeatsDecodable(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.customer360Tables(c)
	e.exec(c, "CREATE TABLE busy (id int PRIMARY KEY, v int NOT NULL)")
	e.exec(c, "CREATE TABLE idle (id int PRIMARY KEY, v int NOT NULL)")
	cfg := e.cfg
	view := Customer360View()
	view.Topic = cfg.TopicPrefix + "_customer_360"
	cfg.Views = []ViewConfig{view}
	off := false
	cfg.Tables = []TableConfig{{Table: "busy"}, {Table: "idle", Heartbeats: &off}}
	cfg.EnsureReplicaIdentityFull = true
	cfg.TopicPartitions = 4
	cfg.HeartbeatInterval = 300 * time.Millisecond
	cfg.HeartbeatTopic = cfg.TopicPrefix + "_heartbeat"
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	start := time.Now()
	e.exec(c, "INSERT INTO busy VALUES (1, 1)")
	e.exec(c, "INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ('c1', 5000, 'LOW')")
	e.exec(c, "INSERT INTO credit_profiles VALUES ('c1', 700)")
	time.Sleep(4 * cfg.HeartbeatInterval)
	e.exec(c, "UPDATE busy SET v = 2 WHERE id = 1")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	time.Sleep(3 * cfg.HeartbeatInterval)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	type part struct {
		topic string
		p     int32
	}
	for _, r := range e.readAll(cfg.TopicPrefix + ".public.idle") {
		if r.heartbeat() {
			t.Errorf("%s/%d@%d: heartbeat in a topic configured without them", r.rec.Topic, r.rec.Partition, r.rec.Offset)
		}
	}
	busy := cfg.TopicPrefix + ".public.busy"
	beats := map[part]int{}
	last := map[part]int64{}
	var topicBeats int
	var lastTopicBeat int64
	for _, r := range e.readAll(view.Topic, busy, cfg.HeartbeatTopic) {
		k := part{r.rec.Topic, r.rec.Partition}
		if r.rec.Topic == cfg.HeartbeatTopic {
			if r.key["serverName"] != cfg.Name {
				t.Errorf("heartbeat topic key %v, want serverName %s", r.key, cfg.Name)
			}
			ts, _ := r.value["ts_ms"].(int64)
			if ts != r.rec.Timestamp.UnixMilli() || ts < lastTopicBeat {
				t.Errorf("heartbeat topic: ts_ms %d, record time %v, previous %d", ts, r.rec.Timestamp, lastTopicBeat)
			}
			lastTopicBeat = ts
			topicBeats++
			continue
		}
		if !r.heartbeat() {
			continue
		}
		ms, err := strconv.ParseInt(string(r.rec.Headers[0].Value), 10, 64)
		if err != nil || r.rec.Headers[0].Key != HeartbeatHeader {
			t.Fatalf("%s/%d: heartbeat header %q=%q", k.topic, k.p, r.rec.Headers[0].Key, r.rec.Headers[0].Value)
		}
		key, _, err := newDecoder(t, e.regURL).decodeAny(r.rec.Key)
		var wantKey any = HeartbeatKey
		if k.topic == busy {
			key, wantKey = r.key["id"], int32(-2147483648)
		}
		if err != nil || key != wantKey || r.rec.Timestamp.UnixMilli() != ms || r.rec.Value != nil {
			t.Errorf("%s/%d: heartbeat key %v (%v), timestamp %v, value %q; header says %d", k.topic, k.p, key, err, r.rec.Timestamp, r.rec.Value, ms)
		}
		if ms < last[k] {
			t.Errorf("%s/%d: heartbeat event time went back from %d to %d", k.topic, k.p, last[k], ms)
		}
		last[k] = ms
		beats[k]++
	}
	for p := int32(0); p < 2*int32(cfg.TopicPartitions); p++ {
		k := part{view.Topic, p % int32(cfg.TopicPartitions)}
		if p >= int32(cfg.TopicPartitions) {
			k.topic = busy
		}
		if beats[k] < 2 {
			t.Errorf("%s/%d: %d heartbeats, want at least 2", k.topic, k.p, beats[k])
			continue
		}
		if age := time.Since(time.UnixMilli(last[k])); age > time.Since(start) {
			t.Errorf("%s/%d: newest heartbeat %v old, from before the test's changes", k.topic, k.p, age)
		}
	}
	if topicBeats < 2 {
		t.Errorf("heartbeat topic has %d records, want at least 2", topicBeats)
	}
}

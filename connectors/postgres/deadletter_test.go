package postgres

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestValuesWithoutAvroFormGoToDeadLetters: a numeric NaN and an infinite
// timestamp cannot be written as Avro; those changes go to the dead-letter
// topic with the error and their source in headers (never silently
// dropped), and the reader carries on with the next changes.
func TestValuesWithoutAvroFormGoToDeadLetters(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE odd (id int PRIMARY KEY, n numeric(10,2), ts timestamptz)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "odd"}}
	cfg.EnsureReplicaIdentityFull = true
	cfg.DeadLetterTopic = cfg.TopicPrefix + "_dlq"
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO odd VALUES (1, 1.50, now())")
	e.exec(c, "INSERT INTO odd VALUES (2, 'NaN', now())")
	e.exec(c, "INSERT INTO odd VALUES (3, 2.00, 'infinity')")
	e.exec(c, "INSERT INTO odd VALUES (4, 3.00, now())")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	ids := map[int32]bool{}
	for _, r := range e.readAll(cfg.TopicPrefix + ".public.odd") {
		if !r.heartbeat() && r.value != nil && r.value["op"] == "c" {
			ids[r.key["id"].(int32)] = true
		}
	}
	if len(ids) != 2 || !ids[1] || !ids[4] {
		t.Errorf("table topic has creates %v, want ids 1 and 4", ids)
	}
	dead := map[string]string{}
	for _, r := range e.readRaw(cfg.DeadLetterTopic) {
		if r.heartbeat() {
			continue
		}
		h := map[string]string{}
		for _, x := range r.rec.Headers {
			h[x.Key] = string(x.Value)
		}
		var body map[string]any
		if err := json.Unmarshal(r.rec.Value, &body); err != nil {
			t.Fatalf("dead letter body %q: %v", r.rec.Value, err)
		}
		after, _ := body["after_text"].(map[string]any)
		id, _ := after["id"].(string)
		if h["error"] == "" || h["source.table"] != "public.odd" || h["source.lsn"] == "" || h["source.topic"] != cfg.TopicPrefix+".public.odd" {
			t.Errorf("dead letter %s headers: %v", id, h)
		}
		dead[id] = h["error"]
	}
	if len(dead) != 2 || !strings.Contains(strings.ToLower(dead["2"]), "nan") || !strings.Contains(strings.ToLower(dead["3"]), "infinit") {
		t.Errorf("dead letters by id: %v, want 2 (NaN) and 3 (infinity)", dead)
	}
}

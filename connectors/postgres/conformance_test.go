package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/internal/conformance"
)

// TestConformanceForeignConsumer: a foreign consumer written as a new user
// would (kafkajs and @kafkajs/confluent-schema-registry from npm, pinned
// by its package-lock.json; internal/conformance/node/check.js) reads every
// record of every Avro topic the reader writes and decodes key and value
// with the embedded schema registry that `loanflow dev` serves: the
// shipped tables and the customer_360 view on the API's schema (native
// types, heartbeats in the table and view topics, the heartbeat topic),
// and a table of every mapped type in debezium type mode with the
// transaction topic and TRUNCATE records (null keys). Inserts, updates,
// primary-key changes, deletes with tombstones and a TRUNCATE are all in
// the topics. The record counts per topic must equal what the Go reader
// decodes (readAll, which also fails on any record that does not decode),
// so the checker saw every record. Negative control: a topic holding one
// good record and one with a raw, non-Avro key (what heartbeats were
// before issue 10 item 8) makes the checker fail, naming the key. The
// positions and dead-letter topics hold JSON by design and are not read.
func TestConformanceForeignConsumer(t *testing.T) {
	node, dir := conformance.Checker(t)
	e := newEnv(t)
	if _, err := migrations.Up(context.Background(), e.dsn); err != nil {
		t.Fatal(err)
	}
	c := e.conn()
	e.exec(c, "INSERT INTO lenders (lender_id, name) VALUES ('l1', 'Lender One')")
	ins := `INSERT INTO customers (customer_id, name_ct, ssn_ct, ssn_index, ssn_index_key_version, credit_limit, risk_tier)
		VALUES ($1, '\x01', '\x02', '\x03', 7, 5000, 'LOW')`
	e.exec(c, ins, "c1")
	e.exec(c, "INSERT INTO credit_profiles (customer_id, current_score) VALUES ('c1', 700)")
	e.exec(c, `CREATE TABLE ty (id int PRIMARY KEY, s smallint, ts timestamptz, t timestamp, d date, tm time, u uuid, j jsonb,
		n numeric(10,2), nv numeric, na numeric[], b bytea, f float8, ok boolean, tags text[])`)
	e.exec(c, "ALTER TABLE ty REPLICA IDENTITY FULL")
	row := `(1, 1, now(), now(), current_date, current_time, gen_random_uuid(), '{"a":1}', 1.5, 2.25, '{1.5,NULL}', '\xff', 0.5, true, '{a,b}')`
	e.exec(c, "INSERT INTO ty VALUES "+row)

	shipped := e.cfg
	shipped.Tables = LoanflowTables()
	for i := range shipped.Tables {
		shipped.Tables[i].Topic = e.cfg.TopicPrefix + "." + shipped.Tables[i].Table
	}
	view := Customer360View()
	view.Topic = e.cfg.TopicPrefix + "_customer_360"
	shipped.Views = []ViewConfig{view}
	shipped.EnsureReplicaIdentityFull = true
	shipped.HeartbeatTopic = e.cfg.TopicPrefix + "_hb"
	shipped.HeartbeatInterval = 200 * time.Millisecond
	e.runReader(shipped)
	e.waitSnapshot(c, shipped.Name)

	dbz := e.cfg
	dbz.Name = e.cfg.Name[:min(len(e.cfg.Name), 56)] + "_dbz"
	dbz.PositionsTopic = dbz.Name + "_positions"
	dbz.TopicPrefix = e.cfg.TopicPrefix + "_dbz"
	dbz.Types = TypesDebezium
	dbz.ProvideTransactionMetadata = true
	dbz.HeartbeatTopic = dbz.TopicPrefix + "_hb"
	dbz.Tables = []TableConfig{{Table: "ty", Truncate: true}}
	e.runReader(dbz)
	e.waitSlotStreaming(c, dbz.Name)

	e.exec(c, ins, "c2")
	e.exec(c, "INSERT INTO credit_profiles (customer_id, current_score) VALUES ('c2', 640)")
	e.exec(c, "UPDATE customers SET credit_limit = 6000 WHERE customer_id = 'c1'")
	e.exec(c, `INSERT INTO loans (loan_id, application_id, customer_id, lender_id, amount, balance, currency, term_months, status)
		VALUES ('loan1', 'app1', 'c1', 'l1', 1000, 1000, 'USD', 12, 'ACTIVE'), ('loan2', 'app2', 'c2', 'l1', 500, 500, 'USD', 6, 'ACTIVE')`)
	e.exec(c, "UPDATE loans SET balance = 900 WHERE loan_id = 'loan1'")
	e.exec(c, "DELETE FROM loans WHERE loan_id = 'loan2'")
	e.exec(c, "INSERT INTO ty VALUES "+strings.Replace(row, "(1,", "(2,", 1))
	e.exec(c, "UPDATE ty SET id = 3 WHERE id = 2")
	e.exec(c, "DELETE FROM ty WHERE id = 1")
	e.exec(c, "TRUNCATE ty")
	e.exec(c, "INSERT INTO ty VALUES "+strings.Replace(row, "(1,", "(4,", 1))
	lsn := e.currentLSN(c)
	e.waitFlushed(c, shipped.Name, lsn, time.Minute)
	e.waitFlushed(c, dbz.Name, lsn, time.Minute)

	topics := []string{
		shipped.Tables[0].Topic, shipped.Tables[1].Topic, shipped.Tables[2].Topic, view.Topic, shipped.HeartbeatTopic,
		dbz.TopicPrefix + ".public.ty", dbz.WithDefaults().TransactionTopic, dbz.HeartbeatTopic,
	}
	recs := e.readAll(topics...)                                                                   // decodes every record, or fails
	res, code, stderr := conformance.Run(t, node, dir, e.brokers, e.regURL, "test.end", topics...) // e.read's end markers
	if code != 0 || len(res.Failures) > 0 {
		t.Fatalf("the foreign consumer failed (exit %d): %v\n%s", code, res.Failures, stderr)
	}
	// readAll returns what its polls brought, also records written after
	// its end marker (heartbeats go on): count those before the marker.
	want := map[string]int{}
	offsets := map[string][]int64{}
	for _, r := range recs {
		k := fmt.Sprintf("%s/%d", r.rec.Topic, r.rec.Partition)
		end, err := strconv.ParseInt(res.Ends[k], 10, 64)
		if err != nil {
			t.Fatalf("the checker saw no end marker in %s (ends %v)", k, res.Ends)
		}
		if r.rec.Offset < end {
			want[r.rec.Topic]++
			offsets[k] = append(offsets[k], r.rec.Offset)
		}
	}
	for _, topic := range topics {
		got := res.Topics[topic]
		if want[topic] == 0 || got.Records != want[topic] || got.Keys+got.NullKeys != got.Records || got.Values+got.Tombstones != got.Records {
			t.Errorf("%s: the foreign consumer decoded %+v, the topic has %d records; checker ends %v; Go offsets %v", topic, got, want[topic], res.Ends, offsets)
		}
	}
	ty := res.Topics[dbz.TopicPrefix+".public.ty"]
	if ty.Tombstones == 0 || ty.NullKeys == 0 {
		t.Errorf("ty: %+v, want tombstones and the TRUNCATE's null-key records", ty)
	}

	// Negative control: a raw, non-Avro key.
	ctrl := e.cfg.TopicPrefix + "_ctrl"
	reg := newDecoder(t, e.regURL).cl
	ss, err := reg.CreateSchema(context.Background(), ctrl+"-value", sr.Schema{Schema: `{"type":"record","name":"V","fields":[{"name":"x","type":"int"}]}`})
	if err != nil {
		t.Fatal(err)
	}
	good, err := avro.MustParse(ss.Schema.Schema).AppendEncode(frame(nil, ss.ID), map[string]any{"x": 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin().CreateTopic(context.Background(), 1, -1, nil, ctrl); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(ctrl))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, r := range []*kgo.Record{{Value: good}, {Key: []byte(HeartbeatKey)}} {
		if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	e.readRaw(ctrl) // writes the end markers
	res, code, stderr = conformance.Run(t, node, dir, e.brokers, e.regURL, "test.end", ctrl)
	if code != 1 || len(res.Failures) != 1 || !strings.Contains(res.Failures[0], "key does not decode") || res.Topics[ctrl].Values != 1 {
		t.Errorf("control: the checker on a raw key: exit %d, %+v\n%s", code, res, stderr)
	}
}

package postgres

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/loanflow/loanflow/api/migrations"
)

// conformanceDir is the foreign consumer's Node.js project.
const conformanceDir = "testdata/conformance"

// conformanceChecker installs the foreign consumer's npm packages (the
// exact versions of its package-lock.json, `npm ci`) into a cache
// directory outside the repository, once per version of its files, and
// returns that directory (holding check.js). Without node and npm the test
// is skipped locally and fails under CI=true.
func conformanceChecker(t *testing.T) (node, dir string) {
	t.Helper()
	node, errNode := exec.LookPath("node")
	npm, errNpm := exec.LookPath("npm")
	if errNode != nil || errNpm != nil {
		const hint = "the conformance test needs Node.js 18+ and npm: run `make deps` as root, or apt-get install -y nodejs npm"
		if os.Getenv("CI") == "true" {
			t.Fatal(hint)
		}
		t.Skip(hint)
	}
	files := []string{"package.json", "package-lock.json", "check.js"}
	h := sha256.New()
	contents := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(conformanceDir, f))
		if err != nil {
			t.Fatal(err)
		}
		contents[f] = b
		h.Write(b)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(base, "loanflow", "conformance-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json")); err == nil {
		return node, dir
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "conformance-tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	for f, b := range contents {
		if err := os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", tmp, err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr != nil { // not installed meanwhile by another run
			t.Fatal(err)
		}
	}
	return node, dir
}

// conformanceResult is check.js's output.
type conformanceResult struct {
	Topics map[string]struct {
		Records, Keys, Values, Tombstones, NullKeys int
	} `json:"topics"`
	Failures []string `json:"failures"`
}

// runChecker runs check.js on topics; it returns its result and exit code.
func (e *cdcEnv) runChecker(node, dir string, topics ...string) (conformanceResult, int, string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	args := append([]string{filepath.Join(dir, "check.js"), strings.Join(e.brokers, ","), e.regURL}, topics...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CONFORMANCE_END_HEADER=test.end") // the end markers e.read writes
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("running check.js: %v", err)
	}
	var res conformanceResult
	if code != 2 {
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
			e.t.Fatalf("check.js output %q (stderr %s): %v", stdout.String(), stderr.String(), err)
		}
	}
	return res, code, stderr.String()
}

// TestConformanceForeignConsumer: a foreign consumer written as a new user
// would (kafkajs and @kafkajs/confluent-schema-registry from npm, pinned
// by its package-lock.json; testdata/conformance/check.js) reads every
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
	node, dir := conformanceChecker(t)
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
	e.waitSnapshot(c, dbz.Name)

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
	want := map[string]int{}
	for _, r := range e.readAll(topics...) { // decodes every record, or fails
		want[r.rec.Topic]++
	}
	res, code, stderr := e.runChecker(node, dir, topics...)
	if code != 0 || len(res.Failures) > 0 {
		t.Fatalf("the foreign consumer failed (exit %d): %v\n%s", code, res.Failures, stderr)
	}
	for _, topic := range topics {
		got := res.Topics[topic]
		if want[topic] == 0 || got.Records != want[topic] || got.Keys+got.NullKeys != got.Records || got.Values+got.Tombstones != got.Records {
			t.Errorf("%s: the foreign consumer decoded %+v, the topic has %d records", topic, got, want[topic])
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
	res, code, stderr = e.runChecker(node, dir, ctrl)
	if code != 1 || len(res.Failures) != 1 || !strings.Contains(res.Failures[0], "key does not decode") || res.Topics[ctrl].Values != 1 {
		t.Errorf("control: the checker on a raw key: exit %d, %+v\n%s", code, res, stderr)
	}
}

package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/loanflow/loanflow/api/migrations"
)

// piiHits scans the raw bytes of every record (key, value, headers) of
// topics for each sentinel and returns topic → sentinel → records holding
// it. It reads read_uncommitted, so aborted transactions count too.
func (e *cdcEnv) piiHits(sentinels []string, topics ...string) map[string]map[string]int {
	e.t.Helper()
	hits := map[string]map[string]int{}
	for _, r := range e.readRawUncommitted(topics...) {
		blob := append(append([]byte{}, r.Key...), r.Value...)
		for _, h := range r.Headers {
			blob = append(append(blob, h.Key...), h.Value...)
		}
		for _, s := range sentinels {
			if bytes.Contains(blob, []byte(s)) {
				if hits[r.Topic] == nil {
					hits[r.Topic] = map[string]int{}
				}
				hits[r.Topic][s]++
			}
		}
	}
	return hits
}

// readRawUncommitted reads every record of topics (read_uncommitted) up to
// their end offsets as listed when called.
func (e *cdcEnv) readRawUncommitted(topics ...string) []*kgo.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	td, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		e.t.Fatal(err)
	}
	var exist []string
	for _, t := range topics {
		if d, ok := td[t]; ok && d.Err == nil {
			exist = append(exist, t)
		}
	}
	if len(exist) == 0 {
		return nil
	}
	ends, err := adm.ListEndOffsets(ctx, exist...)
	if err != nil {
		e.t.Fatal(err)
	}
	want := map[string]map[int32]int64{}
	offsets := map[string]map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			e.t.Fatalf("end offset of %s/%d: %v", o.Topic, o.Partition, o.Err)
		}
		if o.Offset == 0 {
			return
		}
		if want[o.Topic] == nil {
			want[o.Topic], offsets[o.Topic] = map[int32]int64{}, map[int32]kgo.Offset{}
		}
		want[o.Topic][o.Partition] = o.Offset
		offsets[o.Topic][o.Partition] = kgo.NewOffset().AtStart()
	})
	if len(offsets) == 0 {
		return nil
	}
	cons, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumePartitions(offsets), kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cons.Close()
	var out []*kgo.Record
	left := func() bool {
		for _, ps := range want {
			if len(ps) > 0 {
				return true
			}
		}
		return false
	}
	for left() {
		fs := cons.PollFetches(ctx)
		if ctx.Err() != nil {
			e.t.Fatalf("reading %v: %v (left %v)", topics, ctx.Err(), want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, r)
			if r.Offset+1 >= want[r.Topic][r.Partition] {
				delete(want[r.Topic], r.Partition)
			}
		})
		fs.EachError(func(topic string, p int32, err error) { e.t.Fatalf("fetching %s/%d: %v", topic, p, err) })
	}
	return out
}

// rowSchemaFields are the fields of the row records (named Value or Key,
// at any depth: the envelope's before/after, an upsert value, a key) of
// every registered version of subject.
func (e *cdcEnv) rowSchemaFields(subject string) []string {
	e.t.Helper()
	cl, err := sr.NewClient(sr.URLs(e.regURL))
	if err != nil {
		e.t.Fatal(err)
	}
	ss, err := cl.Schemas(context.Background(), subject)
	if err != nil {
		e.t.Fatalf("schemas of %s: %v", subject, err)
	}
	var out []string
	var walk func(any)
	walk = func(n any) {
		switch x := n.(type) {
		case []any:
			for _, y := range x {
				walk(y)
			}
		case map[string]any:
			if x["type"] == "record" && (x["name"] == "Value" || x["name"] == "Key") {
				for _, f := range x["fields"].([]any) {
					out = append(out, f.(map[string]any)["name"].(string))
				}
				return
			}
			for _, y := range x {
				walk(y)
			}
		}
	}
	for _, x := range ss {
		var v any
		if err := json.Unmarshal([]byte(x.Schema.Schema), &v); err != nil {
			e.t.Fatal(err)
		}
		walk(v)
	}
	if len(out) == 0 {
		e.t.Fatalf("%s: no row record in %d schemas", subject, len(ss))
	}
	return out
}

// rowFields are the field names of a row image (a decoded before/after or
// upsert value).
func rowFields(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestColumnFilters: a table with a column allow-list (people: id, score)
// and one with a deny-list (accts: every column but owner and dob) never
// send the other columns, in any record of any topic the reader writes:
// the initial snapshot, inserts, updates (REPLICA IDENTITY FULL, so the
// WAL's before-images carry every column), deletes, an incremental
// snapshot, a schema change and a change too large for its topic (dead-
// lettered with the columns' text). Every record of the table topics
// decodes (readAll), each row image has exactly the kept columns with the
// values the test wrote, the registered schemas never name an excluded
// column, and the raw bytes of every record (table topics, dead-letter,
// positions, heartbeats, aborted transactions too) never contain the
// values of excluded columns. Negative control: ctrl has the same kind of
// column unfiltered, and its sentinel is found in its topic.
func TestColumnFilters(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, ssn text, score int)")
	e.exec(c, "CREATE TABLE accts (id text PRIMARY KEY, owner text, dob date, note text, bal numeric(10,2))")
	e.exec(c, "CREATE TABLE ctrl (id int PRIMARY KEY, ssn text)")
	e.exec(c, "INSERT INTO people SELECT g, 'PIIname' || g, 'PIIssn' || g, g * 10 FROM generate_series(1, 5) g")
	e.exec(c, "INSERT INTO accts SELECT 'a' || g, 'PIIowner' || g, '1970-01-01'::date + g, 'n' || g, g FROM generate_series(1, 5) g")
	e.exec(c, "INSERT INTO ctrl VALUES (1, 'CTRLPIIssn')")
	cfg := e.cfg
	cfg.EnsureReplicaIdentityFull = true
	cfg.MaxRecordBytes = 100000
	cfg.DeadLetterTopic = cfg.TopicPrefix + "_dlq"
	cfg.HeartbeatTopic = cfg.TopicPrefix + "_hb"
	cfg.Tables = []TableConfig{
		{Table: "people", Columns: []string{"id", "score"}},
		{Table: "accts", ExcludeColumns: []string{"owner", "dob"}},
		{Table: "ctrl"},
	}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO people VALUES (6, 'PIIname6', 'PIIssn6', 60)")
	e.exec(c, "UPDATE people SET name = 'PIIname7', ssn = 'PIIssn7' WHERE id = 1")
	e.exec(c, "UPDATE people SET score = 11 WHERE id = 1")
	e.exec(c, "DELETE FROM people WHERE id = 2")
	e.exec(c, "INSERT INTO accts VALUES ('a6', 'PIIowner6', '2000-02-02', 'n6', 6)")
	e.exec(c, "UPDATE accts SET owner = 'PIIowner7', bal = 7 WHERE id = 'a1'")
	e.exec(c, "DELETE FROM accts WHERE id = 'a2'")
	// Too large for max_record_bytes: dead-lettered with the columns' text.
	e.exec(c, "INSERT INTO accts VALUES ('big', 'PIIowner8', '1999-09-09', repeat('x', 200000), 8)")
	// A schema change: a new relation version keeps the filter.
	e.exec(c, "ALTER TABLE people ADD COLUMN extra text")
	e.exec(c, "INSERT INTO people VALUES (9, 'PIIname9', 'PIIssn9', 90, 'PIIextra9')")
	if err := SignalSnapshot(context.Background(), e.dsn, []string{"people", "accts"}); err != nil {
		t.Fatal(err)
	}
	// The incremental snapshot re-reads every row: wait until people's
	// topic holds a snapshot read of id 9 (read after the signal).
	peopleTopic, acctsTopic := cfg.TopicPrefix+".public.people", cfg.TopicPrefix+".public.accts"
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
		n := 0
		var seen []string
		for _, r := range e.readAll(peopleTopic, acctsTopic) {
			if r.value != nil && r.value["op"] == "r" {
				if src, _ := r.value["source"].(map[string]any); src != nil && (src["snapshot"] == "incremental" || src["snapshot"] == "last_in_data_collection") {
					n++
					seen = append(seen, fmt.Sprint(r.key["id"]))
				}
			}
		}
		if n >= 6+5 { // people 1,3,4,5,6,9; accts a1,a3,a4,a5,a6 (big is too large)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("incremental snapshot wrote %d reads (%v), want 11", n, seen)
		}
		time.Sleep(200 * time.Millisecond)
	}

	want := map[string][]string{
		peopleTopic: {"id", "score"},
		acctsTopic:  {"bal", "id", "note"},
	}
	model := map[string]map[string]map[string]string{ // topic → key → field → text
		peopleTopic: {"1": {"score": "11"}, "3": {"score": "30"}, "4": {"score": "40"}, "5": {"score": "50"}, "6": {"score": "60"}, "9": {"score": "90"}},
		acctsTopic:  {"a1": {"note": "n1", "bal": "7"}, "a3": {"note": "n3", "bal": "3"}, "a4": {"note": "n4", "bal": "4"}, "a5": {"note": "n5", "bal": "5"}, "a6": {"note": "n6", "bal": "6"}},
	}
	for topic, fields := range want {
		state := map[string]map[string]string{}
		for _, r := range e.readAll(topic) {
			if r.heartbeat() {
				continue
			}
			if got := rowFields(r.key); !slices.Equal(got, []string{"id"}) {
				t.Errorf("%s@%d: key fields %v", topic, r.rec.Offset, got)
			}
			k := fmt.Sprint(r.key["id"])
			if r.value == nil {
				delete(state, k)
				continue
			}
			for _, img := range []string{"before", "after"} {
				row, _ := r.value[img].(map[string]any)
				if row == nil {
					continue
				}
				if got := rowFields(row); !slices.Equal(got, fields) {
					t.Errorf("%s@%d %s: fields %v, want %v", topic, r.rec.Offset, img, got, fields)
				}
				if img == "after" {
					s := map[string]string{}
					for f, v := range row {
						if f != "id" {
							s[f] = textOf(v)
						}
					}
					state[k] = s
				}
			}
		}
		if fmt.Sprint(state) != fmt.Sprint(model[topic]) {
			t.Errorf("%s: folded state %v, want %v", topic, state, model[topic])
		}
	}
	for _, subj := range []string{peopleTopic + "-value", peopleTopic + "-key", acctsTopic + "-value", acctsTopic + "-key"} {
		for _, f := range e.rowSchemaFields(subj) {
			if slices.Contains([]string{"name", "ssn", "extra", "owner", "dob"}, f) {
				t.Errorf("a registered schema of %s has excluded column %s", subj, f)
			}
		}
	}
	dl := e.deadLetters(cfg.DeadLetterTopic)
	// The too-large row, twice: its insert and its incremental snapshot read.
	if len(dl) != 2 || dl[0].h["reason"] != "too_large" || dl[1].h["reason"] != "too_large" {
		t.Errorf("dead letters %+v, want the too-large accts row twice", dl)
	}
	var sentinels []string
	for i := 1; i <= 9; i++ {
		sentinels = append(sentinels, fmt.Sprintf("PIIname%d", i), fmt.Sprintf("PIIssn%d", i), fmt.Sprintf("PIIowner%d", i))
	}
	sentinels = append(sentinels, "PIIextra9", "2000-02-02", "1999-09-09", "CTRLPIIssn")
	hits := e.piiHits(sentinels, peopleTopic, acctsTopic, cfg.TopicPrefix+".public.ctrl", cfg.DeadLetterTopic, cfg.PositionsTopic, cfg.HeartbeatTopic)
	ctrl := hits[cfg.TopicPrefix+".public.ctrl"]
	if ctrl["CTRLPIIssn"] == 0 {
		t.Errorf("negative control: the unfiltered ctrl.ssn sentinel was not found in its topic (hits %v)", hits)
	}
	delete(hits, cfg.TopicPrefix+".public.ctrl")
	if len(hits) > 0 {
		t.Errorf("excluded column values found in records: %v", hits)
	}
}

// textOf renders a decoded Avro value as the test wrote it.
func textOf(v any) string {
	switch x := v.(type) {
	case interface{ FloatString(int) string }:
		s := x.FloatString(2)
		return strings.TrimSuffix(s, ".00")
	default:
		return fmt.Sprint(x)
	}
}

// TestTableRegex: include_tables/exclude_tables pick the tables of the
// database whose schema.table matches an include and no exclude (anchored:
// app_ does not match xapp_), besides the listed tables; the publication
// holds exactly those (read from pg_publication_tables, the model being
// the names the test created), their rows reach their topics, and the
// other tables get no topic. Restarted with other patterns, a table that
// stops matching leaves the publication (its later changes are not
// written) and one that starts matching joins it and is snapshotted.
func TestTableRegex(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	for _, n := range []string{"app_a", "app_b", "app_secret", "xapp_c", "other", "audit_log"} {
		e.exec(c, "CREATE TABLE "+n+" (id int PRIMARY KEY, v int NOT NULL)")
		e.exec(c, "INSERT INTO "+n+" VALUES (1, 1), (2, 2)")
	}
	e.exec(c, "CREATE SCHEMA s2")
	e.exec(c, "CREATE TABLE s2.app_z (id int PRIMARY KEY, v int NOT NULL)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "other"}}
	cfg.IncludeTables = []string{`public\.app_.*`}
	cfg.ExcludeTables = []string{`.*secret.*`}
	stop := e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	published := func() []string {
		rows, err := c.Query(context.Background(), "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", cfg.WithDefaults().Publication)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got, want := published(), []string{"public.app_a", "public.app_b", "public.other"}; !slices.Equal(got, want) {
		t.Errorf("publication holds %v, want %v", got, want)
	}
	topic := func(n string) string { return cfg.TopicPrefix + ".public." + n }
	adm := e.admin()
	td, err := adm.ListTopics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"app_secret", "xapp_c", "audit_log"} {
		if td.Has(topic(n)) {
			t.Errorf("topic %s exists: %s is not selected", topic(n), n)
		}
	}
	ids := func(n string) map[int32]int {
		got := map[int32]int{}
		for _, r := range e.readAll(topic(n)) {
			if r.value != nil && !r.heartbeat() {
				got[r.key["id"].(int32)]++
			}
		}
		return got
	}
	for _, n := range []string{"app_a", "app_b", "other"} {
		if got := ids(n); len(got) != 2 {
			t.Errorf("%s: records by id %v, want ids 1 and 2", n, got)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// app_a stops matching, app_secret starts matching.
	cfg.IncludeTables = []string{`public\.app_(b|secret)`}
	cfg.ExcludeTables = nil
	e.runReader(cfg)
	deadline := time.Now().Add(2 * time.Minute)
	for !slices.Equal(published(), []string{"public.app_b", "public.app_secret", "public.other"}) {
		if time.Now().After(deadline) {
			t.Fatalf("publication holds %v after the restart", published())
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.exec(c, "INSERT INTO app_a VALUES (3, 3)")
	e.exec(c, "INSERT INTO app_b VALUES (3, 3)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	deadline = time.Now().Add(2 * time.Minute)
	for len(ids("app_secret")) != 2 { // the added table's incremental snapshot
		if time.Now().After(deadline) {
			t.Fatalf("app_secret: records by id %v, want 1 and 2 (snapshotted)", ids("app_secret"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := ids("app_a"); got[3] != 0 {
		t.Errorf("app_a left the publication but its change was written: %v", got)
	}
	if got := ids("app_b"); got[3] != 1 {
		t.Errorf("app_b: records by id %v, want id 3 once", got)
	}
}

// TestFilterConfigErrors: bad patterns and contradictory filters are
// config errors before anything starts; a column list naming a column the
// table lacks, or dropping its primary key, stops the reader at start with
// a message naming the column.
func TestFilterConfigErrors(t *testing.T) {
	base := Config{DatabaseURL: "postgres://x", Brokers: []string{"b:9092"}, SchemaRegistryURL: "http://r"}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"bad include", func(c *Config) { c.IncludeTables = []string{"public\\.(a"} }, "include_tables"},
		{"bad exclude", func(c *Config) { c.ExcludeTables = []string{"["} }, "exclude_tables"},
		{"both lists", func(c *Config) {
			c.Tables = []TableConfig{{Table: "t", Columns: []string{"id"}, ExcludeColumns: []string{"x"}}}
		}, "not both"},
		{"listed and excluded", func(c *Config) {
			c.Tables = []TableConfig{{Table: "audit_log"}}
			c.ExcludeTables = []string{`public\.audit_.*`}
		}, "matches exclude_tables"},
		{"truncate upsert", func(c *Config) { c.Tables = []TableConfig{{Table: "t", Mode: ModeUpsert, Truncate: true}} }, "envelope mode"},
	} {
		cfg := base
		tc.mod(&cfg)
		err := cfg.WithDefaults().Validate()
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a config error about %q", tc.name, err, tc.want)
		}
	}
	if err := base.WithDefaults().Validate(); err != nil {
		t.Fatalf("control: the base config is valid, got %v", err)
	}

	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE t (id int PRIMARY KEY, ssn text)")
	e.exec(c, "ALTER TABLE t REPLICA IDENTITY FULL")
	for _, tc := range []struct {
		tables []TableConfig
		want   string
	}{
		{[]TableConfig{{Table: "t", Columns: []string{"id", "snn"}}}, "no column snn"},
		{[]TableConfig{{Table: "t", ExcludeColumns: []string{"snn"}}}, "no column snn"},
		{[]TableConfig{{Table: "t", Columns: []string{"ssn"}}}, "primary-key column id"},
	} {
		cfg := e.cfg
		cfg.Tables = tc.tables
		err := e.runUntilError(cfg, time.Minute)
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want a config error about %q", tc.tables, err, tc.want)
		}
	}
}

// TestShippedTablesSendNoPII runs the reader with the tables Loanflow
// ships (LoanflowTables, the same as deploy/config/cdc.yaml) and the
// customer_360 view on the API's own schema (its migrations), with
// customers whose PII ciphertexts and blind index hold sentinels: no
// record of any topic the reader writes contains them, the customers
// topic's row images have exactly CustomerColumns, and no registered
// schema names a PII column. The sentinels are in PostgreSQL (checked),
// and TestColumnFilters' control shows the scan finds such values.
func TestShippedTablesSendNoPII(t *testing.T) {
	e := newEnv(t)
	if _, err := migrations.Up(context.Background(), e.dsn); err != nil {
		t.Fatal(err)
	}
	c := e.conn()
	e.exec(c, "INSERT INTO lenders (lender_id, name) VALUES ('l1', 'Lender One')")
	ins := `INSERT INTO customers (customer_id, name_ct, ssn_ct, address_ct, dob_ct, ssn_index, ssn_index_key_version, credit_limit, risk_tier)
		VALUES ($1, convert_to('PIIname' || $1, 'UTF8'), convert_to('PIIssn' || $1, 'UTF8'), convert_to('PIIaddr' || $1, 'UTF8'),
		convert_to('PIIdob' || $1, 'UTF8'), convert_to('PIIidx' || $1, 'UTF8'), 7, 5000, 'LOW')`
	e.exec(c, ins, "c1")
	e.exec(c, "INSERT INTO credit_profiles (customer_id, current_score) VALUES ('c1', 700)")
	cfg := e.cfg
	cfg.Tables = LoanflowTables()
	cfg.TopicPrefix = "cdc"
	cfg.EnsureReplicaIdentityFull = true
	cfg.DeadLetterTopic = e.cfg.TopicPrefix + "_dlq"
	cfg.HeartbeatTopic = e.cfg.TopicPrefix + "_hb"
	view := Customer360View()
	view.Topic = e.cfg.TopicPrefix + "_customer_360"
	cfg.Views = []ViewConfig{view}
	for i := range cfg.Tables {
		cfg.Tables[i].Topic = e.cfg.TopicPrefix + "." + cfg.Tables[i].Table
	}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, ins, "c2")
	e.exec(c, "INSERT INTO credit_profiles (customer_id, current_score) VALUES ('c2', 650)")
	e.exec(c, "UPDATE customers SET name_ct = convert_to('PIInamec3', 'UTF8'), ssn_ct = convert_to('PIIssnc3', 'UTF8'), credit_limit = 6000 WHERE customer_id = 'c1'")
	e.exec(c, `INSERT INTO loans (loan_id, application_id, customer_id, lender_id, amount, balance, currency, term_months, status)
		VALUES ('loan1', 'app1', 'c1', 'l1', 1000, 1000, 'USD', 12, 'ACTIVE')`)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	var inDB int
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM customers WHERE position('PIIssn' in convert_from(ssn_ct, 'UTF8')) = 1").Scan(&inDB); err != nil || inDB != 2 {
		t.Fatalf("control: %d customers hold the SSN sentinel (%v), want 2", inDB, err)
	}
	custTopic := e.cfg.TopicPrefix + ".public.customers"
	topics := []string{custTopic, e.cfg.TopicPrefix + ".public.credit_profiles", e.cfg.TopicPrefix + ".public.loans", view.Topic}
	want := slices.Clone(CustomerColumns)
	sort.Strings(want)
	rows := 0
	for _, r := range e.readAll(custTopic) {
		for _, img := range []string{"before", "after"} {
			if row, _ := r.value[img].(map[string]any); row != nil {
				rows++
				if got := rowFields(row); !slices.Equal(got, want) {
					t.Errorf("%s@%d %s: fields %v, want CustomerColumns %v", custTopic, r.rec.Offset, img, got, want)
				}
			}
		}
	}
	if rows < 4 { // c1 snapshot, c2 insert, c1 update before and after
		t.Errorf("%s: %d row images, want at least 4", custTopic, rows)
	}
	for _, subj := range []string{custTopic + "-value", custTopic + "-key"} {
		for _, f := range e.rowSchemaFields(subj) {
			if !slices.Contains(CustomerColumns, f) {
				t.Errorf("the registered schema %s has column %s, not in CustomerColumns", subj, f)
			}
		}
	}
	var sentinels []string
	for _, id := range []string{"c1", "c2", "c3"} {
		for _, p := range []string{"PIIname", "PIIssn", "PIIaddr", "PIIdob", "PIIidx"} {
			sentinels = append(sentinels, p+id)
		}
	}
	all := append(topics, cfg.DeadLetterTopic, cfg.PositionsTopic, cfg.HeartbeatTopic)
	if hits := e.piiHits(sentinels, all...); len(hits) > 0 {
		t.Errorf("PII found in records: %v", hits)
	}
}

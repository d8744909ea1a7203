package postgres

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// deadLetters reads the dead-letter topic: body and headers per record.
func (e *cdcEnv) deadLetters(topic string) []deadRec {
	e.t.Helper()
	var out []deadRec
	for _, r := range e.readRaw(topic) {
		d := deadRec{h: map[string]string{}}
		for _, x := range r.rec.Headers {
			d.h[x.Key] = string(x.Value)
		}
		if err := json.Unmarshal(r.rec.Value, &d.body); err != nil {
			e.t.Fatalf("dead letter body %q: %v", r.rec.Value, err)
		}
		out = append(out, d)
	}
	return out
}

type deadRec struct {
	h    map[string]string
	body map[string]any
}

func (d deadRec) col(image, name string) string {
	m, _ := d.body[image+"_text"].(map[string]any)
	s, _ := m[name].(string)
	return s
}

// micros is a decoded timestamp field as microseconds since the epoch.
func micros(v any) (int64, bool) {
	switch x := v.(type) {
	case time.Time:
		return x.UnixMicro(), true
	case int64:
		return x, true
	}
	return 0, false
}

// days is a decoded date field as days since the epoch.
func days(v any) (int64, bool) {
	switch x := v.(type) {
	case time.Time:
		d := x.Unix() / 86400
		if x.Unix()%86400 < 0 {
			d--
		}
		return d, true
	case int32:
		return int64(x), true
	}
	return 0, false
}

// TestSpecialValuesRepresented: ±infinity, NaN, BC dates and years past
// 9999 are written, never dead-lettered: infinite timestamps and dates as
// Debezium's sentinels, BC and far-future instants as their exact
// microseconds (PostgreSQL's own extract(epoch) is the expected value),
// numeric NaN/Infinity as null with the loanflow.special header. The
// update that fixes such a row carries it in its before-image and is
// written too (before and after are converted independently).
func TestSpecialValuesRepresented(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE odd (id int PRIMARY KEY, n numeric(10,2), ts timestamptz, lt timestamp, d date, f float8, ds date[])")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "odd"}}
	cfg.EnsureReplicaIdentityFull = true
	cfg.DeadLetterTopic = cfg.TopicPrefix + "_dlq"
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO odd VALUES (1, 1.50, '2024-05-06 07:08:09.123456+00', '2024-05-06 07:08:09', '2024-05-06', 1.5, '{2024-05-06}')")
	e.exec(c, "INSERT INTO odd VALUES (2, 'NaN', 'infinity', '-infinity', 'infinity', 'NaN', '{infinity,-infinity}')")
	e.exec(c, "INSERT INTO odd VALUES (3, 2.00, '0044-03-15 12:00:00.5+00 BC', '10000-01-01 00:00:00', '0044-03-15 BC', '-Infinity', NULL)")
	e.exec(c, "INSERT INTO odd VALUES (4, 'NaN', '200000-12-31 23:59:59.999999+00', '4713-11-24 00:00:00 BC', '-infinity', 0, NULL)")
	e.exec(c, "UPDATE odd SET n = 3.00, ts = '2024-01-01 00:00:00+00', lt = '2024-01-01 00:00:00', d = '2024-01-01', f = 2 WHERE id = 2")
	e.exec(c, "DELETE FROM odd WHERE id = 3")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	// The expected instants, from PostgreSQL.
	type want struct{ ts, lt, d int64 }
	exp := map[int32]want{}
	rows, err := c.Query(ctx, `SELECT id, (extract(epoch FROM ts) * 1000000)::bigint, (extract(epoch FROM lt) * 1000000)::bigint, d - '1970-01-01'::date
		FROM (VALUES (3, '0044-03-15 12:00:00.5+00 BC'::timestamptz, '10000-01-01 00:00:00'::timestamp, '0044-03-15 BC'::date),
		             (4, '200000-12-31 23:59:59.999999+00'::timestamptz, '4713-11-24 00:00:00 BC'::timestamp, '2000-01-01'::date)) v(id, ts, lt, d)`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int32
		var w want
		if err := rows.Scan(&id, &w.ts, &w.lt, &w.d); err != nil {
			t.Fatal(err)
		}
		exp[id] = w
	}
	rows.Close()
	if len(exp) != 2 {
		t.Fatalf("expected values: %v (%v)", exp, rows.Err())
	}

	type change struct {
		op      string
		before  map[string]any
		after   map[string]any
		special string
	}
	got := map[int32][]change{}
	for _, r := range e.readAll(cfg.TopicPrefix + ".public.odd") {
		if r.heartbeat() || r.value == nil {
			continue
		}
		ch := change{op: r.value["op"].(string)}
		ch.before, _ = r.value["before"].(map[string]any)
		ch.after, _ = r.value["after"].(map[string]any)
		for _, h := range r.rec.Headers {
			if h.Key == SpecialHeader {
				ch.special = string(h.Value)
			}
		}
		id := r.key["id"].(int32)
		got[id] = append(got[id], ch)
	}
	ops := func(id int32) string {
		var s []string
		for _, ch := range got[id] {
			s = append(s, ch.op)
		}
		return strings.Join(s, ",")
	}
	for id, w := range map[int32]string{1: "c", 2: "c,u", 3: "c,d", 4: "c"} {
		if ops(id) != w {
			t.Errorf("id %d: ops %q, want %q", id, ops(id), w)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	check := func(what string, v any, conv func(any) (int64, bool), want int64) {
		t.Helper()
		if g, ok := conv(v); !ok || g != want {
			t.Errorf("%s = %v (%T), want %d", what, v, v, want)
		}
	}
	a2 := got[2][0].after
	check("id 2 ts", a2["ts"], micros, TimestampPosInfinity)
	check("id 2 lt", a2["lt"], micros, TimestampNegInfinity)
	check("id 2 d", a2["d"], days, int64(DatePosInfinity))
	if f, _ := a2["f"].(float64); !math.IsNaN(f) {
		t.Errorf("id 2 f = %v, want NaN", a2["f"])
	}
	if a2["n"] != nil || got[2][0].special != "after.n=NaN" {
		t.Errorf("id 2 n = %v with header %q, want null and after.n=NaN", a2["n"], got[2][0].special)
	}
	if ds, _ := a2["ds"].([]any); len(ds) != 2 {
		t.Errorf("id 2 ds = %v", a2["ds"])
	} else {
		check("id 2 ds[0]", ds[0], days, int64(DatePosInfinity))
		check("id 2 ds[1]", ds[1], days, int64(DateNegInfinity))
	}
	up := got[2][1]
	check("id 2 update before.ts", up.before["ts"], micros, TimestampPosInfinity)
	if up.special != "before.n=NaN" || up.after["n"] == nil {
		t.Errorf("id 2 update: header %q, after.n %v; want before.n=NaN and a value", up.special, up.after["n"])
	}
	a3, d3 := got[3][0].after, got[3][1].before
	for what, img := range map[string]map[string]any{"id 3 create": a3, "id 3 delete": d3} {
		check(what+" ts (BC)", img["ts"], micros, exp[3].ts)
		check(what+" lt (year 10000)", img["lt"], micros, exp[3].lt)
		check(what+" d (BC)", img["d"], days, exp[3].d)
	}
	if f, _ := a3["f"].(float64); !math.IsInf(f, -1) {
		t.Errorf("id 3 f = %v, want -Inf", a3["f"])
	}
	a4 := got[4][0].after
	check("id 4 ts (year 200000)", a4["ts"], micros, exp[4].ts)
	check("id 4 lt (4714 BC)", a4["lt"], micros, exp[4].lt)
	check("id 4 d", a4["d"], days, int64(DateNegInfinity))
	if got[4][0].special != "after.n=NaN" {
		t.Errorf("id 4 special header %q", got[4][0].special)
	}
	if dl := e.deadLetters(cfg.DeadLetterTopic); len(dl) != 0 {
		t.Errorf("%d dead letters, want none: %v", len(dl), dl[0].h)
	}
}

// TestPoisonIsolated: changes that cannot be written go to the
// dead-letter topic with their reason and origin while every other change
// keeps flowing: a record over max_record_bytes (too_large), an UPDATE
// whose unchanged TOAST value is missing after REPLICA IDENTITY was
// changed (unchanged_toast), a column type change the registry rejects
// (schema); a column of an unsupported type (inet[]) is carried as text;
// and `loanflow cdc skip` sends a chosen change to the dead-letter topic.
// Before, each of the first four stopped (or stalled) the whole reader.
func TestPoisonIsolated(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE good (id int PRIMARY KEY)")
	e.exec(c, "CREATE TABLE nets (id int PRIMARY KEY, a inet[])")
	e.exec(c, "CREATE TABLE big (id int PRIMARY KEY, t text)")
	e.exec(c, "CREATE TABLE toasty (id int PRIMARY KEY, v int, doc text)")
	e.exec(c, "CREATE TABLE evolve (id int PRIMARY KEY, v int)")
	e.exec(c, "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", e.cfg.Name+"_oracle")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "good"}, {Table: "nets"}, {Table: "big"}, {Table: "toasty"}, {Table: "evolve"}}
	cfg.EnsureReplicaIdentityFull = true
	cfg.DeadLetterTopic = cfg.TopicPrefix + "_dlq"
	stop := e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO good VALUES (1)")
	e.exec(c, "INSERT INTO nets VALUES (1, '{10.0.0.1,192.168.0.0/16}')")
	e.exec(c, "INSERT INTO good VALUES (2)")
	e.exec(c, "INSERT INTO big VALUES (1, 'small'), (2, repeat('x', 1500000))")
	e.exec(c, "INSERT INTO good VALUES (3)")
	e.exec(c, "INSERT INTO toasty SELECT 1, 1, string_agg(md5(g::text), '') FROM generate_series(1, 400) g")
	e.exec(c, "INSERT INTO evolve VALUES (1, 1)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	e.exec(c, "ALTER TABLE toasty REPLICA IDENTITY DEFAULT")
	e.exec(c, "UPDATE toasty SET v = 2 WHERE id = 1")
	e.exec(c, "INSERT INTO good VALUES (4)")
	e.exec(c, "ALTER TABLE evolve ALTER v TYPE text")
	e.exec(c, "INSERT INTO evolve VALUES (2, 'two')")
	e.exec(c, "INSERT INTO good VALUES (5)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), 2*time.Minute)

	// An operator skips the change of good id 6.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	e.exec(c, "BEGIN; SET LOCAL synchronous_commit = on; INSERT INTO good VALUES (6); COMMIT") // flushed for the peek
	var skipLSN pglogrepl.LSN
	rows, err := c.Query(ctx, "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, NULL)", cfg.Name+"_oracle")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var l, data string
		if err := rows.Scan(&l, &data); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(data, "table public.good: INSERT: id[integer]:6") {
			skipLSN, _ = pglogrepl.ParseLSN(l)
		}
	}
	rows.Close()
	if skipLSN == 0 {
		t.Fatal("oracle slot has no insert of good id 6")
	}
	if err := SkipChange(ctx, cfg, skipLSN, "test skips id 6"); err != nil {
		t.Fatal(err)
	}
	e.runReader(cfg)
	e.exec(c, "INSERT INTO good VALUES (7)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	goodIDs := e.creates(cfg.TopicPrefix + ".public.good")
	for id := int32(1); id <= 7; id++ {
		if want := map[bool]int{true: 0, false: 1}[id == 6]; goodIDs[id] != want {
			t.Errorf("good id %d written %d times, want %d", id, goodIDs[id], want)
		}
	}
	var netsVal any
	for _, r := range e.readAll(cfg.TopicPrefix + ".public.nets") {
		if r.value != nil && r.value["op"] == "c" {
			netsVal = r.value["after"].(map[string]any)["a"]
		}
	}
	if netsVal != "{10.0.0.1,192.168.0.0/16}" {
		t.Errorf("inet[] carried as %v (%T), want its text", netsVal, netsVal)
	}
	reasons := map[string]deadRec{}
	for _, d := range e.deadLetters(cfg.DeadLetterTopic) {
		if d.h["source.lsn"] == "" || d.h["source.table"] == "" || d.h["error"] == "" || d.body["table"] != d.h["source.table"] {
			t.Errorf("dead letter without origin: %v", d.h)
		}
		reasons[d.h["reason"]+" "+d.h["source.table"]] = d
	}
	for _, k := range []string{"too_large public.big", "unchanged_toast public.toasty", "schema public.evolve", "skipped public.good"} {
		if _, ok := reasons[k]; !ok {
			t.Errorf("no dead letter %q; have %v", k, keys(reasons))
		}
	}
	if len(reasons) != 4 {
		t.Errorf("dead letters %v, want 4 kinds", keys(reasons))
	}
	if d := reasons["too_large public.big"]; d.col("after", "id") != "2" || len(d.col("after", "t")) > 2*deadLetterTextMax {
		t.Errorf("too_large dead letter: id %q, t of %d bytes", d.col("after", "id"), len(d.col("after", "t")))
	}
	if d := reasons["schema public.evolve"]; d.col("after", "v") != "two" || !strings.Contains(d.h["error"], "incompatible") {
		t.Errorf("schema dead letter: v %q, error %q", d.col("after", "v"), d.h["error"])
	}
	if d := reasons["skipped public.good"]; d.h["source.lsn"] != skipLSN.String() || d.col("after", "id") != "6" {
		t.Errorf("skipped dead letter at %s for id %q, want %s and 6", d.h["source.lsn"], d.col("after", "id"), skipLSN)
	}
	var bigIDs []int32
	for id := range e.creates(cfg.TopicPrefix + ".public.big") {
		bigIDs = append(bigIDs, id)
	}
	if len(bigIDs) != 1 || bigIDs[0] != 1 {
		t.Errorf("big topic has ids %v, want only 1", bigIDs)
	}
	_ = pgx.Identifier{}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

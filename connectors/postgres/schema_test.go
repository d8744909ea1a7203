package postgres

import (
	"context"
	"math/big"
	"testing"
	"time"

	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/sr"
)

// TestSchemaEvolution: ALTER TABLE ADD COLUMN and DROP COLUMN register new
// versions of the topic's value subject; every record still decodes with
// its writer schema, and a consumer holding the first version reads the
// newer records through schema resolution.
func TestSchemaEvolution(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "CREATE TABLE evo (id int PRIMARY KEY, a int)")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "evo"}}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO evo VALUES (1, 10)")
	e.exec(c, "ALTER TABLE evo ADD COLUMN note int")
	e.exec(c, "INSERT INTO evo VALUES (2, 20, 7)")
	e.exec(c, "ALTER TABLE evo DROP COLUMN a")
	e.exec(c, "INSERT INTO evo VALUES (3, 9)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	topic := cfg.TopicPrefix + ".public.evo"
	cl, err := sr.NewClient(sr.URLs(e.regURL))
	if err != nil {
		t.Fatal(err)
	}
	versions, err := cl.SubjectVersions(ctx, topic+"-value")
	if err != nil {
		t.Fatal(err)
	}
	if len(versions) != 3 {
		t.Fatalf("subject %s-value has versions %v, want 3", topic, versions)
	}
	v1, err := cl.SchemaByVersion(ctx, topic+"-value", versions[0])
	if err != nil {
		t.Fatal(err)
	}
	old, err := avro.Parse(v1.Schema.Schema)
	if err != nil {
		t.Fatal(err)
	}
	dec := newDecoder(t, e.regURL)
	got := map[int32]map[string]any{}
	for _, r := range e.readAll(topic) {
		if r.heartbeat() || r.value == nil {
			continue
		}
		_, id, err := dec.decode(r.rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		writer := dec.schemas[id]
		resolved, err := avro.Resolve(writer, old)
		if err != nil {
			t.Fatalf("version 1 cannot read schema %d: %v", id, err)
		}
		var asOld map[string]any
		if _, err := resolved.Decode(r.rec.Value[5:], &asOld); err != nil {
			t.Fatalf("decoding with version 1: %v", err)
		}
		after := asOld["after"].(map[string]any)
		got[after["id"].(int32)] = after
		if _, ok := r.value["after"].(map[string]any)["note"]; !ok && after["id"].(int32) >= 2 {
			t.Errorf("record %v lacks the added column with its own schema", r.value)
		}
	}
	if len(got) != 3 || got[1]["a"] != int32(10) || got[3]["a"] != nil {
		t.Fatalf("read with version 1: %v", got)
	}
}

// TestTypeMapping covers the PostgreSQL → Avro mapping end to end,
// including an unchanged TOAST value carried from the old tuple.
func TestTypeMapping(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, `CREATE TABLE types (id bigint PRIMARY KEY, b bool, i2 smallint, i4 int, f4 real, f8 float8,
		n numeric(10,3), nu numeric, t text, vc varchar(10), u uuid, j jsonb, by bytea, ts timestamptz,
		tsl timestamp, d date, tm time, ai int[], at text[], big text)`)
	e.exec(c, "ALTER TABLE types REPLICA IDENTITY FULL")
	// Out of line and uncompressed, so an UPDATE that leaves it alone
	// sends it as "unchanged TOAST" (a compressible value would be stored
	// inline, compressed, and sent in full).
	e.exec(c, "ALTER TABLE types ALTER COLUMN big SET STORAGE EXTERNAL")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "types"}}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	uid := "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
	e.exec(c, `INSERT INTO types VALUES (1, true, -2, 4, 1.5, 2.25, 12.345, 0.1000000000000000000001, 'héllo', 'vc',
		$1, '{"a": [1, 2]}', '\xdeadbeef', '2024-05-06 07:08:09.123456+02', '2024-05-06 07:08:09.5', '2024-05-06', '13:14:15.5',
		'{1,NULL,3}', '{"a b","c\"d",NULL}', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3125) g))`, uid)
	var toasted bool
	if err := c.QueryRow(context.Background(), "SELECT pg_column_size(big) < octet_length(big) OR pg_relation_size(reltoastrelid) > 0 FROM types, pg_class WHERE relname = 'types' AND id = 1").Scan(&toasted); err != nil || !toasted {
		t.Fatalf("big is not stored out of line (%v): the test would not exercise unchanged TOAST", err)
	}
	e.exec(c, "UPDATE types SET i4 = 5 WHERE id = 1") // big stays TOASTed and unchanged
	e.exec(c, "INSERT INTO types (id) VALUES (2)")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
	var upd map[string]any
	for _, r := range e.readAll(cfg.TopicPrefix + ".public.types") {
		if r.value != nil && r.value["op"] == "u" {
			upd = r.value["after"].(map[string]any)
		}
	}
	if upd == nil {
		t.Fatal("no update record")
	}
	ts := time.Date(2024, 5, 6, 5, 8, 9, 123456000, time.UTC)
	checks := map[string]any{
		"b": true, "i2": int32(-2), "i4": int32(5), "f4": float32(1.5), "f8": 2.25,
		"nu": "0.1000000000000000000001", "t": "héllo", "vc": "vc", "u": uid, "j": `{"a": [1, 2]}`,
	}
	for k, want := range checks {
		if upd[k] != want {
			t.Errorf("%s = %#v, want %#v", k, upd[k], want)
		}
	}
	if n := upd["n"].(*big.Rat).FloatString(3); n != "12.345" {
		t.Errorf("n = %s", n)
	}
	if got := upd["ts"].(time.Time); !got.Equal(ts) {
		t.Errorf("ts = %v, want %v", got, ts)
	}
	if string(upd["by"].([]byte)) != "\xde\xad\xbe\xef" {
		t.Errorf("by = %x", upd["by"])
	}
	if got := upd["ai"].([]any); len(got) != 3 || got[0] != int32(1) || got[1] != nil {
		t.Errorf("ai = %v", got)
	}
	if got := upd["at"].([]any); len(got) != 3 || got[0] != "a b" || got[1] != `c"d` || got[2] != nil {
		t.Errorf("at = %v", got)
	}
	var want string
	if err := c.QueryRow(context.Background(), "SELECT big FROM types WHERE id = 1").Scan(&want); err != nil {
		t.Fatal(err)
	}
	if big, _ := upd["big"].(string); big != want || len(want) != 100000 {
		t.Errorf("unchanged TOAST value has length %d, want the stored %d characters", len(big), len(want))
	}
	if d := upd["d"].(time.Time); d.Format("2006-01-02") != "2024-05-06" {
		t.Errorf("d = %v", d)
	}
}

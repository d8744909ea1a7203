package postgres

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pglogrepl"
)

// fuzzTypes are the column types a fuzzed tuple is converted with.
var fuzzTypes = []struct {
	oid    uint32
	typMod int32
}{
	{oidBool, -1}, {oidInt2, -1}, {oidInt4, -1}, {oidInt8, -1}, {oidFloat4, -1}, {oidFloat8, -1},
	{oidNumeric, (10<<16 | 2) + 4}, {oidNumeric, -1}, {oidText, -1}, {oidUUID, -1}, {oidJSONB, -1},
	{oidBytea, -1}, {oidTimestamptz, -1}, {oidTimestamp, -1}, {oidDate, -1}, {oidTime, -1},
	{1007, -1}, {1009, -1}, {1231, -1}, {1185, -1},
}

// fuzzTable is a table of n columns cycling through fuzzTypes.
func fuzzTable(n int) *table {
	rel := &msgRelation{id: 1, namespace: "public", name: "fuzz", replicaIdentity: identityFull}
	for i := 0; i < n; i++ {
		ft := fuzzTypes[i%len(fuzzTypes)]
		rel.columns = append(rel.columns, relColumn{key: i == 0, name: fmt.Sprintf("c%d", i), typOID: ft.oid, typMod: ft.typMod})
	}
	t, err := newTable(rel, []string{"c0"}, &route{mode: ModeEnvelope, topic: "cdc.public.fuzz", prefix: "cdc"})
	if err != nil {
		panic(err)
	}
	return t
}

// FuzzDecodeMessage feeds arbitrary bytes to the pgoutput decoder and the
// tuple handling behind it (TOAST resolution, value conversion): errors
// are fine, panics are not. Messages pglogrepl also decodes must agree.
// The seed corpus in testdata is real pgoutput output (see
// TestWriteFuzzCorpus).
func FuzzDecodeMessage(f *testing.F) {
	f.Add([]byte("B\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07"))
	f.Add([]byte("I\x00\x00\x00\x01N\x00\x02t\x00\x00\x00\x011n"))
	f.Add([]byte("U\x00\x00\x00\x01O\x00\x01t\x00\x00\x00\x01xN\x00\x01u"))
	f.Add([]byte("M\x00\x00\x00\x00\x00\x01\x94V\x18loanflow.heartbeat\x00\x00\x00\x00\x0d1700000000000"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeMessage(data)
		if err != nil {
			return
		}
		exercise(t, m)
		compareWithPglogrepl(t, data, m)
	})
}

func exercise(t *testing.T, m any) {
	convert := func(tuple []colValue) {
		if len(tuple) == 0 {
			return
		}
		_, _ = (&event{t: fuzzTable(len(tuple))}).convertRow(tuple, "after")
	}
	switch m := m.(type) {
	case *msgRelation:
		_, _ = newTable(m, nil, &route{mode: ModeEnvelope, topic: "t"})
	case *msgInsert:
		convert(m.new)
	case *msgUpdate:
		if len(m.new) > 0 && resolveToast(fuzzTable(len(m.new)), m) == nil {
			convert(m.new)
		}
		convert(m.old)
	case *msgDelete:
		convert(m.old)
	}
}

// compareWithPglogrepl checks the decoded message against pglogrepl's
// decoder where that one does not panic on the input.
func compareWithPglogrepl(t *testing.T, data []byte, m any) {
	var (
		pm   pglogrepl.Message
		perr error
	)
	func() {
		defer func() { _ = recover() }()
		pm, perr = pglogrepl.Parse(data)
	}()
	if pm == nil || perr != nil {
		return
	}
	switch m := m.(type) {
	case *msgInsert:
		p, ok := pm.(*pglogrepl.InsertMessage)
		if ok && !sameTuple(m.new, p.Tuple) {
			t.Fatalf("insert tuple differs from pglogrepl: %+v vs %+v", m.new, p.Tuple)
		}
	case *msgRelation:
		p, ok := pm.(*pglogrepl.RelationMessage)
		if ok && (p.RelationID != m.id || p.RelationName != m.name || len(p.Columns) != len(m.columns)) {
			t.Fatalf("relation differs from pglogrepl: %+v vs %+v", m, p)
		}
	case *msgBegin:
		p, ok := pm.(*pglogrepl.BeginMessage)
		if ok && (p.FinalLSN != m.finalLSN || p.Xid != m.xid) {
			t.Fatalf("begin differs from pglogrepl: %+v vs %+v", m, p)
		}
	}
}

func sameTuple(a []colValue, b *pglogrepl.TupleData) bool {
	if b == nil || len(a) != len(b.Columns) {
		return false
	}
	for i, c := range b.Columns {
		if a[i].kind != c.DataType || !bytes.Equal(a[i].data, c.Data) {
			return false
		}
	}
	return true
}

// TestWriteFuzzCorpus captures real pgoutput messages into the fuzz seed
// corpus (run with LOANFLOW_WRITE_FUZZ_CORPUS=1 to refresh testdata).
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("LOANFLOW_WRITE_FUZZ_CORPUS") == "" {
		t.Skip("set LOANFLOW_WRITE_FUZZ_CORPUS=1 to refresh the fuzz corpus")
	}
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.exec(c, "SET synchronous_commit = on")
	e.exec(c, "CREATE TYPE mood AS ENUM ('ok', 'sad')")
	e.exec(c, `CREATE TABLE f (id int PRIMARY KEY, n numeric(10,2), t text, ts timestamptz, a int[], m mood, j jsonb, b bytea, big text)`)
	e.exec(c, "CREATE TABLE g (k text PRIMARY KEY, v int)")
	e.exec(c, "CREATE PUBLICATION fpub FOR TABLE f, g")
	e.exec(c, "SELECT pg_create_logical_replication_slot('fslot', 'pgoutput')")
	e.exec(c, `INSERT INTO f VALUES (1, 1.5, 'x', now(), '{1,2}', 'ok', '{"a":1}', '\x01', repeat('y', 50000)), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`)
	e.exec(c, "UPDATE f SET n = 2 WHERE id = 1")
	e.exec(c, "ALTER TABLE f REPLICA IDENTITY FULL")
	e.exec(c, "UPDATE f SET t = 'z' WHERE id = 1")
	e.exec(c, "UPDATE f SET id = 3 WHERE id = 2")
	e.exec(c, "DELETE FROM f WHERE id = 3")
	e.exec(c, "INSERT INTO g VALUES ('a', 1)")
	e.exec(c, "DELETE FROM g")
	e.exec(c, "TRUNCATE g")
	e.exec(c, "ALTER TABLE g ADD COLUMN w text")
	e.exec(c, "INSERT INTO g VALUES ('b', 2, 'w')")
	e.exec(c, "SELECT pg_logical_emit_message(false, 'loanflow.heartbeat', '1700000000000')")
	rows, err := c.Query(ctx, "SELECT data FROM pg_logical_slot_get_binary_changes('fslot', NULL, NULL, 'proto_version', '1', 'publication_names', 'fpub', 'messages', 'true')")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeMessage")
	n := 0
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			t.Fatal(err)
		}
		if _, err := decodeMessage(data); err != nil {
			t.Fatalf("real message %q does not decode: %v", data[:1], err)
		}
		if len(data) > 4096 {
			continue // keep the corpus small; the TOASTed row is covered by its update
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("real-%02d-%c", n, data[0])), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d seeds", n)
}

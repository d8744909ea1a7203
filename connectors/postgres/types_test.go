package postgres

import (
	"errors"

	"github.com/jackc/pglogrepl"
	"math/big"
	"strings"
	"testing"

	"github.com/twmb/avro"
)

func TestDecimalConverter(t *testing.T) {
	s := avro.MustParse(`{"type":"bytes","logicalType":"decimal","precision":20,"scale":3}`)
	conv := numericType((20<<16 | 3) + 4).conv
	for _, in := range []string{"0", "1", "-1", "12.5", "-12.345", "127", "128", "-128", "-129", "999999999999999.999", "12345678901234567.891", "0.001"} {
		v, err := conv([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		b, err := s.AppendEncode(nil, v)
		if err != nil {
			t.Fatalf("%s: encode: %v", in, err)
		}
		var out *big.Rat
		if _, err := s.Decode(b, &out); err != nil {
			t.Fatal(err)
		}
		want, _ := new(big.Rat).SetString(in)
		if out.Cmp(want) != 0 {
			t.Errorf("%s: round trip gave %s", in, out.FloatString(3))
		}
	}
	for _, in := range []string{"NaN", "Infinity", "-Infinity"} {
		if v, err := conv([]byte(in)); err != nil || v != specialValue(in) {
			t.Errorf("%s converted to %v, %v; want the special value", in, v, err)
		}
	}
	if _, err := conv([]byte("1.2.3")); err == nil {
		t.Error("1.2.3 converted")
	}
}

func TestSplitArray(t *testing.T) {
	conv := arrayConverter(convString)
	v, err := conv([]byte(`{"a,b","c\"d",NULL,"NULL",e}`))
	if err != nil {
		t.Fatal(err)
	}
	got := v.([]any)
	want := []any{"a,b", `c"d`, nil, "NULL", "e"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %#v", got)
		}
	}
	if _, err := conv([]byte(`{{1,2},{3,4}}`)); err == nil {
		t.Error("multi-dimensional array accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{}.WithDefaults()
	if err := c.Validate(); err == nil {
		t.Fatal("empty config validated")
	}
	c = Config{DatabaseURL: "postgres://x", Brokers: []string{"b:1"}, SchemaRegistryURL: "http://r", Tables: []TableConfig{{Table: "t", Mode: "bogus"}}}.WithDefaults()
	if err := c.Validate(); err == nil {
		t.Fatal("bad mode validated")
	}
	c.Tables[0].Mode = ModeUpsert
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Tables[0].Table != "public.t" || c.Tables[0].Topic != "cdc.public.t" || c.Slot != "loanflow_cdc" {
		t.Fatalf("defaults: %+v", c)
	}
}

// TestCreateSlotCommand: slots are created with failover = true from
// PostgreSQL 17 on (so a standby synchronises them), with the old syntax
// before.
func TestCreateSlotCommand(t *testing.T) {
	for _, c := range []struct {
		major int
		want  string
	}{
		{15, `CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput EXPORT_SNAPSHOT`},
		{16, `CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput EXPORT_SNAPSHOT`},
		{17, `CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)`},
	} {
		if got := createSlotCommand("s", c.major); got != c.want {
			t.Errorf("PostgreSQL %d: %s, want %s", c.major, got, c.want)
		}
	}
}

// TestCheckServerTimeline: a position read on another timeline is refused
// unless allow_timeline_change is set; one from another system always.
func TestCheckServerTimeline(t *testing.T) {
	id := serverIdent{systemID: "7", timeline: 2, walEnd: 1000}
	pos := Position{SystemID: "7", Timeline: 1, FlushLSN: 500}
	if err := checkServer(id, pos, "s", false); !errors.Is(err, ErrSlotMismatch) || !strings.Contains(err.Error(), "allow_timeline_change") {
		t.Errorf("timeline change: %v", err)
	}
	if err := checkServer(id, pos, "s", true); err != nil {
		t.Errorf("allowed timeline change: %v", err)
	}
	pos.SystemID = "8"
	if err := checkServer(id, pos, "s", true); !errors.Is(err, ErrSlotMismatch) {
		t.Errorf("other system: %v", err)
	}
	pos = Position{FlushLSN: 2000} // written before identities: WAL end still checked
	if err := checkServer(id, pos, "s", false); !errors.Is(err, ErrSlotMismatch) {
		t.Errorf("position past the WAL end: %v", err)
	}
}

// TestVerifiedHeartbeatAtTheCommitLSN: pgoutput gives a non-transactional
// message (a heartbeat) the end LSN of its WAL record, and the next record
// may be another session's commit, whose commit LSN is the same. Resuming
// at that transaction's position, the heartbeat comes first and must not
// be taken for another history; the transaction itself then clears the
// check, and a heartbeat past the position with no transaction at it does
// not (found by TestDevStackOnApacheKafka in CI: "restarted before the
// committed position (transaction 753 committed at 0/1999D00) but replays
// a heartbeat at 0/1999D00 (xid 0)").
func TestVerifiedHeartbeatAtTheCommitLSN(t *testing.T) {
	const at = pglogrepl.LSN(0x1999D00)
	w := &writer{verify: at, resume: Position{LSN: at, XID: 753}, cfg: &Config{Slot: "s"}}
	if err := w.verified(at-8, 0, "heartbeat"); err != nil {
		t.Fatalf("a heartbeat before the position: %v", err)
	}
	if err := w.verified(at, 0, "heartbeat"); err != nil {
		t.Fatalf("a heartbeat at the commit LSN of the position's transaction: %v", err)
	}
	if err := w.verified(at, 753, "transaction"); err != nil || w.verify != 0 {
		t.Fatalf("the position's transaction: %v (verify %s)", err, w.verify)
	}
	// The negative control: without the transaction at the position.
	w = &writer{verify: at, resume: Position{LSN: at, XID: 753}, cfg: &Config{Slot: "s"}}
	if err := w.verified(at, 0, "heartbeat"); err != nil {
		t.Fatal(err)
	}
	if err := w.verified(at+64, 0, "heartbeat"); !errors.Is(err, ErrSlotMismatch) {
		t.Fatalf("a heartbeat past the position with no transaction at it: %v, want ErrSlotMismatch", err)
	}
	w = &writer{verify: at, resume: Position{LSN: at, XID: 753}, cfg: &Config{Slot: "s"}}
	if err := w.verified(at, 754, "transaction"); !errors.Is(err, ErrSlotMismatch) {
		t.Fatalf("another transaction at the position: %v, want ErrSlotMismatch", err)
	}
}

package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// TestTwoReadersOneDatabase: two readers with their own slots capture
// different tables of one database. A reader's slot decodes every logical
// message of the database, so it sees the nonce message the second reader
// writes when it creates its slot; before the nonce named its slot, the
// first reader took it for its own slot being recreated and stopped
// (ErrSlotMismatch). Both keep running and deliver their rows.
func TestTwoReadersOneDatabase(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE ta (id int PRIMARY KEY)")
	e.exec(c, "CREATE TABLE tb (id int PRIMARY KEY)")
	a := e.cfg
	a.Tables = []TableConfig{{Table: "ta"}}
	stopA := e.runReader(a)
	e.waitSnapshot(c, a.Name)
	b := e.cfg
	b.Name = e.cfg.Name[:min(len(e.cfg.Name), 58)] + "_b"
	b.PositionsTopic = b.Name + "_positions"
	b.TopicPrefix = b.Name
	b.Tables = []TableConfig{{Table: "tb"}}
	stopB := e.runReader(b)
	e.waitSlotStreaming(c, b.Name)
	e.exec(c, "INSERT INTO ta VALUES (1), (2)")
	e.exec(c, "INSERT INTO tb VALUES (1), (2), (3)")
	lsn := e.currentLSN(c)
	e.waitFlushed(c, a.Name, lsn, time.Minute)
	e.waitFlushed(c, b.Name, lsn, time.Minute)
	if got := e.creates(a.TopicPrefix + ".public.ta"); len(got) != 2 {
		t.Errorf("reader a delivered %v, want ids 1 and 2", got)
	}
	if got := e.creates(b.TopicPrefix + ".public.tb"); len(got) != 3 {
		t.Errorf("reader b delivered %v, want ids 1 to 3", got)
	}
	if err := stopA(); err != nil {
		t.Errorf("reader a stopped: %v", err)
	}
	if err := stopB(); err != nil {
		t.Errorf("reader b stopped: %v", err)
	}
}

// TestSnapshotSignalOnlyPublished: a snapshot signal (`loanflow cdc
// snapshot`) is a logical message every slot of the database decodes; a
// reader snapshots only the tables it publishes. Signalled for an
// uncaptured table (secret) and then for its own (ta), the reader
// re-reads ta (the control: signals are handled, in order) and never
// creates a topic for secret nor writes its rows.
func TestSnapshotSignalOnlyPublished(t *testing.T) {
	e := newEnv(t)
	c := e.conn()
	e.exec(c, "CREATE TABLE ta (id int PRIMARY KEY)")
	e.exec(c, "CREATE TABLE secret (id int PRIMARY KEY, ssn text)")
	e.exec(c, "INSERT INTO ta VALUES (1)")
	e.exec(c, "INSERT INTO secret VALUES (1, 'PIIsecret')")
	cfg := e.cfg
	cfg.Tables = []TableConfig{{Table: "ta"}}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	ctx := context.Background()
	if err := SignalSnapshot(ctx, e.dsn, []string{"secret"}); err != nil {
		t.Fatal(err)
	}
	if err := SignalSnapshot(ctx, e.dsn, []string{"ta"}); err != nil {
		t.Fatal(err)
	}
	topic := cfg.TopicPrefix + ".public.ta"
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)
		reads := 0
		for _, r := range e.readAll(topic) {
			if r.value != nil && r.value["op"] == "r" {
				reads++
			}
		}
		if reads >= 2 { // the initial snapshot's and the signalled one
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ta: %d snapshot reads, want 2", reads)
		}
		time.Sleep(200 * time.Millisecond)
	}
	td, err := e.admin().ListTopics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name := range td {
		if strings.HasPrefix(name, cfg.TopicPrefix) && strings.Contains(name, "secret") {
			t.Errorf("topic %s exists: an uncaptured table was snapshotted", name)
		}
	}
	if hits := e.piiHits([]string{"PIIsecret"}, topic, cfg.WithDefaults().DeadLetterTopic); len(hits) > 0 {
		t.Errorf("the uncaptured table's rows were written: %v", hits)
	}
}

// waitSlotStreaming is waitSnapshot with a longer bound, for a reader
// started beside another: creating a logical slot waits for every
// transaction of the cluster that holds an xid, which on a loaded machine
// (the test cluster is shared by the package's tests) can take a while.
func (e *cdcEnv) waitSlotStreaming(c *pgx.Conn, slot string) {
	e.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var first pglogrepl.LSN
	for time.Now().Before(deadline) {
		l := e.confirmedFlush(c, slot)
		if first == 0 {
			first = l
		} else if l > first {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("slot %s did not start streaming in 3m", slot)
}

package postgres

import (
	"testing"
	"time"
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
	e.waitSnapshot(c, b.Name)
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

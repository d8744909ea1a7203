package postgres

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/schemas"
)

// TestCustomer360View: changes to customers, credit_profiles and loans
// keep the compacted customer_360 topic equal to the joined current rows,
// in the Customer360 schema; a deleted customer gets a tombstone.
func TestCustomer360View(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.customer360Tables(c)
	for _, sql := range []string{
		"INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ('c1', 5000, 'LOW')",
		"INSERT INTO credit_profiles VALUES ('c1', 700)",
	} {
		e.exec(c, sql)
	}
	cfg := e.cfg
	topic := cfg.TopicPrefix + "_customer_360"
	view := Customer360View()
	view.Topic = topic
	cfg.Views = []ViewConfig{view}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)
	e.exec(c, "INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ('c2', 900.50, 'HIGH')")
	e.exec(c, "INSERT INTO credit_profiles VALUES ('c2', 580)")
	e.exec(c, "UPDATE customers SET current_balance = 1200.25, version = version + 1 WHERE customer_id = 'c1'")
	e.exec(c, "INSERT INTO loans VALUES ('l1', 'c1', 31)")
	e.exec(c, "INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ('c3', 1, 'LOW')")
	e.exec(c, "INSERT INTO credit_profiles VALUES ('c3', 600)")
	e.exec(c, "DELETE FROM credit_profiles WHERE customer_id = 'c3'")
	e.exec(c, "DELETE FROM customers WHERE customer_id = 'c3'")
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	scl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{e.regURL}})
	if err != nil {
		t.Fatal(err)
	}
	serde, err := schemas.NewWriterSchemaDecoder[schemas.Customer360](scl, topic+"-value")
	if err != nil {
		t.Fatal(err)
	}
	last := map[string]*schemas.Customer360{}
	for _, r := range e.readAll(topic) {
		if r.heartbeat() {
			continue
		}
		k, _ := r.rec.Key, 0
		var key string
		if _, err := avro.MustParse(`"string"`).Decode(k[5:], &key); err != nil {
			t.Fatal(err)
		}
		if r.value == nil {
			last[key] = nil
			continue
		}
		row, err := serde.Decode(r.rec.Value)
		if err != nil {
			t.Fatalf("decoding Customer360: %v", err)
		}
		last[key] = &row
	}
	c1, c2 := last["c1"], last["c2"]
	if c1 == nil || c2 == nil {
		t.Fatalf("missing rows: %v", last)
	}
	if c1.CurrentBalance.String() != "1200.25" || !c1.Delinquent || c1.Version != 2 || c1.Score != 700 || c1.SourceLSN == nil {
		t.Errorf("c1 = %+v", *c1)
	}
	if c2.CreditLimit.String() != "900.50" || c2.Score != 580 || c2.RiskTier != "HIGH" || c2.Delinquent {
		t.Errorf("c2 = %+v", *c2)
	}
	if v, ok := last["c3"]; !ok || v != nil {
		t.Errorf("c3: want a tombstone last, got %v (present %v)", v, ok)
	}
	_ = ctx
}

// customer360Tables creates the tables Customer360View reads.
func (e *cdcEnv) customer360Tables(c *pgx.Conn) {
	e.t.Helper()
	for _, sql := range []string{
		`CREATE TABLE customers (customer_id text PRIMARY KEY, credit_limit numeric(18,2) NOT NULL,
			current_balance numeric(18,2) NOT NULL DEFAULT 0, risk_tier text NOT NULL, status text NOT NULL DEFAULT 'ACTIVE',
			version bigint NOT NULL DEFAULT 1, updated_at timestamptz NOT NULL DEFAULT now())`,
		`CREATE TABLE credit_profiles (customer_id text PRIMARY KEY REFERENCES customers, current_score int NOT NULL,
			updated_at timestamptz NOT NULL DEFAULT now())`,
		`CREATE TABLE loans (loan_id text PRIMARY KEY, customer_id text NOT NULL REFERENCES customers, days_past_due int NOT NULL DEFAULT 0)`,
		"ALTER TABLE customers REPLICA IDENTITY FULL", "ALTER TABLE credit_profiles REPLICA IDENTITY FULL", "ALTER TABLE loans REPLICA IDENTITY FULL",
	} {
		e.exec(c, sql)
	}
}

// TestCustomer360RowsPrecedeHeartbeats: a heartbeat in a customer_360
// partition vouches for every change committed before its time, so a
// temporal join may use it as the table's watermark. For each committed
// change (a new customer with its profile, or a new version of one) the
// test notes the database clock after the commit returned; any heartbeat
// with a later time must come, in the key's partition, after a row of
// that key with at least the change's version. Heartbeats come every 10ms
// while the reader batches a second of changes per Kafka transaction, so
// most heartbeats are written inside a transaction that also holds view
// rows.
func TestCustomer360RowsPrecedeHeartbeats(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.conn()
	e.customer360Tables(c)
	cfg := e.cfg
	cfg.TopicPartitions = 2
	cfg.HeartbeatInterval = 10 * time.Millisecond
	cfg.CommitInterval = time.Second
	topic := cfg.TopicPrefix + "_customer_360"
	view := Customer360View()
	view.Topic = topic
	cfg.Views = []ViewConfig{view}
	// Not compacted, so that every row and heartbeat stays for the check.
	if _, err := ensureTopic(ctx, e.admin(), topic, 2, 1, false); err != nil {
		t.Fatal(err)
	}
	e.runReader(cfg)
	e.waitSnapshot(c, cfg.Name)

	// Writers on their own connections commit changes of their own
	// customers concurrently, so that commits arrive in bursts while the
	// reader is busy.
	type change struct {
		key     string
		version int64
		after   time.Time // database clock after the commit returned
	}
	const writers, customers, total = 5, 20, 150
	var mu sync.Mutex
	var changes []change
	write := func(c *pgx.Conn, w int) error {
		for i := w; i < total; i += writers {
			key := fmt.Sprintf("c%d", i%customers)
			v := int64(1)
			var err error
			if i < customers {
				_, err = c.Exec(ctx, `WITH c AS (INSERT INTO customers (customer_id, credit_limit, risk_tier) VALUES ($1, 5000, 'LOW'))
					INSERT INTO credit_profiles VALUES ($1, 700)`, key)
			} else {
				err = c.QueryRow(ctx, "UPDATE customers SET current_balance = current_balance + 1, version = version + 1 WHERE customer_id = $1 RETURNING version", key).Scan(&v)
			}
			if err != nil {
				return fmt.Errorf("change %d of %s: %w", i, key, err)
			}
			var now time.Time
			if err := c.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now); err != nil {
				return err
			}
			mu.Lock()
			changes = append(changes, change{key, v, now})
			mu.Unlock()
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wc := e.conn()
		wg.Add(1)
		go func() { defer wg.Done(); errs <- write(wc, w) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * cfg.HeartbeatInterval)
	e.waitFlushed(c, cfg.Name, e.currentLSN(c), time.Minute)

	scl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{e.regURL}})
	if err != nil {
		t.Fatal(err)
	}
	serde, err := schemas.NewWriterSchemaDecoder[schemas.Customer360](scl, topic+"-value")
	if err != nil {
		t.Fatal(err)
	}
	// Each key's rows go to one partition; a heartbeat has time hb.
	type rec struct {
		p      int32
		offset int64
		hb     int64
		row    schemas.Customer360
	}
	var recs []rec
	partitionOf := map[string]int32{}
	for _, r := range e.readAll(topic) {
		x := rec{p: r.rec.Partition, offset: r.rec.Offset}
		switch {
		case r.heartbeat():
			ms, err := strconv.ParseInt(string(r.rec.Headers[0].Value), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			x.hb = ms
		case r.rec.Value == nil:
			t.Fatalf("partition %d offset %d: unexpected tombstone", x.p, x.offset)
		default:
			row, err := serde.Decode(r.rec.Value)
			if err != nil {
				t.Fatalf("decoding Customer360: %v", err)
			}
			if p, ok := partitionOf[row.CustomerID]; ok && p != x.p {
				t.Fatalf("rows of %s in partitions %d and %d", row.CustomerID, p, x.p)
			}
			x.row, partitionOf[row.CustomerID] = row, x.p
		}
		recs = append(recs, x)
	}
	for i := range customers {
		key := fmt.Sprintf("c%d", i)
		if _, ok := partitionOf[key]; !ok {
			t.Fatalf("no row of %s", key)
		}
	}
	// Walk each partition in order: seen is the newest version of each key
	// so far; at a heartbeat, every change of the partition's keys committed
	// before its time must be covered.
	seen := map[int32]map[string]int64{}
	checked, heartbeats := 0, 0
	for _, x := range recs {
		if seen[x.p] == nil {
			seen[x.p] = map[string]int64{}
		}
		if x.hb == 0 {
			seen[x.p][x.row.CustomerID] = max(seen[x.p][x.row.CustomerID], x.row.Version)
			continue
		}
		heartbeats++
		for _, ch := range changes {
			if partitionOf[ch.key] != x.p || ch.after.UnixMicro() >= x.hb*1000 {
				continue
			}
			checked++
			if seen[x.p][ch.key] < ch.version {
				t.Errorf("partition %d offset %d: heartbeat %s precedes the row of %s version %d, committed before %s (newest row so far: version %d)",
					x.p, x.offset, time.UnixMilli(x.hb).Format("15:04:05.000"), ch.key, ch.version, ch.after.Format("15:04:05.000000"), seen[x.p][ch.key])
			}
		}
	}
	if len(seen) != 2 || checked < total {
		t.Fatalf("%d partitions, %d heartbeats, %d (heartbeat, change) pairs checked: too few to test anything", len(seen), heartbeats, checked)
	}
	t.Logf("%d changes, %d heartbeats, %d (heartbeat, earlier change) pairs checked", total, heartbeats, checked)
}

// admin is an admin client of the test broker, closed when the test ends.
func (e *cdcEnv) admin() *kadm.Client {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

package postgres

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/testenv"
)

// startRegistry runs the embedded schema registry (storing schemas in
// topic) until the test ends and returns its URL.
func startRegistry(t testing.TB, brokers []string, topic string) string {
	t.Helper()
	reg, err := schemaregistry.New(schemaregistry.Config{Brokers: brokers, Listen: "127.0.0.1:0", Topic: topic,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-reg.Ready():
	case err := <-done:
		t.Fatalf("schema registry: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("schema registry not ready")
	}
	return reg.URL()
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	testenv.Main(m)
}

// cdcEnv is one test's database, broker and registry.
type cdcEnv struct {
	t       testing.TB
	dsn     string
	brokers []string
	regURL  string
	cfg     Config
}

func newEnv(t testing.TB) *cdcEnv {
	t.Helper()
	return newEnvOn(t, testenv.Broker(t).Addrs())
}

// newEnvOn is newEnv on the brokers at seeds (e.g. an Apache Kafka the
// test owns).
func newEnvOn(t testing.TB, seeds []string) *cdcEnv {
	t.Helper()
	dsn := testenv.NewDatabase(t)
	name := testenv.Name(t, "cdc")
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	regURL := startRegistry(t, seeds, name+"_schemas")
	e := &cdcEnv{t: t, dsn: dsn, brokers: seeds, regURL: regURL}
	e.cfg = Config{
		Name: name, DatabaseURL: dsn, Brokers: e.brokers, SchemaRegistryURL: regURL,
		TopicPrefix: name, PositionsTopic: name + "_positions", TopicPartitions: 3,
		StatusInterval: 200 * time.Millisecond, HeartbeatInterval: time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	return e
}

func (e *cdcEnv) conn() *pgx.Conn {
	e.t.Helper()
	c, err := pgx.Connect(context.Background(), e.dsn)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func (e *cdcEnv) exec(c *pgx.Conn, sql string, args ...any) {
	e.t.Helper()
	if _, err := c.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// runReader runs a reader in this process until the test ends; the
// returned channel yields its Run error.
func (e *cdcEnv) runReader(cfg Config) (stop func() error) {
	e.t.Helper()
	r, err := NewReader(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	e.t.Cleanup(func() { _ = stop() })
	return stop
}

// currentLSN is pg_current_wal_insert_lsn(): the test cluster runs with
// synchronous_commit off, so pg_current_wal_lsn() (the write position) can
// trail a commit that has returned.
func (e *cdcEnv) currentLSN(c *pgx.Conn) pglogrepl.LSN {
	e.t.Helper()
	var s string
	if err := c.QueryRow(context.Background(), "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	l, _ := pglogrepl.ParseLSN(s)
	return l
}

// confirmedFlush is the slot's confirmed_flush_lsn (0 when missing).
func (e *cdcEnv) confirmedFlush(c *pgx.Conn, slot string) pglogrepl.LSN {
	e.t.Helper()
	var s *string
	err := c.QueryRow(context.Background(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&s)
	if err != nil || s == nil {
		return 0
	}
	l, _ := pglogrepl.ParseLSN(*s)
	return l
}

// waitFlushed waits until the slot confirmed target (the reader confirms
// only what Kafka committed, so Kafka then holds everything before it).
func (e *cdcEnv) waitFlushed(c *pgx.Conn, slot string, target pglogrepl.LSN, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for e.confirmedFlush(c, slot) < target {
		if time.Now().After(deadline) {
			e.t.Fatalf("slot %s confirmed %s, want >= %s after %v", slot, e.confirmedFlush(c, slot), target, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// consumed is a record read back from Kafka with its decoded key/value.
type consumed struct {
	rec   *kgo.Record
	key   map[string]any
	value map[string]any // nil for tombstones
}

func (c consumed) heartbeat() bool {
	for _, h := range c.rec.Headers {
		if h.Key == HeartbeatHeader {
			return true
		}
	}
	return false
}

// decoder decodes Confluent-framed Avro with schemas from the registry.
type decoder struct {
	cl      *sr.Client
	schemas map[int]*avro.Schema
}

func newDecoder(t testing.TB, url string) *decoder {
	cl, err := sr.NewClient(sr.URLs(url))
	if err != nil {
		t.Fatal(err)
	}
	return &decoder{cl: cl, schemas: map[int]*avro.Schema{}}
}

func (d *decoder) decode(b []byte) (map[string]any, int, error) {
	out, id, err := d.decodeAny(b)
	m, _ := out.(map[string]any) // nil for non-record keys
	return m, id, err
}

// decodeAny decodes Confluent-framed Avro of any type.
func (d *decoder) decodeAny(b []byte) (any, int, error) {
	if len(b) < 5 || b[0] != 0 {
		return nil, 0, fmt.Errorf("not confluent-framed: %x", b)
	}
	id := int(binary.BigEndian.Uint32(b[1:5]))
	s, ok := d.schemas[id]
	if !ok {
		ss, err := d.cl.SchemaByID(context.Background(), id)
		if err != nil {
			return nil, id, err
		}
		if s, err = avro.Parse(ss.Schema); err != nil {
			return nil, id, err
		}
		d.schemas[id] = s
	}
	var out any
	if _, err := s.Decode(b[5:], &out); err != nil {
		return nil, id, err
	}
	return out, id, nil
}

// readAll reads topics with read_committed up to an end marker it writes
// to every partition, decoding keys and values.
func (e *cdcEnv) readAll(topics ...string) []consumed {
	e.t.Helper()
	return e.read(true, topics...)
}

// readRaw is readAll without decoding (e.g. the JSON dead-letter topic).
func (e *cdcEnv) readRaw(topics ...string) []consumed {
	e.t.Helper()
	return e.read(false, topics...)
}

func (e *cdcEnv) read(decode bool, topics ...string) []consumed {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(topics[0]),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	md, err := kadm.NewClient(cl).ListTopics(ctx, topics...)
	if err != nil {
		e.t.Fatal(err)
	}
	want := 0
	offsets := map[string]map[int32]kgo.Offset{}
	for _, topic := range topics {
		offsets[topic] = map[int32]kgo.Offset{}
		for p := range md[topic].Partitions {
			offsets[topic][p] = kgo.NewOffset().AtStart()
			r := &kgo.Record{Topic: topic, Partition: p, Key: []byte("__test_end"), Headers: []kgo.RecordHeader{{Key: "test.end"}}}
			if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
				e.t.Fatal(err)
			}
			want++
		}
	}
	cons, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumePartitions(offsets),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cons.Close()
	dec := newDecoder(e.t, e.regURL)
	var out []consumed
	for want > 0 {
		fs := cons.PollFetches(ctx)
		if ctx.Err() != nil {
			e.t.Fatalf("reading %v: %v (%d end markers missing)", topics, ctx.Err(), want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if len(r.Headers) > 0 && r.Headers[0].Key == "test.end" {
				want--
				return
			}
			c := consumed{rec: r}
			if decode { // every record, heartbeats too, must decode
				var err error
				if r.Key != nil {
					if c.key, _, err = dec.decode(r.Key); err != nil {
						e.t.Fatalf("decoding key at %s/%d@%d: %v", r.Topic, r.Partition, r.Offset, err)
					}
				}
				if r.Value != nil {
					if c.value, _, err = dec.decode(r.Value); err != nil {
						e.t.Fatalf("decoding value at %s/%d@%d: %v", r.Topic, r.Partition, r.Offset, err)
					}
				}
			}
			out = append(out, c)
		})
	}
	return out
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

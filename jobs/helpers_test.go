package jobs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/connectors/postgres"
	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func quietLogger() *slog.Logger {
	if os.Getenv("LOANFLOW_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// registries are the package's embedded schema registries, one per
// broker (keyed by its seed addresses), each started on first use.
var registries struct {
	sync.Mutex
	byBroker map[string]*sharedRegistry
}

type sharedRegistry struct {
	once sync.Once
	url  string
	err  error
}

// registryURL runs one embedded schema registry per broker for the package.
func registryURL(t testing.TB, brokers []string) string {
	t.Helper()
	key := strings.Join(brokers, ",")
	registries.Lock()
	if registries.byBroker == nil {
		registries.byBroker = map[string]*sharedRegistry{}
	}
	r := registries.byBroker[key]
	if r == nil {
		r = &sharedRegistry{}
		registries.byBroker[key] = r
	}
	registries.Unlock()
	r.once.Do(func() {
		var reg *schemaregistry.Registry
		reg, r.err = schemaregistry.New(schemaregistry.Config{Brokers: brokers, Listen: "127.0.0.1:0",
			Topic: "_schemas_jobs_test", Logger: quietLogger()})
		if r.err != nil {
			return
		}
		done := make(chan error, 1)
		go func() { done <- reg.Run(context.Background()) }()
		select {
		case <-reg.Ready():
			r.url = reg.URL()
		case r.err = <-done:
		case <-time.After(time.Minute):
			r.err = fmt.Errorf("schema registry not ready")
		}
	})
	if r.err != nil {
		t.Fatalf("schema registry: %v", r.err)
	}
	return r.url
}

// startBureau runs a simulator until the test ends.
func startBureau(t testing.TB, cfg bureau.Config) *bureau.Server {
	t.Helper()
	cfg.Listen, cfg.Logger = "127.0.0.1:0", quietLogger()
	s, err := bureau.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	<-s.Ready()
	return s
}

// stack is one test's system: a database with the API's schema, the CDC
// reader streaming it (customer_360 view and envelope topics), and a
// shared broker and its registry, all under test-unique names.
type stack struct {
	t      testing.TB
	env    Env
	pool   *pgxpool.Pool
	cdc    postgres.Config
	stopFn func() error
}

// newStack builds a stack on the package's embedded broker (kfake).
func newStack(t testing.TB) *stack {
	t.Helper()
	return newStackOn(t, testenv.Broker(t).Addrs())
}

// newStackOn builds a stack on the broker at brokers (see
// testenv.EachBroker).
func newStackOn(t testing.TB, brokers []string) *stack {
	t.Helper()
	dsn := testenv.NewDatabase(t)
	ctx := context.Background()
	if _, err := migrations.Up(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	name := testenv.Name(t, "lf")
	if len(name) > 50 {
		name = name[len(name)-50:]
	}
	topics := Topics{Applications: name + "_applications", Customer360: name + "_customer_360", Decisions: name + "_decisions",
		PortfolioMetrics: name + "_portfolio", CDCPrefix: name}
	s := &stack{t: t, pool: pool, env: Env{Brokers: brokers, SchemaRegistryURL: registryURL(t, brokers),
		DatabaseURL: dsn, RedisURL: testenv.Redis(t).URL(), Topics: topics, Logger: quietLogger()}}
	view := postgres.Customer360View()
	view.Topic = topics.Customer360
	s.cdc = postgres.Config{Name: name, DatabaseURL: dsn, Brokers: s.env.Brokers, SchemaRegistryURL: s.env.SchemaRegistryURL,
		TopicPrefix: name, PositionsTopic: name + "_positions", TopicPartitions: 3, EnsureReplicaIdentityFull: true,
		StatusInterval: 200 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond, Views: []postgres.ViewConfig{view},
		Tables: postgres.LoanflowTables(), // the shipped config: no PII columns
		Logger: quietLogger()}
	return s
}

// startCDC runs the CDC reader until the test ends.
func (s *stack) startCDC() {
	s.t.Helper()
	r, err := postgres.NewReader(s.cdc)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	s.stopFn = func() error {
		var err error
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	s.t.Cleanup(func() {
		if err := s.stopFn(); err != nil {
			s.t.Errorf("CDC reader: %v", err)
		}
	})
}

func (s *stack) exec(sql string, args ...any) {
	s.t.Helper()
	if _, err := s.pool.Exec(context.Background(), sql, args...); err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
}

// addLender inserts a lender row.
func (s *stack) addLender(id string) {
	s.exec("INSERT INTO lenders (lender_id, name) VALUES ($1, $1)", id)
}

// customer is a seeded customer with its credit profile.
type customer struct {
	ID, Tier, Status string
	Limit, Balance   string
	Score            int
}

// addCustomer inserts a customer and its credit profile in one
// transaction. PII columns hold opaque bytes: the jobs never read them.
func (s *stack) addCustomer(c customer) {
	s.t.Helper()
	if c.Status == "" {
		c.Status = "ACTIVE"
	}
	tx, err := s.pool.Begin(context.Background())
	if err != nil {
		s.t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	ctx := context.Background()
	if _, err := tx.Exec(ctx, `INSERT INTO customers (customer_id, name_ct, ssn_ct, ssn_index, ssn_index_key_version, credit_limit,
		current_balance, risk_tier, status) VALUES ($1, '\x00', '\x00', $2, 1, $3::numeric, $4::numeric, $5, $6)`,
		c.ID, ssnIndex(c.ID), c.Limit, c.Balance, c.Tier, c.Status); err != nil {
		s.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO credit_profiles (customer_id, current_score) VALUES ($1, $2)", c.ID, c.Score); err != nil {
		s.t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		s.t.Fatal(err)
	}
}

// ssnIndex is a stand-in blind index (32 bytes, like the HMAC-SHA256 PRF).
func ssnIndex(who string) []byte {
	h := sha256.Sum256([]byte("ssn:" + who))
	return h[:]
}

// worker runs a job on the Kafka runtime until stopped.
type worker struct {
	w    *kafka.Worker
	stop context.CancelFunc
	done chan error
}

func runWorker(t testing.TB, brokers []string, b *pipeline.Builder, stateDir string) *worker {
	t.Helper()
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: brokers, StateDir: stateDir, Logger: quietLogger(),
		CommitInterval: 100 * time.Millisecond, TransactionTimeout: 5 * time.Second, SessionTimeout: 3 * time.Second, DefaultPartitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wk := &worker{w: w, stop: cancel, done: make(chan error, 1)}
	go func() { wk.done <- w.Run(ctx) }()
	t.Cleanup(func() { wk.halt(t) })
	return wk
}

// halt stops the worker gracefully (a final checkpoint) and checks Run.
func (wk *worker) halt(t testing.TB) {
	if wk.stop == nil {
		return
	}
	wk.stop()
	wk.stop = nil
	err := <-wk.done
	switch {
	case errors.Is(err, context.Canceled):
		// The engine's Run returns this when the stop lands inside a
		// checkpoint (reported to the engine lead); the transaction was
		// then not committed and the next worker resumes before it.
		t.Logf("worker stopped inside a checkpoint: %v", err)
	case err != nil:
		t.Errorf("worker: %v", err)
	}
}

func newAdmin(t testing.TB, brokers []string) *kadm.Client {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// createTopic creates a topic with the broker's default replication
// factor (-1), as the jobs' own topics are created.
func createTopic(t testing.TB, brokers []string, topic string, parts int32, compact bool) {
	t.Helper()
	var cfg map[string]*string
	if compact {
		c := "compact"
		cfg = map[string]*string{"cleanup.policy": &c}
	}
	resp, err := newAdmin(t, brokers).CreateTopic(context.Background(), parts, -1, cfg, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("creating %s: %v", topic, err)
	}
}

func produce(t testing.TB, brokers []string, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// consumer reads a topic from the start with read_committed isolation.
type consumer struct {
	t  testing.TB
	cl *kgo.Client
}

func newConsumer(t testing.TB, brokers []string, topic string) *consumer {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &consumer{t: t, cl: cl}
}

// until polls records into fn until done returns true or timeout passes.
func (c *consumer) until(timeout time.Duration, fn func(*kgo.Record), done func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !done() {
		if time.Now().After(deadline) {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		fs := c.cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(fn)
	}
	return true
}

// serde returns a registered serde for a record type on the stack's
// registry.
func serde[T any](t testing.TB, env Env, topic, schema string) *schemas.Serde[T] {
	t.Helper()
	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{env.SchemaRegistryURL}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := schemas.NewSerde[T](context.Background(), cl, schemas.ValueSubject(topic), schema)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

package schemaregistry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Sentinel errors of Run.
var (
	// ErrTopicNotCompacted: the storage topic exists with a cleanup policy
	// other than compact, which would lose schemas to retention.
	ErrTopicNotCompacted = errors.New("schemaregistry: storage topic is not compacted")
	// ErrStopped: Run was called on a registry that already ran.
	ErrStopped = errors.New("schemaregistry: registry already ran")
)

// Registry is an embedded schema registry speaking Confluent's REST API,
// storing its state in a compacted Kafka topic. Create it with New and run
// it with Run.
type Registry struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}

	runOnce sync.Once
	addr    string // set before ready is closed

	cl  *kgo.Client
	adm *kadm.Client

	// writeMu serializes writers: a write reads the state, decides, produces
	// and waits until the tail has applied its record. Lock order: writeMu,
	// then mu.
	writeMu sync.Mutex
	// unsettled is set when a write failed and its transaction's outcome is
	// not known to be settled; fenced when another registry took over the
	// topic. Both guarded by writeMu.
	unsettled, fenced bool

	mu struct {
		sync.RWMutex
		st      *state
		next    int64         // offset of the next record the tail applies
		applied chan struct{} // closed and replaced whenever next advances
		tailErr error         // why the tail stopped
	}

	parsedMu sync.Mutex
	parsed   map[string]*avro.Schema // schema identity → parsed; bounded by MaxSchemas
}

// New checks cfg and returns a Registry; nothing is started until Run.
func New(cfg Config) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cfg.DefaultCompatibility, _ = parseCompat(cfg.DefaultCompatibility)
	r := &Registry{cfg: cfg, log: cfg.Logger.With("component", "schema-registry"), ready: make(chan struct{})}
	r.mu.st = newState()
	r.mu.applied = make(chan struct{})
	r.parsed = make(map[string]*avro.Schema)
	return r, nil
}

// Ready is closed once the registry has loaded the topic and listens.
func (r *Registry) Ready() <-chan struct{} { return r.ready }

// Addr returns the address the HTTP server listens on, or "" before Ready.
func (r *Registry) Addr() string {
	select {
	case <-r.ready:
		return r.addr
	default:
		return ""
	}
}

// URL returns the registry's base URL (http://Addr), or "" before Ready.
func (r *Registry) URL() string {
	if a := r.Addr(); a != "" {
		return "http://" + a
	}
	return ""
}

// Run connects to Kafka, creates the storage topic if needed (compacted,
// one partition), loads every record in it, then serves HTTP until ctx is
// done. It returns nil after a clean stop, or the error that stopped it.
// Run owns every goroutine of the registry and returns only after all of
// them ended. A Registry runs once.
func (r *Registry) Run(ctx context.Context) error {
	err := ErrStopped
	r.runOnce.Do(func() { err = r.run(ctx) })
	return err
}

func (r *Registry) run(ctx context.Context) error {
	if err := r.connect(ctx); err != nil {
		return err
	}
	defer r.cl.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.tail(ctx) }()
	defer wg.Wait()
	defer cancel()
	if err := r.load(ctx); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", r.cfg.Listen)
	if err != nil {
		return fmt.Errorf("schemaregistry: listening on %s: %w (set --listen to a free address)", r.cfg.Listen, err)
	}
	r.addr = ln.Addr().String()
	return r.serve(ctx, ln)
}

func (r *Registry) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           r.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      2 * r.cfg.WriteTimeout,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	r.mu.RLock()
	n := len(r.mu.st.ids)
	r.mu.RUnlock()
	r.log.Info("schema registry ready", "addr", r.addr, "topic", r.cfg.Topic, "schemas", n)
	close(r.ready)
	select {
	case err := <-errc:
		return fmt.Errorf("schemaregistry: serving HTTP: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("schemaregistry: stopping HTTP: %w", err)
	}
	r.log.Info("schema registry stopped")
	return nil
}

func (r *Registry) connect(ctx context.Context) error {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(r.cfg.Brokers...),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		kgo.DefaultProduceTopic(r.cfg.Topic),
		kgo.TransactionalID(r.cfg.TransactionalID),
		// A write's context does not reach records already batched; this
		// bounds them too, so a write fails when Kafka is unreachable.
		kgo.RecordDeliveryTimeout(r.cfg.WriteTimeout),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
	)
	if err != nil {
		return fmt.Errorf("schemaregistry: creating Kafka client: %w", err)
	}
	r.cl, r.adm = cl, kadm.NewClient(cl)
	if err := r.ensureTopic(ctx); err != nil {
		cl.Close()
		return err
	}
	// Consume only once the topic exists, so the reader does not start in
	// the client's unknown-topic backoff.
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{r.cfg.Topic: {0: kgo.NewOffset().AtStart()}})
	return nil
}

// ensureTopic creates the compacted storage topic, or checks the existing
// one is compacted.
func (r *Registry) ensureTopic(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.LoadTimeout)
	defer cancel()
	compact := "compact"
	res, err := r.adm.CreateTopic(ctx, 1, int16(r.cfg.ReplicationFactor), map[string]*string{"cleanup.policy": &compact}, r.cfg.Topic)
	if err == nil {
		err = res.Err
	}
	if err == nil {
		r.log.Info("created schema storage topic", "topic", r.cfg.Topic)
		return nil
	}
	if !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("schemaregistry: creating topic %s on %v: %w", r.cfg.Topic, r.cfg.Brokers, err)
	}
	cfgs, err := r.adm.DescribeTopicConfigs(ctx, r.cfg.Topic)
	if err != nil {
		return fmt.Errorf("schemaregistry: describing topic %s: %w", r.cfg.Topic, err)
	}
	rc, err := cfgs.On(r.cfg.Topic, nil)
	if err == nil {
		err = rc.Err
	}
	if err != nil {
		return fmt.Errorf("schemaregistry: describing topic %s: %w", r.cfg.Topic, err)
	}
	for _, c := range rc.Configs {
		if c.Key == "cleanup.policy" && c.Value != nil && *c.Value != "compact" {
			return fmt.Errorf("%w: %s has cleanup.policy=%s; set it to compact (kafka-configs --alter --add-config cleanup.policy=compact)", ErrTopicNotCompacted, r.cfg.Topic, *c.Value)
		}
	}
	return nil
}

// load takes over writing the topic (fencing any earlier registry with the
// same transactional id) and waits until the tail has applied everything
// the topic held.
func (r *Registry) load(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.LoadTimeout)
	defer cancel()
	start := time.Now()
	r.writeMu.Lock()
	err := r.sync(ctx)
	r.writeMu.Unlock()
	if err != nil {
		return fmt.Errorf("schemaregistry: loading %s: %w", r.cfg.Topic, err)
	}
	r.mu.RLock()
	st, next := r.mu.st, r.mu.next
	r.log.Info("loaded schemas", "topic", r.cfg.Topic, "records", next, "schemas", len(st.ids),
		"subjects", len(st.subjects), "skipped", st.warnings, "took", time.Since(start).String())
	r.mu.RUnlock()
	return nil
}

// waitApplied waits until every record below offset end is applied.
func (r *Registry) waitApplied(ctx context.Context, end int64) error {
	for {
		r.mu.RLock()
		next, ch, terr := r.mu.next, r.mu.applied, r.mu.tailErr
		r.mu.RUnlock()
		if next >= end {
			return nil
		}
		if terr != nil {
			return terr
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting to read back offset %d (read up to %d): %w", end, next, ctx.Err())
		}
	}
}

// tail applies the topic's records in order until ctx is done; it is the
// only writer of the state.
func (r *Registry) tail(ctx context.Context) {
	for {
		fs := r.cl.PollFetches(ctx)
		if ctx.Err() != nil {
			r.setTailErr(errors.New("schemaregistry: stopped"))
			return
		}
		fs.EachError(func(t string, p int32, err error) {
			r.log.Warn("reading schema topic", "topic", t, "partition", p, "err", err)
		})
		recs := fs.Records()
		if len(recs) == 0 {
			continue
		}
		r.mu.Lock()
		for _, rec := range recs {
			if err := r.mu.st.apply(rec.Key, rec.Value); err != nil {
				r.log.Warn("skipping schema record", "offset", rec.Offset, "err", err)
			}
			r.mu.next = rec.Offset + 1
		}
		close(r.mu.applied)
		r.mu.applied = make(chan struct{})
		r.mu.Unlock()
	}
}

func (r *Registry) setTailErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.tailErr = err
	close(r.mu.applied)
	r.mu.applied = make(chan struct{})
}

// parse parses a schema text, caching by identity.
func (r *Registry) parse(text string) (*avro.Schema, error) {
	key := schemaIdentity(text)
	r.parsedMu.Lock()
	s, ok := r.parsed[key]
	r.parsedMu.Unlock()
	if ok {
		return s, nil
	}
	s, err := avro.Parse(text)
	if err != nil {
		return nil, err
	}
	r.parsedMu.Lock()
	if len(r.parsed) >= r.cfg.MaxSchemas {
		clear(r.parsed)
	}
	r.parsed[key] = s
	r.parsedMu.Unlock()
	return s, nil
}

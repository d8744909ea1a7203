package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/loanflow/loanflow/connectors/kafka"
	lfredis "github.com/loanflow/loanflow/connectors/redis"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

func init() {
	Register(Job{AdminPort: 9101, Name: "cache-invalidation", Summary: "cdc customers, credit_profiles → Redis DEL profile:{id} (versioned by LSN)",
		Build: func(b *pipeline.Builder, env Env) error { return BuildCacheInvalidation(b, env, CacheConfig{}) }})
}

// CacheConfig tunes the cache-invalidation job; the zero value is the
// default.
type CacheConfig struct {
	// KeyPrefix is the prefix of the API's cache keys, followed by the
	// customer id. Default "profile:" (api/profiles.go).
	KeyPrefix string
	// RetryFor bounds how long an unreachable Redis is retried before the
	// task fails (and restarts from its checkpoint). Default 10s.
	RetryFor time.Duration
	// VersionTTL is how long the LSN of a key's last invalidation is kept
	// to skip older replays; it must outlast a replay. Default 24h.
	VersionTTL time.Duration
}

// WithDefaults returns c with zero fields defaulted.
func (c CacheConfig) WithDefaults() CacheConfig {
	if c.KeyPrefix == "" {
		c.KeyPrefix = "profile:"
	}
	if c.RetryFor == 0 {
		c.RetryFor = 10 * time.Second
	}
	if c.VersionTTL == 0 {
		c.VersionTTL = 24 * time.Hour
	}
	return c
}

// Validate reports what is wrong with c (after defaults).
func (c CacheConfig) Validate() error {
	if c.RetryFor <= 0 || c.VersionTTL <= 0 {
		return errors.New("jobs: cache-invalidation: retry_for and version_ttl must be positive")
	}
	return nil
}

// invalidation is what one change of a customer's tables means for the
// cache.
type invalidation struct {
	Table      string
	CustomerID string
	// LSN orders invalidations of a key (0 for snapshot reads: unversioned).
	LSN int64
	// All: a TRUNCATE, which invalidates every cached profile.
	All bool
	// Skip: a tombstone (its delete was already invalidated).
	Skip bool
}

// BuildCacheInvalidation declares the cache-invalidation job on b: each
// change of customers or credit_profiles deletes the customer's cached
// profile. The two tables are independent subtopologies, so their topics
// need not be co-partitioned.
func BuildCacheInvalidation(b *pipeline.Builder, env Env, cfg CacheConfig) error {
	cfg = cfg.WithDefaults()
	if err := errors.Join(cfg.Validate(), env.need(b.Job(), "brokers", "schema-registry", "redis")); err != nil {
		return err
	}
	if _, err := goredis.ParseURL(env.RedisURL); err != nil && !env.Offline {
		return fmt.Errorf("jobs: %s: redis url: %w", b.Job(), err)
	}
	c, cancel, err := env.codecs()
	if err != nil {
		return err
	}
	defer cancel()
	tp := env.Topics.WithDefaults()
	for _, table := range []string{"customers", "credit_profiles"} {
		topic := tp.CDC(table)
		dec, err := writerDecoder(c, topic)
		if err != nil {
			return err
		}
		changes := kafka.Source(b, table, kafka.SourceConfig[invalidation]{Topic: topic,
			Decode: func(raw *pipeline.RawRecord) (invalidation, error) { return decodeInvalidation(table, dec, raw) }})
		live := operators.Filter(changes, table+"-changes", func(i invalidation) bool { return !i.Skip })
		pipeline.AddSink(live, "invalidate-"+table, pipeline.SinkSpec{What: "redis"}, func() pipeline.Sink[invalidation] {
			return &cacheSink{url: env.RedisURL, cfg: cfg}
		})
	}
	return nil
}

// decodeInvalidation reads the customer id and LSN of a change envelope.
func decodeInvalidation(table string, dec pipeline.Codec[map[string]any], raw *pipeline.RawRecord) (invalidation, error) {
	inv := invalidation{Table: table}
	if raw.Value == nil {
		inv.Skip = true
		return inv, nil
	}
	env, err := dec.Decode(raw.Value)
	if err != nil {
		return inv, err
	}
	src, _ := env["source"].(map[string]any)
	if lsn, ok := src["lsn"].(int64); ok {
		inv.LSN = lsn
	}
	op, _ := env["op"].(string)
	row, _ := env["after"].(map[string]any)
	switch op {
	case schemas.OpTruncate:
		inv.All = true
		return inv, nil
	case schemas.OpDelete:
		row, _ = env["before"].(map[string]any)
	case schemas.OpCreate, schemas.OpUpdate, schemas.OpRead:
	default:
		return inv, fmt.Errorf("change of %s with unknown op %q", table, op)
	}
	id, ok := row["customer_id"].(string)
	if !ok || id == "" {
		return inv, fmt.Errorf("%s change (op %s) without a customer_id in its row image", table, op)
	}
	inv.CustomerID = id
	return inv, nil
}

// cacheSink deletes cached profiles through the versioned Redis sink of
// connectors/redis (a replayed older change is skipped), one change at a
// time: an invalidation is applied before its offset can commit.
type cacheSink struct {
	url  string
	cfg  CacheConfig
	pctx *pipeline.Context
	sink *lfredis.Sink
	cl   *goredis.Client // for TRUNCATE's SCAN, which the sink does not do
}

func (s *cacheSink) Open(ctx *pipeline.Context) error {
	sink, err := lfredis.New(lfredis.Config{URL: s.url, VersionTTL: s.cfg.VersionTTL})
	if err != nil {
		return err
	}
	opts, _ := goredis.ParseURL(s.url) // validated at build
	s.pctx, s.sink, s.cl = ctx, sink, goredis.NewClient(opts)
	return nil
}

func (s *cacheSink) Close() error {
	return errors.Join(s.sink.Close(), s.cl.Close())
}

func (s *cacheSink) Write(r pipeline.Record[invalidation]) error {
	inv := r.Value
	apply := func(ctx context.Context) error {
		if inv.All {
			return s.flushAll(ctx)
		}
		_, err := s.sink.Write(ctx, []lfredis.Op{{Key: s.cfg.KeyPrefix + inv.CustomerID, Delete: true, Version: inv.LSN}})
		return err
	}
	err := retryRedis(s.cfg.RetryFor, apply)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, lfredis.ErrUnavailable):
		return s.pctx.HandleError(pipeline.Retryable(fmt.Errorf("invalidating %s: %w", s.cfg.KeyPrefix+inv.CustomerID, err)))
	}
	return s.pctx.HandleError(fmt.Errorf("invalidating %s: %w", s.cfg.KeyPrefix+inv.CustomerID, err))
}

// flushAll deletes every cached profile (a table was truncated).
func (s *cacheSink) flushAll(ctx context.Context) error {
	s.pctx.Logger().Warn("table truncated: deleting every cached profile", "prefix", s.cfg.KeyPrefix)
	iter := s.cl.Scan(ctx, 0, s.cfg.KeyPrefix+"*", 1000).Iterator()
	batch := make([]string, 0, 1000)
	for iter.Next(ctx) {
		if batch = append(batch, iter.Val()); len(batch) == cap(batch) {
			if err := s.cl.Unlink(ctx, batch...).Err(); err != nil {
				return fmt.Errorf("%w: %v", lfredis.ErrUnavailable, err)
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("%w: %v", lfredis.ErrUnavailable, err)
	}
	if len(batch) > 0 {
		if err := s.cl.Unlink(ctx, batch...).Err(); err != nil {
			return fmt.Errorf("%w: %v", lfredis.ErrUnavailable, err)
		}
	}
	return nil
}

// retryRedis retries ErrUnavailable for retryFor, backing off to 1s.
func retryRedis(retryFor time.Duration, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(retryFor)
	wait := 50 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil || !errors.Is(err, lfredis.ErrUnavailable) || time.Now().Add(wait).After(deadline) {
			return err
		}
		time.Sleep(wait)
		wait = min(2*wait, time.Second)
	}
}

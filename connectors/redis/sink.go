package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Sentinel errors.
var (
	// ErrInvalidOp: an operation is malformed. Not retryable.
	ErrInvalidOp = errors.New("redis: invalid operation")
	// ErrUnavailable: Redis could not be reached or timed out. Retryable.
	ErrUnavailable = errors.New("redis: unavailable")
	// ErrConfig: the configuration is invalid.
	ErrConfig = errors.New("redis: invalid config")
)

// Op is one cache operation.
type Op struct {
	// Key is the Redis key (KeyPrefix is prepended).
	Key string
	// Delete removes the key; otherwise Value is SET.
	Delete bool
	// Value to SET.
	Value []byte
	// TTL of a SET; 0 uses Config.DefaultTTL.
	TTL time.Duration
	// Version, when positive, orders writes to Key: the op is skipped if a
	// version at least as new was already applied (see doc.go).
	Version int64
}

// Config configures a Sink.
type Config struct {
	// URL is redis://[user:pass@]host:port/db. Required.
	URL string
	// KeyPrefix is prepended to every key. Default "".
	KeyPrefix string
	// DefaultTTL of SET operations without their own. Default 1h.
	DefaultTTL time.Duration
	// VersionTTL is how long the version of a key is remembered. It must
	// outlast the longest replay window. Default 24h.
	VersionTTL time.Duration
	// Timeout bounds one Write. Default 5s.
	Timeout time.Duration
	// MaxBatchOps bounds the operations of one Write. Default 10000.
	MaxBatchOps int
}

// WithDefaults returns c with zero fields defaulted.
func (c Config) WithDefaults() Config {
	if c.DefaultTTL == 0 {
		c.DefaultTTL = time.Hour
	}
	if c.VersionTTL == 0 {
		c.VersionTTL = 24 * time.Hour
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MaxBatchOps == 0 {
		c.MaxBatchOps = 10000
	}
	return c
}

// Validate reports what is wrong with c (after defaults).
func (c Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, fmt.Errorf("%w: url is required (redis://host:port/db)", ErrConfig))
	} else if _, err := goredis.ParseURL(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("%w: url: %v", ErrConfig, err))
	}
	if c.DefaultTTL <= 0 || c.VersionTTL <= 0 || c.Timeout <= 0 || c.MaxBatchOps <= 0 {
		errs = append(errs, fmt.Errorf("%w: default_ttl, version_ttl, timeout and max_batch_ops must be positive", ErrConfig))
	}
	return errors.Join(errs...)
}

// Sink applies batches of cache operations.
type Sink struct {
	cfg Config
	cl  *goredis.Client
}

// versioned applies a versioned op: KEYS[1] key, KEYS[2] its version key;
// ARGV op ("d" or "s"), version, value, ttl ms, version ttl ms.
var versioned = goredis.NewScript(`
local cur = redis.call('GET', KEYS[2])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
if ARGV[1] == 'd' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[5])
return 1`)

// New returns a sink; it does not connect until the first Write.
func New(cfg Config) (*Sink, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts, _ := goredis.ParseURL(cfg.URL)
	return &Sink{cfg: cfg, cl: goredis.NewClient(opts)}, nil
}

// Close releases the connection pool.
func (s *Sink) Close() error { return s.cl.Close() }

// Write applies batch in one pipelined round trip. It returns the number of
// operations applied (versioned ops that were stale are not counted).
func (s *Sink) Write(ctx context.Context, batch []Op) (int, error) {
	if len(batch) > s.cfg.MaxBatchOps {
		return 0, fmt.Errorf("%w: batch of %d ops exceeds max_batch_ops %d", ErrInvalidOp, len(batch), s.cfg.MaxBatchOps)
	}
	for i := range batch {
		if err := s.check(&batch[i]); err != nil {
			return 0, err
		}
	}
	if len(batch) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	if err := versioned.Load(ctx, s.cl).Err(); err != nil {
		return 0, fmt.Errorf("%w: loading script: %v", ErrUnavailable, err)
	}
	cmds, err := s.cl.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i := range batch {
			s.queue(ctx, p, &batch[i])
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return 0, s.classify(err)
	}
	applied := 0
	for _, c := range cmds {
		switch c := c.(type) {
		case *goredis.IntCmd: // DEL: 0 when the key was already gone
			if c.Val() == 0 {
				continue
			}
		case *goredis.Cmd: // versioned script: 0 when the op was stale
			if n, _ := c.Int64(); n == 0 {
				continue
			}
		}
		applied++
	}
	return applied, nil
}

func (s *Sink) check(op *Op) error {
	switch {
	case op.Key == "":
		return fmt.Errorf("%w: empty key", ErrInvalidOp)
	case !op.Delete && op.Value == nil:
		return fmt.Errorf("%w: SET %s without a value", ErrInvalidOp, op.Key)
	case op.TTL < 0:
		return fmt.Errorf("%w: SET %s with negative TTL %v", ErrInvalidOp, op.Key, op.TTL)
	case op.Version < 0:
		return fmt.Errorf("%w: %s with negative version %d", ErrInvalidOp, op.Key, op.Version)
	}
	return nil
}

func (s *Sink) queue(ctx context.Context, p goredis.Pipeliner, op *Op) {
	key := s.cfg.KeyPrefix + op.Key
	ttl := op.TTL
	if ttl == 0 {
		ttl = s.cfg.DefaultTTL
	}
	if op.Version == 0 {
		if op.Delete {
			p.Del(ctx, key)
		} else {
			p.Set(ctx, key, op.Value, ttl)
		}
		return
	}
	kind := "s"
	if op.Delete {
		kind = "d"
	}
	p.EvalSha(ctx, versioned.Hash(), []string{key, versionKey(key)},
		kind, strconv.FormatInt(op.Version, 10), op.Value, ttl.Milliseconds(), s.cfg.VersionTTL.Milliseconds())
}

// versionKey holds the version last applied to key; the hash tag keeps it
// in key's slot on a cluster.
func versionKey(key string) string {
	if strings.Contains(key, "{") {
		return key + "#v"
	}
	return "{" + key + "}#v"
}

func (s *Sink) classify(err error) error {
	var rerr goredis.Error
	if errors.As(err, &rerr) && !strings.HasPrefix(rerr.Error(), "LOADING") && !strings.HasPrefix(rerr.Error(), "NOSCRIPT") {
		return fmt.Errorf("redis: applying batch: %w", err)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

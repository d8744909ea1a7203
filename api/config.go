package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/loanflow/loanflow/api/auth"
	"github.com/loanflow/loanflow/api/pii"
)

// Config configures the API server. Zero fields take the defaults below
// (see SetDefaults); Validate reports what is wrong and how to fix it.
type Config struct {
	// Addr is the listen address. Default 127.0.0.1:8080.
	Addr string
	// AdminAddr, when set, serves /metrics (and /healthz, /readyz) on this
	// separate listener only, off the public one. Empty: /metrics is on
	// Addr (behind MetricsToken when set).
	AdminAddr string
	// MetricsToken, when set, is the bearer token /metrics requires.
	MetricsToken string
	// DatabaseURL is the PostgreSQL DSN (required). In production it names
	// a login role in loanflow_api (migration 00005), which owns nothing:
	// it cannot alter or disable the audit tables' triggers.
	DatabaseURL string
	// MigrationsDatabaseURL, when set, is the DSN migrations run with (the
	// schema owner); DatabaseURL then serves requests only. Empty: both
	// use DatabaseURL.
	MigrationsDatabaseURL string
	// SkipMigrations: the schema is migrated by its owner elsewhere
	// (`loanflow db migrate`), so the API needs no owner credentials.
	SkipMigrations bool
	// DBMaxConns bounds the connection pool. Default 20.
	DBMaxConns int32
	// RedisURL is the cache (required), e.g. redis://127.0.0.1:6379/0.
	RedisURL string
	// KafkaBrokers are seed brokers (required).
	KafkaBrokers []string
	// Topics read and written by the API.
	ApplicationsTopic string // default loan_applications
	DecisionsTopic    string // default loan_decisions
	MetricsTopic      string // default portfolio_metrics
	// AuditAnchorsTopic receives the signed heads of the audit chain.
	// Default audit_anchors.
	AuditAnchorsTopic string
	// AuditAnchorInterval is how often the head is anchored (when it
	// moved). Default 10s; negative disables.
	AuditAnchorInterval time.Duration
	// SchemaRegistryURL is the Confluent-compatible registry of the Avro
	// serde (required).
	SchemaRegistryURL string

	// PublicURL is how clients reach this server; it is the dev issuer's
	// iss. Default http://<Addr>.
	PublicURL string
	// Audience is the aud this API requires. Default "loanflow-api".
	Audience string
	// DevIssuer serves /oauth/token and /.well-known/jwks.json: the
	// development issuer (`loanflow dev`, tests, the compose demo). Exactly
	// one of DevIssuer and ExternalIssuer must be set: a server with
	// neither refuses to start rather than fall back to the dev issuer.
	DevIssuer bool
	// ExternalIssuer and ExternalJWKSURL validate tokens of another issuer
	// instead of the dev one.
	ExternalIssuer  string
	ExternalJWKSURL string
	// JWKSURL, when set, makes the validator fetch the dev issuer's keys
	// over HTTP as it would for an external issuer (tests use it).
	JWKSURL string
	// JWKSMinRefetchInterval bounds refetches on unknown kids. Default 30s.
	JWKSMinRefetchInterval time.Duration
	// TokenTTL of dev-issued tokens. Default 15m.
	TokenTTL time.Duration
	// KeyRotationInterval rotates the dev signing key. Default 24h; 0 keeps
	// the default, negative disables.
	KeyRotationInterval time.Duration
	// ClockSkew tolerated on exp/nbf. Default 30s.
	ClockSkew time.Duration
	// MaxTokenLifetime caps the lifetime of accepted tokens (exp - iat),
	// whoever issued them. Default 1h; TokenTTL must not exceed it.
	MaxTokenLifetime time.Duration
	// RevocationStaleness bounds how long a disabled client's tokens keep
	// working (the per-subject cache of api_clients.disabled). Default
	// 10s, at most 30s.
	RevocationStaleness time.Duration

	// PII keysets (required).
	PII pii.Config
	// KeysReloadInterval checks the keyset files for rotation. Default 10s.
	KeysReloadInterval time.Duration

	// CacheTTL and CacheTTLJitter for profile:{id}. Defaults 5m and 1m.
	CacheTTL       time.Duration
	CacheTTLJitter time.Duration
	// NearCacheSize bounds the credit profiles the API keeps in process
	// in front of Redis, kept coherent by Redis client tracking (see
	// nearCache). Default 100000; negative: no near cache.
	NearCacheSize int
	// NearCacheTTL bounds how long a near-cache entry is served without
	// an invalidation. Default 1m.
	NearCacheTTL time.Duration
	// AuditCommitDelay is the audit journal's commit delay: under load,
	// audited reads share a commit per this long (audit.JournalConfig).
	// Default 200µs; negative: a commit per round trip.
	AuditCommitDelay time.Duration
	// RedisTimeout bounds one Redis command. Default 50ms.
	RedisTimeout time.Duration
	// BreakerFailures consecutive Redis failures open the breaker; it
	// probes again after BreakerOpenTimeout. Defaults 5 and 2s.
	BreakerFailures    uint32
	BreakerOpenTimeout time.Duration

	// RateLimitPerSec and RateLimitBurst per lender (a lender row may
	// override). Defaults 200 and 400.
	RateLimitPerSec float64
	RateLimitBurst  int
	// LoginRatePerSec and LoginBurst throttle /oauth/token,
	// /dashboard/login and /operator per client id; per source address
	// five times as much. Defaults 1 and 10.
	LoginRatePerSec float64
	LoginBurst      int
	// MaxLenders bounds the per-lender limiter table. Default 10000.
	MaxLenders int
	// MaxBodyBytes bounds request bodies. Default 64 KiB.
	MaxBodyBytes int64
	// EventTimeSkew bounds an application's event_time to now ± it.
	// Default 1h.
	EventTimeSkew time.Duration
	// IdempotencyTTL is how long an idempotency key is remembered; older
	// keys are deleted every IdempotencyTTL/24. Default 24h.
	IdempotencyTTL time.Duration
	// LongPollMax bounds ?timeout= of the decision long-poll. Default 30s.
	LongPollMax time.Duration
	// DecisionCacheSize bounds remembered decisions and application
	// lenders. Default 100000.
	DecisionCacheSize int
	// SSEBuffer bounds queued events per stream. Default 256.
	SSEBuffer int
	// MaxStreams bounds concurrent SSE streams. Default 1000.
	MaxStreams int
	// MaxStreamsPerLender bounds one lender's SSE streams (decisions and
	// dashboard). Default MaxStreams/10, at least 1.
	MaxStreamsPerLender int
	// MaxLongPollsPerLender bounds one lender's waiting decision
	// long-polls. Default 200.
	MaxLongPollsPerLender int
	// ReadHeaderTimeout and ReadTimeout bound reading a request's headers
	// and whole request. Defaults 5s and 15s.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	// ShutdownTimeout bounds graceful shutdown. Default 15s.
	ShutdownTimeout time.Duration
	// RequestTimeout bounds a non-streaming request. Default 10s.
	RequestTimeout time.Duration

	// ReadyGroups are consumer groups /readyz waits for, once, until each
	// is stable with a member owning partitions (loanflow dev: the
	// decisions job's group, so ready means an application gets decided).
	ReadyGroups []string
	// OperatorMetricsURLs are Prometheus endpoints of the pipeline (workers,
	// CDC) shown on the operator page.
	OperatorMetricsURLs []string
	// OperatorGroups are consumer groups whose lag the operator page shows.
	// Empty lists every group.
	OperatorGroups []string
	// OperatorRefreshInterval is how often the operator page's stream
	// sends the pipeline health. Default 2s.
	OperatorRefreshInterval time.Duration

	// Logger; default JSON to stderr.
	Logger *slog.Logger
}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	def := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	if c.Addr == "" {
		c.Addr = "127.0.0.1:8080"
	}
	if c.DBMaxConns == 0 {
		c.DBMaxConns = 20
	}
	if c.ApplicationsTopic == "" {
		c.ApplicationsTopic = "loan_applications"
	}
	if c.DecisionsTopic == "" {
		c.DecisionsTopic = "loan_decisions"
	}
	if c.MetricsTopic == "" {
		c.MetricsTopic = "portfolio_metrics"
	}
	if c.AuditAnchorsTopic == "" {
		c.AuditAnchorsTopic = "audit_anchors"
	}
	def(&c.AuditAnchorInterval, 10*time.Second)
	def(&c.OperatorRefreshInterval, 2*time.Second)
	if c.PublicURL == "" {
		c.PublicURL = "http://" + c.Addr
	}
	if c.Audience == "" {
		c.Audience = "loanflow-api"
	}
	def(&c.JWKSMinRefetchInterval, 30*time.Second)
	def(&c.TokenTTL, 15*time.Minute)
	def(&c.KeyRotationInterval, 24*time.Hour)
	def(&c.ClockSkew, 30*time.Second)
	def(&c.MaxTokenLifetime, time.Hour)
	def(&c.RevocationStaleness, 10*time.Second)
	def(&c.KeysReloadInterval, 10*time.Second)
	def(&c.CacheTTL, 5*time.Minute)
	def(&c.CacheTTLJitter, time.Minute)
	def(&c.RedisTimeout, 50*time.Millisecond)
	def(&c.NearCacheTTL, time.Minute)
	if c.NearCacheSize == 0 {
		c.NearCacheSize = 100000
	}
	def(&c.BreakerOpenTimeout, 2*time.Second)
	def(&c.LongPollMax, 30*time.Second)
	def(&c.EventTimeSkew, time.Hour)
	def(&c.IdempotencyTTL, 24*time.Hour)
	def(&c.ShutdownTimeout, 15*time.Second)
	def(&c.RequestTimeout, 10*time.Second)
	if c.BreakerFailures == 0 {
		c.BreakerFailures = 5
	}
	if c.RateLimitPerSec == 0 {
		c.RateLimitPerSec = 200
	}
	if c.RateLimitBurst == 0 {
		c.RateLimitBurst = 400
	}
	if c.LoginRatePerSec == 0 {
		c.LoginRatePerSec = 1
	}
	if c.LoginBurst == 0 {
		c.LoginBurst = 10
	}
	if c.MaxLenders == 0 {
		c.MaxLenders = 10000
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 64 << 10
	}
	if c.DecisionCacheSize == 0 {
		c.DecisionCacheSize = 100000
	}
	if c.SSEBuffer == 0 {
		c.SSEBuffer = 256
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = 1000
	}
	if c.MaxStreamsPerLender == 0 {
		c.MaxStreamsPerLender = max(1, c.MaxStreams/10)
	}
	if c.MaxLongPollsPerLender == 0 {
		c.MaxLongPollsPerLender = 200
	}
	def(&c.ReadHeaderTimeout, 5*time.Second)
	def(&c.ReadTimeout, 15*time.Second)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first bad field.
func (c *Config) Validate() error {
	var errs []error
	req := func(ok bool, msg string) {
		if !ok {
			errs = append(errs, errors.New("api: "+msg))
		}
	}
	req(c.DatabaseURL != "", "DatabaseURL is required (--database-url or DATABASE_URL)")
	req(c.RedisURL != "", "RedisURL is required (--redis-url or REDIS_URL)")
	req(len(c.KafkaBrokers) > 0, "KafkaBrokers is required (--brokers or LOANFLOW_BROKERS)")
	req(c.SchemaRegistryURL != "", "SchemaRegistryURL is required (--schema-registry or LOANFLOW_SCHEMA_REGISTRY)")
	if _, err := url.Parse(c.PublicURL); err != nil {
		errs = append(errs, fmt.Errorf("api: PublicURL: %w", err))
	}
	req(c.DevIssuer || c.ExternalIssuer != "", "no token issuer: set ExternalIssuer and ExternalJWKSURL (--external-issuer, --external-jwks-url) in production, or DevIssuer (--dev-issuer) to serve the built-in development issuer")
	req(!(c.DevIssuer && c.ExternalIssuer != ""), "DevIssuer and ExternalIssuer exclude each other (--dev-issuer with --external-issuer)")
	req(c.ExternalIssuer == "" || c.ExternalJWKSURL != "", "ExternalJWKSURL is required with ExternalIssuer")
	for _, u := range []string{c.ExternalJWKSURL, c.JWKSURL} {
		if u != "" {
			if err := auth.ValidJWKSURL(u); err != nil {
				errs = append(errs, err)
			}
		}
	}
	req(c.CacheTTL > 0 && c.CacheTTLJitter >= 0, "CacheTTL must be positive and CacheTTLJitter non-negative")
	req(c.RateLimitPerSec > 0 && c.RateLimitBurst > 0, "rate limits must be positive")
	req(c.MaxBodyBytes >= 1024, "MaxBodyBytes must be at least 1024")
	req(c.LongPollMax > 0 && c.LongPollMax <= 5*time.Minute, "LongPollMax must be within (0, 5m]")
	req(c.DBMaxConns > 0, "DBMaxConns must be positive")
	req(c.ClockSkew >= 0 && c.ClockSkew <= 5*time.Minute, "ClockSkew must be within 0..5m")
	req(c.TokenTTL <= c.MaxTokenLifetime, "TokenTTL must not exceed MaxTokenLifetime")
	req(c.RevocationStaleness > 0 && c.RevocationStaleness <= 30*time.Second, "RevocationStaleness must be within (0, 30s]")
	if err := c.PII.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

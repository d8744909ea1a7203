package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/api/pii"
)

func init() { addCommand(newAPICmd) }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// keyFlags are the PII key locations shared by `api` and `keys`.
type keyFlags struct{ dir, kek, data, index string }

func (k *keyFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&k.dir, "keys-dir", envOr("LOANFLOW_KEYS_DIR", ".loanflow/keys"), "directory of the dev stack's key files (env LOANFLOW_KEYS_DIR)")
	f.StringVar(&k.kek, "kek-uri", os.Getenv("LOANFLOW_KEK_URI"), "key-encryption key URI: local-kms://<path>, aws-kms://arn:..., gcp-kms://projects/..., hcvault://host/transit/keys/<name> (env LOANFLOW_KEK_URI; default local-kms://<keys-dir>/kek.json)")
	f.StringVar(&k.data, "data-keyset", os.Getenv("LOANFLOW_DATA_KEYSET"), "wrapped AES-256-GCM keyset file (default <keys-dir>/pii-data.json)")
	f.StringVar(&k.index, "index-keyset", os.Getenv("LOANFLOW_INDEX_KEYSET"), "wrapped HMAC PRF keyset file for SSN blind indexes (default <keys-dir>/pii-index.json)")
}

func (k *keyFlags) config() pii.Config {
	c := pii.Config{KEKURI: k.kek, DataKeysetPath: k.data, IndexKeysetPath: k.index}
	if c.KEKURI == "" {
		c.KEKURI = pii.LocalKMSPrefix + filepath.Join(k.dir, "kek.json")
	}
	if c.DataKeysetPath == "" {
		c.DataKeysetPath = filepath.Join(k.dir, "pii-data.json")
	}
	if c.IndexKeysetPath == "" {
		c.IndexKeysetPath = filepath.Join(k.dir, "pii-index.json")
	}
	return c
}

func newAPICmd() *cobra.Command {
	var cfg api.Config
	var keys keyFlags
	var brokers, metricsURLs, bootstrap string
	var initKeys bool
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Run the HTTP API, the dashboard and (with --dev-issuer) the dev OAuth2 issuer",
		Long: `Runs the Loanflow HTTP API. It applies the database migrations at start
(unless --migrate=false: a separate ` + "`loanflow db migrate`" + ` as the schema owner),
validates tokens of --external-issuer through its JWKS, or with --dev-issuer
those of the built-in development issuer (never the default: without either
the API refuses to start), and shuts down gracefully on SIGINT/SIGTERM.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.KafkaBrokers = splitList(brokers)
			cfg.OperatorMetricsURLs = splitList(metricsURLs)
			cfg.PII = keys.config()
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
			ctx := cmd.Context()
			if initKeys {
				if err := pii.Init(ctx, cfg.PII); err != nil {
					return err
				}
			}
			srv, err := api.New(ctx, cfg, nil)
			if err != nil {
				return err
			}
			defer srv.Close()
			if bootstrap != "" {
				creds, created, err := srv.EnsureAdminClient(ctx, bootstrap)
				if err != nil {
					return err
				}
				if created {
					fmt.Fprintf(cmd.OutOrStdout(), "admin client %s created; secret (shown once): %s\n", creds.ClientID, creds.ClientSecret)
				}
			}
			return srv.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", envOr("LOANFLOW_API_ADDR", "127.0.0.1:8080"), "listen address (env LOANFLOW_API_ADDR)")
	f.StringVar(&cfg.PublicURL, "public-url", os.Getenv("LOANFLOW_PUBLIC_URL"), "URL clients use; the dev issuer's iss (default http://<addr>)")
	f.StringVar(&cfg.DatabaseURL, "database-url", os.Getenv("DATABASE_URL"), "PostgreSQL DSN (env DATABASE_URL)")
	f.StringVar(&cfg.RedisURL, "redis-url", envOr("REDIS_URL", "redis://127.0.0.1:6379/0"), "Redis URL (env REDIS_URL)")
	f.StringVar(&brokers, "brokers", envOr("LOANFLOW_BROKERS", "127.0.0.1:9092"), "Kafka seed brokers, comma-separated (env LOANFLOW_BROKERS)")
	f.StringVar(&cfg.SchemaRegistryURL, "schema-registry", envOr("LOANFLOW_SCHEMA_REGISTRY", "http://127.0.0.1:8081"), "schema registry URL (env LOANFLOW_SCHEMA_REGISTRY)")
	f.BoolVar(&cfg.DevIssuer, "dev-issuer", false, "serve the built-in development OAuth2 issuer (/oauth/token, the dashboard login); without it the API needs --external-issuer and refuses to start")
	f.StringVar(&cfg.ExternalIssuer, "external-issuer", os.Getenv("LOANFLOW_OAUTH_ISSUER"), "accept tokens of this issuer instead of the dev issuer")
	f.StringVar(&cfg.ExternalJWKSURL, "external-jwks-url", os.Getenv("LOANFLOW_OAUTH_JWKS_URL"), "JWKS URL of --external-issuer")
	f.StringVar(&cfg.Audience, "audience", "loanflow-api", "aud this API requires in tokens")
	f.DurationVar(&cfg.TokenTTL, "token-ttl", 15*time.Minute, "lifetime of dev-issued tokens")
	f.DurationVar(&cfg.KeyRotationInterval, "signing-key-rotation", 24*time.Hour, "dev issuer signing-key rotation interval (negative disables)")
	f.Float64Var(&cfg.RateLimitPerSec, "rate-limit-per-sec", 200, "requests per second per lender (a lender row may override)")
	f.IntVar(&cfg.RateLimitBurst, "rate-limit-burst", 400, "burst per lender")
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", 64<<10, "request body limit in bytes")
	f.DurationVar(&cfg.CacheTTL, "cache-ttl", 5*time.Minute, "credit-profile cache TTL")
	f.DurationVar(&cfg.CacheTTLJitter, "cache-ttl-jitter", time.Minute, "random extra TTL per entry")
	f.IntVar(&cfg.NearCacheSize, "near-cache-size", 100000, "credit profiles kept in process in front of Redis, invalidated by Redis client tracking (negative: none)")
	f.DurationVar(&cfg.NearCacheTTL, "near-cache-ttl", time.Minute, "longest a near-cache entry is served without an invalidation")
	f.DurationVar(&cfg.AuditCommitDelay, "audit-commit-delay", 200*time.Microsecond, "under load, audited requests share one audit commit per this long (adds at most this to a read; negative: one commit per round trip)")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "grace period for in-flight requests")
	f.StringVar(&metricsURLs, "pipeline-metrics-urls", os.Getenv("LOANFLOW_PIPELINE_METRICS_URLS"), "Prometheus endpoints of workers and CDC for the operator page, comma separated")
	f.StringVar(&bootstrap, "bootstrap-admin", "", "create this admin client if missing and print its secret once")
	f.StringVar(&cfg.AdminAddr, "admin-addr", os.Getenv("LOANFLOW_API_ADMIN_ADDR"), "serve /metrics, /healthz and /readyz on this separate listener only (recommended in production; env LOANFLOW_API_ADMIN_ADDR)")
	f.StringVar(&cfg.MetricsToken, "metrics-token", os.Getenv("LOANFLOW_METRICS_TOKEN"), "bearer token /metrics requires (env LOANFLOW_METRICS_TOKEN)")
	f.DurationVar(&cfg.MaxTokenLifetime, "max-token-lifetime", time.Hour, "longest token lifetime (exp - iat) accepted from any issuer")
	f.DurationVar(&cfg.RevocationStaleness, "revocation-staleness", 10*time.Second, "how long a disabled client's tokens may keep working (at most 30s)")
	f.StringVar(&cfg.MigrationsDatabaseURL, "migrations-database-url", os.Getenv("MIGRATIONS_DATABASE_URL"), "DSN of the schema owner the migrations run as, when --database-url names the API's least-privileged role (env MIGRATIONS_DATABASE_URL)")
	migrate := f.Bool("migrate", true, "apply the database migrations at start (false: loanflow db migrate ran them as the schema owner, and --database-url may name a role in loanflow_api)")
	cmd.PreRun = func(*cobra.Command, []string) { cfg.SkipMigrations = !*migrate }
	f.BoolVar(&initKeys, "init-keys", false, "create the local KEK and PII keysets if missing (dev)")
	keys.register(cmd)
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

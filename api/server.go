package api

import (
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/auth"
	"github.com/loanflow/loanflow/api/migrations"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/internal/batch"
	"github.com/loanflow/loanflow/internal/buildinfo"
)

//go:embed web/*.html
var webFS embed.FS

// Server is the Loanflow HTTP API. New connects it; Run serves until its
// context ends, then shuts down gracefully; Close releases the rest.
type Server struct {
	cfg       Config
	log       *slog.Logger
	pool      *pgxpool.Pool
	store     *store
	redis     *redis.Client
	near      *nearCache // nil: no near cache
	breaker   *gobreaker.CircuitBreaker[[]byte]
	flight    singleflight.Group
	loads     *batch.Batcher[string, CreditProfile] // PostgreSQL loads of cache misses, many per query
	gets      *batch.Batcher[string, []byte]        // Redis GETs, many per MGET
	sets      *batch.Batcher[cacheEntry, struct{}]  // Redis SETs, many per pipeline
	named     *batch.Batcher[string, namedCustomer] // the customers applications name, many per query
	keys      *pii.Keyring
	issuer    *auth.Issuer
	validator *auth.Validator
	audit     *audit.Journal // the keyed chain's only writer: reads' group commit, and chains what writes queue
	producer  *kgo.Client
	ready     pipelineReady
	consumer  *kgo.Client
	codecs    Codecs
	hub       *hub
	limits    limiters
	streams   *semaphore.Weighted
	rels      relCache    // lender-customer relationships found
	revoked   revocations // disabled clients, bounded staleness
	logins    loginLimits // credential endpoints' throttle
	anchors   anchorState // last audit head anchored
	health    healthCache // the operator pages' shared health report
	// lenderStreams and lenderPolls cap each lender's SSE streams and
	// long-polls.
	lenderStreams lenderSlots
	lenderPolls   lenderSlots
	registry      *prometheus.Registry
	metrics       *metrics
	badRecords    prometheus.Counter
	handler       http.Handler

	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // background loops
	bgCancel  context.CancelFunc
}

// New validates cfg, applies the migrations and connects PostgreSQL, Redis
// and Kafka. codecs may be nil, in which case the Avro serde of package
// schemas is used through cfg.SchemaRegistryURL.
func New(ctx context.Context, cfg Config, codecs Codecs) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, closing: make(chan struct{}), codecs: codecs}
	if err := s.connect(ctx); err != nil {
		s.Close()
		return nil, err
	}
	s.handler = s.routes()
	bg, cancel := context.WithCancel(context.Background())
	s.bgCancel = cancel
	s.start(bg, s.runHub)
	s.start(bg, s.reloadKeys)
	s.start(bg, s.rotateSigningKeys)
	s.start(bg, s.anchorLoop)
	s.start(bg, s.expireIdempotencyKeys)
	if s.near != nil {
		s.start(bg, s.near.run)
	}
	return s, nil
}

func (s *Server) start(ctx context.Context, fn func(context.Context)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn(ctx)
	}()
}

func (s *Server) connect(ctx context.Context) error {
	mdsn := s.cfg.MigrationsDatabaseURL
	if mdsn == "" {
		mdsn = s.cfg.DatabaseURL
	}
	if !s.cfg.SkipMigrations {
		if _, err := migrations.Up(ctx, mdsn); err != nil {
			return err
		}
	}
	pcfg, err := pgxpool.ParseConfig(s.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("api: parsing DatabaseURL: %w", err)
	}
	pcfg.MaxConns = s.cfg.DBMaxConns
	if s.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return fmt.Errorf("api: connecting to PostgreSQL: %w", err)
	}
	s.store = &store{pool: s.pool}
	s.rels.max = max(s.cfg.MaxLenders*10, 100000)
	if err := s.connectRedis(); err != nil {
		return err
	}
	s.startBatchers()
	if s.keys, err = pii.Open(ctx, s.cfg.PII); err != nil {
		return err
	}
	if err := s.setupAuth(); err != nil {
		return err
	}
	s.registry = prometheus.NewRegistry()
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.Collector())
	s.metrics = newMetrics(s.registry)
	s.badRecords = prometheus.NewCounter(prometheus.CounterOpts{Name: "loanflow_api_undecodable_records_total", Help: "Topic records the API could not decode."})
	s.registry.MustRegister(s.badRecords)
	s.breaker = newBreaker(&s.cfg, s.metrics)
	s.hub = newHub(s.cfg.DecisionCacheSize, s.cfg.MaxLenders)
	s.streams = semaphore.NewWeighted(int64(s.cfg.MaxStreams))
	s.lenderStreams.max, s.lenderPolls.max = s.cfg.MaxStreamsPerLender, s.cfg.MaxLongPollsPerLender
	commits := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "loanflow_api_audit_commit_seconds",
		Help:    "Time of the audit journal's append statement and commit for a batch of audited reads (what each read waits for, after the commit delay).",
		Buckets: []float64{.0001, .00025, .0005, .00075, .001, .0015, .002, .003, .005, .0075, .01, .025, .05, .1, .5, 1}})
	s.registry.MustRegister(commits)
	s.audit = audit.NewJournal(s.pool, s.keys, audit.JournalConfig{CommitDelay: s.cfg.AuditCommitDelay,
		OnCommit: func(_ int, took time.Duration) { commits.Observe(took.Seconds()) },
		OnError:  func(err error) { s.log.Error("audit journal", "err", err) }})
	if s.near != nil {
		s.registry.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "loanflow_api_profile_near_cache_hits_total",
				Help: "Credit-profile cache hits answered from the in-process near cache without a Redis round trip (part of loanflow_api_profile_cache_total{result=\"hit\"})."},
				func() float64 { return float64(s.near.hits.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "loanflow_api_profile_near_cache_live",
				Help: "1 while the near cache receives Redis invalidations and serves; 0 while it is bypassed (connection lost)."},
				func() float64 {
					if s.near.live.Load() {
						return 1
					}
					return 0
				}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "loanflow_api_profile_near_cache_entries",
				Help: "Credit profiles in the near cache."},
				func() float64 { return float64(s.near.size()) }))
	}
	for _, b := range []struct {
		path  string
		stats func() (int64, int64)
	}{{"postgres_load", s.loads.Stats}, {"redis_get", s.gets.Stats}, {"redis_set", s.sets.Stats}, {"postgres_named_customer", s.named.Stats}} {
		stats := b.stats
		s.registry.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "loanflow_api_profile_batches_total",
				Help:        "Batched round trips of the credit-profile path and of applications' named-customer check (calls ÷ batches: how many lookups shared one).",
				ConstLabels: prometheus.Labels{"path": b.path}},
				func() float64 { n, _ := stats(); return float64(n) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "loanflow_api_profile_batched_calls_total",
				Help:        "Calls carried by the batched round trips (credit profiles; applications' named customers).",
				ConstLabels: prometheus.Labels{"path": b.path}},
				func() float64 { _, n := stats(); return float64(n) }))
	}
	s.registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "loanflow_api_audit_batches_total",
			Help: "Transactions the audit journal committed to the keyed chain (a group commit each)."},
			func() float64 { b, _ := s.audit.Stats(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "loanflow_api_audit_queued",
			Help: "Audited requests waiting for the audit journal to take them into a batch."},
			func() float64 { return float64(s.audit.Queued()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "loanflow_api_audit_rows_total",
			Help: "Rows the audit journal appended to the keyed chain (rows ÷ batches: the group commit's batch size)."},
			func() float64 { _, r := s.audit.Stats(); return float64(r) }))
	return s.connectKafka(ctx)
}

func (s *Server) connectRedis() error {
	opts, err := redis.ParseURL(s.cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("api: parsing RedisURL: %w", err)
	}
	opts.DialTimeout = 200 * time.Millisecond
	opts.ReadTimeout = s.cfg.RedisTimeout
	opts.WriteTimeout = s.cfg.RedisTimeout
	opts.MaxRetries = -1 // the breaker, not retries, handles an outage
	opts.PoolSize = 64
	s.redis = redis.NewClient(opts)
	if s.cfg.NearCacheSize > 0 {
		s.near = newNearCache(s.redis.Options(), s.cfg.NearCacheSize, s.cfg.NearCacheTTL, s.log)
	}
	return nil
}

func (s *Server) setupAuth() error {
	var err error
	if s.cfg.DevIssuer {
		s.issuer, err = auth.NewIssuer(auth.IssuerConfig{Issuer: s.cfg.PublicURL, TokenTTL: s.cfg.TokenTTL})
		if err != nil {
			return err
		}
	}
	vc := auth.ValidatorConfig{Issuer: s.cfg.PublicURL, Audience: s.cfg.Audience, Skew: s.cfg.ClockSkew, MaxLifetime: s.cfg.MaxTokenLifetime,
		CacheMaxAge: s.cfg.RevocationStaleness}
	switch {
	case s.cfg.ExternalIssuer != "":
		vc.Issuer = s.cfg.ExternalIssuer
		vc.Keys = &auth.HTTPKeySource{URL: s.cfg.ExternalJWKSURL, MinRefetchInterval: s.cfg.JWKSMinRefetchInterval}
	case s.cfg.JWKSURL != "":
		vc.Keys = &auth.HTTPKeySource{URL: s.cfg.JWKSURL, MinRefetchInterval: s.cfg.JWKSMinRefetchInterval}
	default:
		vc.Keys = s.issuer
	}
	s.validator, err = auth.NewValidator(vc)
	return err
}

func (s *Server) connectKafka(ctx context.Context) error {
	var err error
	if s.codecs == nil {
		if s.codecs, err = NewAvroCodecs(ctx, s.cfg.SchemaRegistryURL, s.cfg.ApplicationsTopic, s.cfg.DecisionsTopic, s.cfg.MetricsTopic); err != nil {
			return err
		}
	}
	s.producer, err = kgo.NewClient(kgo.SeedBrokers(s.cfg.KafkaBrokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(0), kgo.RecordDeliveryTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("api: Kafka producer: %w", err)
	}
	s.ensureAnchorsTopic(ctx)
	s.consumer, err = kgo.NewClient(kgo.SeedBrokers(s.cfg.KafkaBrokers...),
		kgo.ConsumeTopics(s.cfg.DecisionsTopic, s.cfg.MetricsTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.MetadataMinAge(time.Second))
	if err != nil {
		return fmt.Errorf("api: Kafka consumer: %w", err)
	}
	return nil
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	p := func(scope string, h http.HandlerFunc) http.HandlerFunc { return s.protect(route{scope: scope}, h) }
	mux.HandleFunc("GET /v1/credit-profiles/{id}", p(auth.ScopeCreditRead, s.getCreditProfile))
	mux.HandleFunc("POST /v1/loans", p(auth.ScopeLoansWrite, s.createLoan))
	mux.HandleFunc("PATCH /v1/loans/{id}", p(auth.ScopeLoansWrite, s.patchLoan))
	mux.HandleFunc("GET /v1/loans", p(auth.ScopeLoansWrite, s.listLoans))
	mux.HandleFunc("GET /v1/loans/{id}", p(auth.ScopeLoansWrite, s.getLoan))
	mux.HandleFunc("POST /v1/loan-applications", p(auth.ScopeApplicationsWrite, s.postApplication))
	mux.HandleFunc("GET /v1/loan-applications/{id}/decision", s.protect(route{scope: auth.ScopeApplicationsWrite, stream: true}, s.getDecision))
	mux.HandleFunc("GET /v1/decisions/stream", s.protect(route{scope: auth.ScopeApplicationsWrite, stream: true}, s.streamDecisions))
	mux.HandleFunc("GET /v1/decisions/ws", s.protect(route{scope: auth.ScopeApplicationsWrite, stream: true}, s.decisionsWS))
	mux.HandleFunc("GET /v1/portfolio", p(auth.ScopePortfolioRead, s.getPortfolio))
	mux.HandleFunc("POST /v1/customers", p(auth.ScopeAdmin, s.postCustomer))
	mux.HandleFunc("POST /v1/admin/lenders", p(auth.ScopeAdmin, s.postLender))
	mux.HandleFunc("POST /v1/admin/clients", p(auth.ScopeAdmin, s.postClient))
	mux.HandleFunc("POST /v1/admin/clients/{id}/disable", p(auth.ScopeAdmin, s.postDisableClient))
	mux.HandleFunc("GET /v1/admin/lenders", p(auth.ScopeAdmin, s.listLenders))
	mux.HandleFunc("GET /v1/admin/clients", p(auth.ScopeAdmin, s.listClients))
	mux.HandleFunc("POST /v1/admin/clients/{id}/revoke", p(auth.ScopeAdmin, s.revokeClient))
	mux.HandleFunc("POST /v1/admin/lenders/{id}/revoke", p(auth.ScopeAdmin, s.revokeLender))
	mux.HandleFunc("GET /v1/admin/pipeline-health", p(auth.ScopeAdmin, s.getHealth))
	mux.HandleFunc("GET /dashboard", s.dashboardPage)
	mux.HandleFunc("POST /dashboard/login", s.dashboardLogin)
	mux.HandleFunc("GET /dashboard/events", s.protect(route{scope: auth.ScopePortfolioRead, cookieOK: true, stream: true}, s.dashboardEvents))
	mux.HandleFunc("GET /operator", s.operatorPage)
	mux.HandleFunc("GET /operator/events", s.protect(route{scope: auth.ScopeAdmin, cookieOK: true, stream: true}, s.operatorEvents))
	mux.HandleFunc("GET /session", s.protect(route{cookieOK: true}, s.getSession))
	mux.HandleFunc("POST /logout", s.logout)
	if s.issuer != nil {
		mux.HandleFunc("POST /oauth/token", s.token)
		mux.HandleFunc("GET /.well-known/jwks.json", s.jwks)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.cfg.AdminAddr == "" {
		mux.Handle("GET /metrics", s.metricsHandler())
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, http.StatusNotFound, "not-found", "no such route")
	})
	return s.instrument(mux)
}

// metricsHandler serves the Prometheus registry, behind MetricsToken when
// one is set.
func (s *Server) metricsHandler() http.Handler {
	h := promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{})
	if s.cfg.MetricsToken == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.MetricsToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="loanflow-metrics"`)
			writeProblem(w, r, http.StatusUnauthorized, "unauthorized", "the metrics endpoint needs its bearer token (--metrics-token)")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// AdminHandler serves /metrics, /healthz and /readyz for the admin
// listener (Config.AdminAddr): operational endpoints off the public one.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	return mux
}

// readyz reports ready when PostgreSQL and Kafka answer; Redis being down
// degrades (lookups fall back to PostgreSQL) but does not fail readiness.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	out := map[string]string{"postgres": "ok", "kafka": "ok", "redis": "ok"}
	code := http.StatusOK
	if err := s.pool.Ping(ctx); err != nil {
		out["postgres"], code = "down", http.StatusServiceUnavailable
	}
	if err := s.producer.Ping(ctx); err != nil {
		out["kafka"], code = "down", http.StatusServiceUnavailable
	}
	if err := s.redis.Ping(ctx).Err(); err != nil {
		out["redis"] = "degraded: serving from PostgreSQL"
	}
	if code == http.StatusOK {
		if ok, why := s.pipelineReady(ctx); !ok {
			out["pipeline"], code = why, http.StatusServiceUnavailable
		} else {
			out["pipeline"] = "ok"
		}
	}
	if code != http.StatusOK {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, code, out)
}

// Handler is the API's HTTP handler (for tests and embedding).
func (s *Server) Handler() http.Handler { return s.handler }

// Registry is the server's Prometheus registry.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Pool is the server's PostgreSQL pool.
func (s *Server) Pool() *pgxpool.Pool { return s.pool }

// FlushAudit links every audit entry queued so far (loan updates queue
// theirs in audit_pending; the server chains them within milliseconds)
// into the audit_log chain.
func (s *Server) FlushAudit(ctx context.Context) error { return s.audit.Flush(ctx) }

// Issuer is the dev issuer (nil when an external issuer is configured).
func (s *Server) Issuer() *auth.Issuer { return s.issuer }

// Keys is the PII keyring.
func (s *Server) Keys() *pii.Keyring { return s.keys }

// Serve serves on ln until ctx ends, then shuts down gracefully: it stops
// accepting, ends streams and long-polls, and waits up to ShutdownTimeout
// for in-flight requests.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// Every request must arrive and be answered in bounded time: a client
	// that announces a body and never sends it holds its connection for
	// ReadTimeout at most. Streams and long-polls lift the deadlines for
	// themselves (extendDeadlines), within their per-lender caps.
	hs := &http.Server{Handler: s.handler, ReadHeaderTimeout: s.cfg.ReadHeaderTimeout, ReadTimeout: s.cfg.ReadTimeout,
		WriteTimeout: s.cfg.RequestTimeout + 5*time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	hs.RegisterOnShutdown(s.signalClosing)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("api: serving: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("api: shutting down: %w", err)
	}
	return nil
}

// Run listens on cfg.Addr and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("api: listening on %s: %w", s.cfg.Addr, err)
	}
	s.log.Info("api listening", "addr", ln.Addr().String(), "public_url", s.cfg.PublicURL)
	if s.cfg.AdminAddr != "" {
		aln, err := net.Listen("tcp", s.cfg.AdminAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("api: listening on the admin address %s: %w", s.cfg.AdminAddr, err)
		}
		s.log.Info("api admin listening (metrics, health)", "addr", aln.Addr().String())
		ahs := &http.Server{Handler: s.AdminHandler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
		go func() { _ = ahs.Serve(aln) }()
		defer ahs.Close()
	}
	return s.Serve(ctx, ln)
}

func (s *Server) signalClosing() { s.closeOnce.Do(func() { close(s.closing) }) }

// Close stops background loops and releases connections. Call after Serve
// returned.
func (s *Server) Close() {
	s.signalClosing()
	if s.bgCancel != nil {
		s.bgCancel()
	}
	s.wg.Wait()
	if s.audit != nil {
		s.audit.Close()
	}
	for _, c := range []*kgo.Client{s.consumer, s.producer} {
		if c != nil {
			c.Close()
		}
	}
	if s.loads != nil {
		s.loads.Close()
		s.named.Close()
	}
	if s.gets != nil {
		s.gets.Close()
		s.sets.Close()
	}
	if s.redis != nil {
		_ = s.redis.Close()
	}
	if s.pool != nil {
		s.pool.Close()
	}
}

func (s *Server) reloadKeys(ctx context.Context) {
	t := time.NewTicker(s.cfg.KeysReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if ok, err := s.keys.Reload(); err != nil {
				s.log.Error("reloading PII keysets", "err", err)
			} else if ok {
				s.log.Info("PII keysets reloaded", "primary_key_id", s.keys.PrimaryKeyID())
			}
		}
	}
}

func (s *Server) rotateSigningKeys(ctx context.Context) {
	if s.issuer == nil || s.cfg.KeyRotationInterval < 0 {
		return
	}
	t := time.NewTicker(s.cfg.KeyRotationInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if kid, err := s.issuer.Rotate(); err != nil {
				s.log.Error("rotating signing key", "err", err)
			} else {
				s.log.Info("signing key rotated", "kid", kid)
			}
		}
	}
}

var _ = errors.New

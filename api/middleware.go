package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/loanflow/loanflow/api/auth"
)

type ctxKey int

const (
	ctxRequestID ctxKey = iota
	ctxPrincipal
)

func requestID(ctx context.Context) string {
	s, _ := ctx.Value(ctxRequestID).(string)
	return s
}

func principalOf(ctx context.Context) (auth.Principal, bool) {
	p, ok := ctx.Value(ctxPrincipal).(auth.Principal)
	return p, ok
}

func newRequestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// statusRecorder captures the status code for metrics and logs.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// metrics are the RED metrics per route.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	cache    *prometheus.CounterVec
	breaker  prometheus.Gauge
	limited  prometheus.Counter
	dbLoads  prometheus.Counter
	// auditWait is what an audited request waits for its audit row: the
	// journal's queue, its commit delay and the commit.
	auditWait prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loanflow_api_requests_total", Help: "HTTP requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "loanflow_api_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.0005, .001, .002, .003, .004, .005, .0075, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"route", "method"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loanflow_api_profile_cache_total", Help: "Credit-profile cache lookups by result (hit, miss, bypass, error).",
		}, []string{"result"}),
		breaker: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loanflow_api_redis_breaker_state", Help: "Redis circuit breaker: 0 closed, 1 half-open, 2 open.",
		}),
		limited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loanflow_api_rate_limited_total", Help: "Requests refused with 429.",
		}),
		dbLoads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "loanflow_api_profile_db_loads_total", Help: "Credit profiles loaded from PostgreSQL (coalesced misses).",
		}),
		auditWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "loanflow_api_audit_wait_seconds",
			Help:    "Time an audited request waited for its durable audit row (the journal's queue, commit delay and commit).",
			Buckets: []float64{.00025, .0005, .00075, .001, .0015, .002, .003, .004, .005, .0075, .01, .025, .05, .1, .5, 1},
		}),
	}
	reg.MustRegister(m.requests, m.duration, m.cache, m.breaker, m.limited, m.dbLoads, m.auditWait)
	return m
}

// instrument wraps the whole mux: request id, recovery, RED metrics, log.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if !validID(id) { // it goes to logs, audit rows and responses
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		securityHeaders(w.Header())
		r = r.WithContext(context.WithValue(r.Context(), ctxRequestID, id))
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("handler panic", "route", r.Pattern, "request_id", id, "panic", v)
				if rec.status == 0 {
					writeProblem(rec, r, http.StatusInternalServerError, "internal", "internal error")
				}
			}
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			code := rec.status
			if code == 0 {
				code = http.StatusOK
			}
			s.metrics.requests.WithLabelValues(route, r.Method, strconv.Itoa(code)).Inc()
			s.metrics.duration.WithLabelValues(route, r.Method).Observe(time.Since(start).Seconds())
			level := slog.LevelDebug
			if code >= 500 {
				level = slog.LevelWarn
			}
			if s.log.Enabled(r.Context(), level) { // no argument boxing per request when off
				s.log.Log(r.Context(), level, "request", "route", route, "method", r.Method, "status", code,
					"request_id", id, "duration_ms", time.Since(start).Milliseconds())
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// bearer extracts the bearer token from the Authorization header, or from
// the dashboard cookie when cookieOK.
func bearer(r *http.Request, cookieOK bool) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			return strings.TrimSpace(h[7:])
		}
		return ""
	}
	if cookieOK {
		if c, err := r.Cookie(dashboardCookie); err == nil {
			return c.Value
		}
	}
	return ""
}

// route describes how a handler is protected.
type route struct {
	scope    string // required scope; "" for any authenticated caller
	cookieOK bool   // accept the dashboard cookie
	stream   bool   // long-lived (no request timeout)
}

// protect authenticates, authorizes the scope, rate-limits per lender,
// limits the body and bounds the request time.
func (s *Server) protect(rt route, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok := bearer(r, rt.cookieOK)
		if tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="loanflow"`)
			writeProblem(w, r, http.StatusUnauthorized, "unauthorized", "a bearer access token is required")
			return
		}
		p, err := s.authenticate(r.Context(), tok)
		if err != nil && !errors.Is(err, auth.ErrUnauthorized) && !errors.Is(err, errRevoked) {
			s.log.Error("authenticating", "request_id", requestID(r.Context()), "err", err)
			w.Header().Set("Retry-After", "1")
			writeProblem(w, r, http.StatusServiceUnavailable, "auth-unavailable", "the token could not be checked; retry")
			return
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="loanflow", error="invalid_token"`)
			writeProblem(w, r, http.StatusUnauthorized, "unauthorized", "invalid access token")
			return
		}
		if rt.scope != "" && !p.Has(rt.scope) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="loanflow", error="insufficient_scope", scope="`+rt.scope+`"`)
			writeProblem(w, r, http.StatusForbidden, "insufficient-scope", "this route needs scope "+rt.scope)
			return
		}
		if wait, ok := s.limits.allow(r.Context(), p.Lender, s); !ok {
			s.metrics.limited.Inc()
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			writeProblem(w, r, http.StatusTooManyRequests, "rate-limited", "rate limit exceeded for this lender")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		// Every authenticated answer may carry credit data: no cache
		// (browser, proxy or CDN) may keep it.
		w.Header().Set("Cache-Control", "no-store")
		ctx := context.WithValue(r.Context(), ctxPrincipal, p)
		if !rt.stream {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, s.cfg.RequestTimeout)
			defer cancel()
		}
		h(w, r.WithContext(ctx))
	}
}

// limiters holds one token bucket per lender, bounded by MaxLenders.
type limiters struct {
	mu struct {
		sync.Mutex
		m map[string]*rate.Limiter
	}
}

func (l *limiters) allow(ctx context.Context, lender string, s *Server) (time.Duration, bool) {
	key := lender
	if key == "" {
		key = "_operator"
	}
	lim := l.get(ctx, key, s)
	res := lim.Reserve()
	if !res.OK() {
		return time.Second, false
	}
	if d := res.Delay(); d > 0 {
		res.Cancel()
		return d, false
	}
	return 0, true
}

func (l *limiters) get(ctx context.Context, key string, s *Server) *rate.Limiter {
	l.mu.Lock()
	lim, ok := l.mu.m[key]
	l.mu.Unlock()
	if ok {
		return lim
	}
	rps, burst := s.cfg.RateLimitPerSec, s.cfg.RateLimitBurst
	if r, b, err := s.store.lenderLimits(ctx, key); err == nil {
		rps, burst = r, b
	}
	lim = rate.NewLimiter(rate.Limit(rps), burst)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.m == nil || len(l.mu.m) >= s.cfg.MaxLenders {
		l.mu.m = make(map[string]*rate.Limiter) // bounded: start over
	}
	if cur, ok := l.mu.m[key]; ok {
		return cur
	}
	l.mu.m[key] = lim
	return lim
}

// isTooLarge reports whether err came from the body size limit.
func isTooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

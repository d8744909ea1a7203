package bureau

import (
	wire "github.com/loanflow/loanflow/connectors/bureau"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Sentinel errors, shared with the client.
var (
	ErrConfig      = wire.ErrConfig
	ErrUnavailable = wire.ErrUnavailable
	ErrRejected    = wire.ErrRejected
)

// Outcomes, the label of the simulator's metrics.
const (
	outcomeOK         = "ok"
	outcomeNoFile     = "no_file"
	outcomeError      = "error"
	outcomeTimeout    = "timeout"
	outcomeBadRequest = "bad_request"
	outcomeThrottled  = "throttled"
	outcomeCancelled  = "cancelled"
)

// Server is the credit-bureau simulator.
type Server struct {
	cfg      Config
	mux      *http.ServeMux
	metrics  *serverMetrics
	inFlight atomic.Int64
	stopping chan struct{}
	stopOnce sync.Once
	ready    chan struct{}
	addr     atomic.Value // string

	rngMu sync.Mutex
	rng   *rand.Rand // guarded by rngMu
}

type serverMetrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight prometheus.Gauge
}

func newServerMetrics(extra prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loanflow_bureau_requests_total", Help: "Credit-report requests by outcome.",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "loanflow_bureau_request_duration_seconds", Help: "Time to answer a credit-report request, by outcome.",
			Buckets: []float64{.005, .01, .05, .1, .2, .5, 1, 2, 5, 10, 30},
		}, []string{"outcome"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loanflow_bureau_in_flight_requests", Help: "Credit-report requests being served.",
		}),
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.inFlight} {
		m.reg.MustRegister(c)
		if extra != nil {
			if err := extra.Register(c); err != nil {
				return nil, fmt.Errorf("bureau: registering metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New returns a simulator for cfg; it serves nothing until Run or Serve.
func New(cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newServerMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	seed := uint64(cfg.Seed)
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	s := &Server{cfg: cfg, metrics: m, stopping: make(chan struct{}), ready: make(chan struct{}),
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST /v1/credit-reports", s.creditReport)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return s, nil
}

// Handler is the simulator's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Ready is closed once the server listens.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the address the server listens on, once Ready.
func (s *Server) Addr() string {
	a, _ := s.addr.Load().(string)
	return a
}

// URL is the base URL of the server, once Ready.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Run listens on Config.Listen and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("bureau: listening on %s: %w (is another bureau running? pick another address with --listen)", s.cfg.Listen, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends, then drains requests (hanging ones are
// released at once) for at most ShutdownTimeout. It closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	s.addr.Store(ln.Addr().String())
	close(s.ready)
	s.cfg.Logger.Info("credit bureau simulator listening", "url", s.URL())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("bureau: serving: %w", err)
	case <-ctx.Done():
	}
	s.stopOnce.Do(func() { close(s.stopping) })
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("bureau: shutting down: %w", err)
	}
	return nil
}

// fate is what the simulator does with one request.
type fate struct {
	latency time.Duration
	fail    bool // 503
	hang    bool // 504 after Hang
}

func (s *Server) draw() fate {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	var f fate
	u := s.rng.Float64()
	f.fail = u < s.cfg.ErrorRate
	f.hang = !f.fail && u < s.cfg.ErrorRate+s.cfg.TimeoutRate
	lo, hi := s.cfg.LatencyMin, s.cfg.LatencyMax
	switch {
	case hi == lo:
		f.latency = lo
	case s.cfg.LatencyDistribution == LogNormal && lo > 0:
		mu := (math.Log(float64(lo)) + math.Log(float64(hi))) / 2
		sigma := (math.Log(float64(hi)) - math.Log(float64(lo))) / 4 // ±2σ spans the range
		f.latency = time.Duration(math.Exp(mu + sigma*s.rng.NormFloat64()))
		f.latency = min(max(f.latency, lo), hi)
	default:
		f.latency = lo + time.Duration(s.rng.Int64N(int64(hi-lo)+1))
	}
	return f
}

func (s *Server) creditReport(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	outcome := s.serveReport(w, r)
	s.metrics.requests.WithLabelValues(outcome).Inc()
	s.metrics.duration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
}

// serveReport answers one request and returns its outcome.
func (s *Server) serveReport(w http.ResponseWriter, r *http.Request) string {
	if n := s.inFlight.Add(1); n > int64(s.cfg.MaxInFlight) {
		s.inFlight.Add(-1)
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, http.StatusTooManyRequests, "too-many-requests", fmt.Sprintf("more than %d requests in flight", s.cfg.MaxInFlight))
		return outcomeThrottled
	}
	s.metrics.inFlight.Inc()
	defer func() { s.inFlight.Add(-1); s.metrics.inFlight.Dec() }()
	req, err := s.decode(w, r)
	if err != nil {
		writeProblem(w, r, http.StatusBadRequest, "invalid-request", err.Error())
		return outcomeBadRequest
	}
	f := s.draw()
	wait := f.latency
	if f.hang {
		wait = s.cfg.Hang
	}
	if !s.sleep(r.Context(), wait) {
		if r.Context().Err() == nil { // the server is stopping
			w.Header().Set("Retry-After", "1")
			writeProblem(w, r, http.StatusServiceUnavailable, "shutting-down", "the bureau is shutting down; retry")
			return outcomeError
		}
		return outcomeCancelled
	}
	switch {
	case f.hang:
		writeProblem(w, r, http.StatusGatewayTimeout, "timeout", "the bureau's upstream did not answer in time")
		return outcomeTimeout
	case f.fail:
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, http.StatusServiceUnavailable, "unavailable", "simulated bureau outage; retry")
		return outcomeError
	}
	rep := s.report(req)
	writeJSON(w, http.StatusOK, rep)
	if !rep.Hit {
		return outcomeNoFile
	}
	return outcomeOK
}

// sleep waits d; false when the client left or the server is stopping.
func (s *Server) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.stopping:
		return false
	}
}

func (s *Server) decode(w http.ResponseWriter, r *http.Request) (Request, error) {
	var req Request
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("the body must be one JSON object {application_id, ssn_index (base64), permissible_purpose}: %v", err)
	}
	switch {
	case len(req.SSNIndex) < 16 || len(req.SSNIndex) > 64:
		return req, fmt.Errorf("ssn_index must be the base64 blind index of the SSN (16 to 64 bytes), got %d bytes; plaintext SSNs are never accepted", len(req.SSNIndex))
	case !permissiblePurposes[req.PermissiblePurpose]:
		return req, fmt.Errorf("permissible_purpose %q is not one of %s", req.PermissiblePurpose, purposeList())
	case req.ApplicationID == "" || len(req.ApplicationID) > 128:
		return req, errors.New("application_id is required (at most 128 characters)")
	}
	return req, nil
}

// report is the deterministic answer for an inquiry.
func (s *Server) report(req Request) Report {
	hit, score, reasons := fileOf(req.SSNIndex, s.cfg.NoFileRate)
	return Report{ResponseID: responseID(req), Hit: hit, Score: score, ReasonCodes: reasons, GeneratedAt: time.Now().UTC()}
}

var permissiblePurposes = wire.PermissiblePurposes

func purposeList() string { return wire.PurposeList() }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeProblem writes an RFC 9457 problem+json error.
func writeProblem(w http.ResponseWriter, r *http.Request, status int, kind, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type": "https://loanflow.dev/problems/bureau-" + kind, "title": http.StatusText(status),
		"status": status, "detail": detail, "instance": strings.TrimSpace(r.URL.Path),
	})
}

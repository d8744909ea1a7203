package bureau

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Latency distributions.
const (
	// Uniform draws latencies uniformly from [LatencyMin, LatencyMax].
	Uniform = "uniform"
	// LogNormal draws from a log-normal distribution whose median is the
	// geometric mean of LatencyMin and LatencyMax, clamped to the range:
	// most calls are quick, a tail is slow, as real bureaus are.
	LogNormal = "lognormal"
)

// Config configures the simulator. The zero value is usable: defaults fill
// every field.
type Config struct {
	// Listen is the HTTP listen address. Default 127.0.0.1:8090; port 0
	// picks a free port (see Server.Addr).
	Listen string
	// LatencyMin and LatencyMax bound the simulated processing time of a
	// request. Defaults 200ms and 2s.
	LatencyMin time.Duration
	LatencyMax time.Duration
	// LatencyDistribution is Uniform (default) or LogNormal.
	LatencyDistribution string
	// ErrorRate is the fraction of requests answered 503 Service
	// Unavailable after their latency, in [0, 1]. Default 0.01; a negative
	// value means 0.
	ErrorRate float64
	// TimeoutRate is the fraction of requests that hang: they answer 504
	// only after Hang, unless the client gives up first. Default 0.005; a
	// negative value means 0.
	TimeoutRate float64
	// Hang is how long a hanging request hangs. Default 30s.
	Hang time.Duration
	// NoFileRate is the fraction of applicants (decided by a hash of their
	// SSN index, so always the same ones) for whom the bureau has no credit
	// file. Default 0.03; a negative value means 0.
	NoFileRate float64
	// MaxInFlight bounds the requests being served at once; beyond it the
	// simulator answers 429 at once. Default 10000.
	MaxInFlight int
	// MaxBodyBytes bounds a request body. Default 64 KiB.
	MaxBodyBytes int64
	// Seed seeds the draws of latency, errors and hangs; 0 seeds from the
	// clock. Scores never depend on it.
	Seed int64
	// ShutdownTimeout bounds draining requests on stop. Default 5s.
	ShutdownTimeout time.Duration
	// Registerer also receives the simulator's metrics, which GET /metrics
	// always serves; nil registers them nowhere else.
	Registerer prometheus.Registerer
	// Logger receives operational logs. Default slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with zero fields defaulted.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8090"
	}
	if c.LatencyMin == 0 && c.LatencyMax == 0 {
		c.LatencyMin, c.LatencyMax = 200*time.Millisecond, 2*time.Second
	}
	if c.LatencyDistribution == "" {
		c.LatencyDistribution = Uniform
	}
	c.ErrorRate = rateDefault(c.ErrorRate, 0.01)
	c.TimeoutRate = rateDefault(c.TimeoutRate, 0.005)
	c.NoFileRate = rateDefault(c.NoFileRate, 0.03)
	if c.Hang == 0 {
		c.Hang = 30 * time.Second
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 10000
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 64 << 10
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// rateDefault maps 0 to the default and a negative rate to 0 (so "no
// errors" can be said explicitly).
func rateDefault(v, def float64) float64 {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// Validate reports what is wrong with c (after defaults), with the fix.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("%w: listen %q: %v (want host:port, e.g. 127.0.0.1:8090)", ErrConfig, c.Listen, err))
	}
	if c.LatencyMin < 0 || c.LatencyMax < c.LatencyMin {
		errs = append(errs, fmt.Errorf("%w: latency range [%v, %v]: want 0 <= latency_min <= latency_max", ErrConfig, c.LatencyMin, c.LatencyMax))
	}
	if c.LatencyDistribution != Uniform && c.LatencyDistribution != LogNormal {
		errs = append(errs, fmt.Errorf("%w: latency distribution %q: want %q or %q", ErrConfig, c.LatencyDistribution, Uniform, LogNormal))
	}
	for name, r := range map[string]float64{"error_rate": c.ErrorRate, "timeout_rate": c.TimeoutRate, "no_file_rate": c.NoFileRate} {
		if r > 1 {
			errs = append(errs, fmt.Errorf("%w: %s %v: want a fraction in [0, 1]", ErrConfig, name, r))
		}
	}
	if c.ErrorRate+c.TimeoutRate > 1 {
		errs = append(errs, fmt.Errorf("%w: error_rate + timeout_rate = %v exceeds 1", ErrConfig, c.ErrorRate+c.TimeoutRate))
	}
	if c.Hang <= 0 || c.MaxInFlight <= 0 || c.MaxBodyBytes <= 0 || c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("%w: hang, max_in_flight, max_body_bytes and shutdown_timeout must be positive", ErrConfig))
	}
	return errors.Join(errs...)
}

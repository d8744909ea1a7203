package bureau

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// URL is the bureau's base URL, e.g. http://127.0.0.1:8090. Required.
	URL string
	// Timeout bounds one request when the caller's context has no earlier
	// deadline. Default 5s.
	Timeout time.Duration
	// MaxConns bounds the connections to the bureau (and so the requests
	// on the wire at once; more wait for a connection). Default 1024.
	MaxConns int
	// MaxResponseBytes bounds a response body. Default 64 KiB.
	MaxResponseBytes int64
	// PermissiblePurpose is sent with every pull that does not carry its
	// own. Default CREDIT_TRANSACTION.
	PermissiblePurpose string
	// HTTPClient replaces the default client (TLS, proxies); MaxConns then
	// does not apply.
	HTTPClient *http.Client
	// BreakerFailures is how many consecutive unavailable answers open the
	// circuit breaker. Default 5; -1 disables the breaker.
	BreakerFailures int
	// BreakerOpen is how long an open breaker refuses calls before letting
	// one through to probe. Default 10s.
	BreakerOpen time.Duration
	// Registerer receives the client's metrics (see the package doc); nil
	// leaves them unregistered.
	Registerer prometheus.Registerer
	// Logger gets the breaker's state changes (a warning when it opens).
	Logger *slog.Logger
}

// WithDefaults returns c with zero fields defaulted.
func (c ClientConfig) WithDefaults() ClientConfig {
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MaxConns == 0 {
		c.MaxConns = 1024
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = 64 << 10
	}
	if c.PermissiblePurpose == "" {
		c.PermissiblePurpose = "CREDIT_TRANSACTION"
	}
	if c.BreakerFailures == 0 {
		c.BreakerFailures = 5
	}
	if c.BreakerOpen == 0 {
		c.BreakerOpen = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports what is wrong with c (after defaults).
func (c ClientConfig) Validate() error {
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		return fmt.Errorf("%w: the bureau URL is required (e.g. http://127.0.0.1:8090; start the simulator with `loanflow bureau`)", ErrConfig)
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("%w: bureau URL %q is not an http(s) URL", ErrConfig, c.URL)
	case c.Timeout <= 0 || c.MaxConns <= 0 || c.MaxResponseBytes <= 0 || c.BreakerOpen <= 0 || c.BreakerFailures < -1:
		return fmt.Errorf("%w: client timeout, max_conns, max_response_bytes and breaker_open must be positive (breaker_failures -1 disables the breaker)", ErrConfig)
	case !PermissiblePurposes[c.PermissiblePurpose]:
		return fmt.Errorf("%w: permissible purpose %q is not one of %s", ErrConfig, c.PermissiblePurpose, PurposeList())
	}
	return nil
}

// Client pulls credit reports. It is safe for concurrent use; each call
// costs the caller's goroutine and a pooled connection, nothing more.
type Client struct {
	cfg      ClientConfig
	endpoint string
	hc       *http.Client
	breaker  *gobreaker.CircuitBreaker[Report] // nil when disabled
	metrics  *clientMetrics
}

// NewClient returns a client for cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxConnsPerHost = cfg.MaxConns
		tr.MaxIdleConnsPerHost = cfg.MaxConns
		tr.MaxIdleConns = cfg.MaxConns
		hc = &http.Client{Transport: tr}
	}
	c := &Client{cfg: cfg, endpoint: strings.TrimRight(cfg.URL, "/") + "/v1/credit-reports", hc: hc}
	var err error
	if c.metrics, err = newClientMetrics(cfg.Registerer, c.breakerState); err != nil {
		return nil, fmt.Errorf("bureau: registering metrics: %w", err)
	}
	if cfg.BreakerFailures > 0 {
		c.breaker = newBreaker(cfg.BreakerFailures, cfg.BreakerOpen, cfg.Logger, c.metrics)
	}
	return c, nil
}

// BreakerState is the circuit breaker's state: closed, half-open or open
// (closed when the breaker is disabled).
func (c *Client) BreakerState() string {
	if c.breaker == nil {
		return gobreaker.StateClosed.String()
	}
	return c.breaker.State().String()
}

func (c *Client) breakerState() float64 {
	if c.breaker == nil {
		return 0
	}
	return float64(c.breaker.State())
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// CreditReport pulls the applicant's report. Errors wrap ErrUnavailable
// (retryable: connection failures, timeouts, 5xx, 429; a timeout also
// wraps context.DeadlineExceeded) or ErrRejected (not retryable).
func (c *Client) CreditReport(ctx context.Context, req Request) (Report, error) {
	start := time.Now()
	var rep Report
	var err error
	if c.breaker == nil {
		rep, err = c.creditReport(ctx, req)
	} else {
		rep, err = c.breaker.Execute(func() (Report, error) { return c.creditReport(ctx, req) })
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			err = fmt.Errorf("%w (%w)", ErrBreakerOpen, err)
		}
	}
	res := result(err)
	c.metrics.calls.WithLabelValues(res).Inc()
	if res != ResultBreakerOpen {
		c.metrics.duration.WithLabelValues(res).Observe(time.Since(start).Seconds())
	}
	return rep, err
}

func (c *Client) creditReport(ctx context.Context, req Request) (Report, error) {
	if req.PermissiblePurpose == "" {
		req.PermissiblePurpose = c.cfg.PermissiblePurpose
	}
	body, err := json.Marshal(req)
	if err != nil {
		return Report{}, fmt.Errorf("%w: encoding request: %v", ErrRejected, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return Report{}, fmt.Errorf("%w: %v", ErrRejected, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(hreq)
	if err != nil {
		return Report{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxResponseBytes+1))
	if err != nil {
		return Report{}, fmt.Errorf("%w: reading response: %w", ErrUnavailable, err)
	}
	return c.parse(resp.StatusCode, b)
}

func (c *Client) parse(status int, b []byte) (Report, error) {
	switch {
	case status == http.StatusTooManyRequests || status >= 500:
		return Report{}, fmt.Errorf("%w: %w", ErrUnavailable, &StatusError{Status: status, Detail: detail(b)})
	case status != http.StatusOK:
		return Report{}, fmt.Errorf("%w: %w", ErrRejected, &StatusError{Status: status, Detail: detail(b)})
	case int64(len(b)) > c.cfg.MaxResponseBytes:
		return Report{}, fmt.Errorf("%w: response larger than %d bytes", ErrRejected, c.cfg.MaxResponseBytes)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return Report{}, fmt.Errorf("%w: malformed report: %v", ErrRejected, err)
	}
	if rep.ResponseID == "" || (rep.Hit && (rep.Score < MinScore || rep.Score > MaxScore)) {
		return Report{}, fmt.Errorf("%w: report without a response id or with score %d outside [%d, %d]", ErrRejected, rep.Score, MinScore, MaxScore)
	}
	return rep, nil
}

// detail extracts a problem's detail for error messages.
func detail(b []byte) string {
	var p struct {
		Detail string `json:"detail"`
	}
	if json.Unmarshal(b, &p) == nil && p.Detail != "" {
		return p.Detail
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return strings.TrimSpace(string(b))
}

// IsRetryable reports whether err is worth another attempt.
func IsRetryable(err error) bool { return errors.Is(err, ErrUnavailable) }

// StatusError is an HTTP error answer of the bureau.
type StatusError struct {
	Status int
	Detail string
}

func (e *StatusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Detail) }

// IsTimeout reports whether err is a timeout (the request's deadline
// passed, or the bureau answered 504).
func IsTimeout(err error) bool {
	var se *StatusError
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &se) && se.Status == http.StatusGatewayTimeout)
}

package bureau

import (
	cb "github.com/loanflow/loanflow/connectors/bureau"

	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// start runs a simulator on a free port until the test ends.
func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	<-s.Ready()
	return s
}

func client(t *testing.T, url string, timeout time.Duration) *cb.Client {
	t.Helper()
	c, err := cb.NewClient(cb.ClientConfig{URL: url, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func index(i int) []byte {
	h := sha256.Sum256([]byte(fmt.Sprintf("ssn-%d", i)))
	return h[:]
}

func fast() Config {
	return Config{LatencyMin: time.Millisecond, LatencyMax: 2 * time.Millisecond, ErrorRate: -1, TimeoutRate: -1, Seed: 1, Logger: slog.New(slog.DiscardHandler)}
}

// TestDeterministicReports: the same inquiry gets the same report from
// two simulators seeded differently; scores and reasons follow the rules.
func TestDeterministicReports(t *testing.T) {
	a, b := fast(), fast()
	b.Seed, b.LatencyDistribution = 99, LogNormal
	ca := client(t, start(t, a).URL(), 5*time.Second)
	cb := client(t, start(t, b).URL(), 5*time.Second)
	ctx := context.Background()
	hits, low, high := 0, 0, 0
	for i := 0; i < 200; i++ {
		req := Request{ApplicationID: fmt.Sprintf("app-%d", i), SSNIndex: index(i)}
		ra, err := ca.CreditReport(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := cb.CreditReport(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if ra.ResponseID != rb.ResponseID || ra.Score != rb.Score || ra.Hit != rb.Hit || strings.Join(ra.ReasonCodes, ",") != strings.Join(rb.ReasonCodes, ",") {
			t.Fatalf("inquiry %d: %+v vs %+v", i, ra, rb)
		}
		if !ra.Hit {
			if ra.Score != 0 || len(ra.ReasonCodes) != 0 {
				t.Fatalf("no-file report with a score: %+v", ra)
			}
			continue
		}
		hits++
		if ra.Score < MinScore || ra.Score > MaxScore || len(ra.ReasonCodes) != reasonCount(ra.Score) {
			t.Fatalf("report %+v breaks the rules", ra)
		}
		if ra.Score < 580 {
			low++
		}
		if ra.Score >= 740 {
			high++
		}
	}
	if hits < 180 || low == 0 || high == 0 {
		t.Fatalf("implausible distribution: %d hits, %d below 580, %d at or above 740", hits, low, high)
	}
	other, err := ca.CreditReport(ctx, Request{ApplicationID: "app-other", SSNIndex: index(0)})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := ca.CreditReport(ctx, Request{ApplicationID: "app-0", SSNIndex: index(0)})
	if other.Score != first.Score || other.ResponseID == first.ResponseID {
		t.Fatalf("same applicant, other application: want same score and another response id: %+v vs %+v", other, first)
	}
}

// TestErrorsAndTimeouts: simulated outages are retryable, hangs time out
// at the client, bad requests are rejected and not retryable.
func TestErrorsAndTimeouts(t *testing.T) {
	ctx := context.Background()
	req := Request{ApplicationID: "app-1", SSNIndex: index(1)}

	down := fast()
	down.ErrorRate = 1
	_, err := client(t, start(t, down).URL(), 5*time.Second).CreditReport(ctx, req)
	var se *cb.StatusError
	if !cb.IsRetryable(err) || cb.IsTimeout(err) || !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable {
		t.Fatalf("outage: got %v", err)
	}

	hang := fast()
	hang.TimeoutRate, hang.Hang = 1, time.Minute
	hs := start(t, hang)
	_, err = client(t, hs.URL(), 100*time.Millisecond).CreditReport(ctx, req)
	if !cb.IsRetryable(err) || !cb.IsTimeout(err) {
		t.Fatalf("hang: got %v", err)
	}

	short := hang
	short.Hang = 10 * time.Millisecond
	_, err = client(t, start(t, short).URL(), 5*time.Second).CreditReport(ctx, req)
	if !cb.IsRetryable(err) || !cb.IsTimeout(err) {
		t.Fatalf("504: got %v", err)
	}

	c := client(t, start(t, fast()).URL(), 5*time.Second)
	for _, bad := range []Request{
		{ApplicationID: "app-1", SSNIndex: []byte("123-45-6789")},
		{ApplicationID: "app-1", SSNIndex: index(1), PermissiblePurpose: "CURIOSITY"},
		{SSNIndex: index(1)},
	} {
		_, err := c.CreditReport(ctx, bad)
		if !errors.Is(err, ErrRejected) || cb.IsRetryable(err) || !errors.As(err, &se) || se.Status != http.StatusBadRequest {
			t.Errorf("%+v: got %v", bad, err)
		}
	}
}

// TestShutdownReleasesHangingRequests: stopping the server answers the
// requests it holds instead of waiting for Hang.
func TestShutdownReleasesHangingRequests(t *testing.T) {
	cfg := fast()
	cfg.TimeoutRate, cfg.Hang, cfg.Listen = 1, time.Hour, "127.0.0.1:0"
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Ready()
	c := client(t, s.URL(), time.Hour)
	callErr := make(chan error, 1)
	go func() {
		_, err := c.CreditReport(context.Background(), Request{ApplicationID: "a", SSNIndex: index(2)})
		callErr <- err
	}()
	for s.inFlight.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := <-callErr; !cb.IsRetryable(err) {
		t.Fatalf("held call: got %v, want a retryable error", err)
	}
}

// TestThrottleAndMetrics: requests beyond MaxInFlight get 429 (retryable)
// and every outcome is counted on /metrics.
func TestThrottleAndMetrics(t *testing.T) {
	cfg := fast()
	cfg.LatencyMin, cfg.LatencyMax, cfg.MaxInFlight = 300*time.Millisecond, 300*time.Millisecond, 2
	s := start(t, cfg)
	c := client(t, s.URL(), 5*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := c.CreditReport(context.Background(), Request{ApplicationID: fmt.Sprint(i), SSNIndex: index(i)})
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	ok, throttled := 0, 0
	for err := range errs {
		var se *cb.StatusError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &se) && se.Status == http.StatusTooManyRequests && cb.IsRetryable(err):
			throttled++
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
	if ok < 2 || throttled == 0 || ok+throttled != 6 {
		t.Fatalf("%d ok, %d throttled", ok, throttled)
	}
	resp, err := http.Get(s.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`loanflow_bureau_requests_total{outcome="throttled"}`, `loanflow_bureau_requests_total{outcome="ok"}`, "loanflow_bureau_request_duration_seconds_bucket"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{Listen: "nope"},
		{LatencyMin: 2 * time.Second, LatencyMax: time.Second},
		{ErrorRate: 0.7, TimeoutRate: 0.5},
		{NoFileRate: 2},
		{LatencyDistribution: "pareto"},
	} {
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: got %v, want ErrConfig", c, err)
		}
	}
	if _, err := cb.NewClient(cb.ClientConfig{}); !errors.Is(err, ErrConfig) {
		t.Errorf("client without URL: %v", err)
	}
	if _, err := cb.NewClient(cb.ClientConfig{URL: "ftp://x"}); !errors.Is(err, ErrConfig) {
		t.Errorf("ftp URL: %v", err)
	}
}

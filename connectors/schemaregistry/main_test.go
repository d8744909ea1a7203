package schemaregistry

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/twmb/franz-go/pkg/sr"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// running is a registry started by a test.
type running struct {
	*Registry
	stop func() error // stops it and returns Run's error
}

// start runs a registry on the shared broker with cfg (Brokers, Listen
// and, if empty, Topic filled in) and stops it when the test ends.
func start(t *testing.T, cfg Config) *running {
	t.Helper()
	if len(cfg.Brokers) == 0 {
		cfg.Brokers = testenv.Broker(t).Addrs()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Topic == "" {
		cfg.Topic = testenv.Name(t, "_schemas")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("registry stopped before ready: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("registry not ready after 60s")
	}
	stopped := false
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("registry Run: %v", err)
		}
	})
	return &running{Registry: r, stop: stop}
}

func srClient(t *testing.T, r *Registry) *sr.Client {
	t.Helper()
	cl, err := sr.NewClient(sr.URLs(r.URL()))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

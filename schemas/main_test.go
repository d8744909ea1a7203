package schemas

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// newRegistry starts an embedded registry on the shared broker for this
// test and returns a Client for it.
func newRegistry(t testing.TB) *Client {
	t.Helper()
	reg, err := schemaregistry.New(schemaregistry.Config{
		Brokers: testenv.Broker(t).Addrs(),
		Listen:  "127.0.0.1:0",
		Topic:   testenv.Name(t, "_schemas"),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	select {
	case <-reg.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("registry stopped: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("registry not ready after 60s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("registry: %v", err)
		}
	})
	cl, err := NewClient(ClientConfig{URLs: []string{reg.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

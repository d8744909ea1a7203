package devtest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/devstack"
)

// Start runs the local stack in dir on free ports with the given bureau
// simulator until the test ends or stop is called; stop waits for a clean
// shutdown and reports an unclean one as a test error. A stack that fails
// to start, or is not ready in 4 minutes, fails the test with the tail of
// its log.
func Start(t testing.TB, dir string, b bureau.Config) (info devstack.Info, stop func()) {
	t.Helper()
	logPath := filepath.Join(dir, "test.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan devstack.Info, 1)
	errc := make(chan error, 1)
	cfg := devstack.Config{Dir: dir, FreePorts: true, Logger: slog.New(slog.NewJSONHandler(logf, nil)), Bureau: b}
	go func() { errc <- devstack.Run(ctx, cfg, func(i devstack.Info) { ready <- i }) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("stack stopped with %v", err)
			}
		case <-time.After(2 * time.Minute):
			t.Error("stack did not stop within 2m")
		}
		logf.Close()
	}
	t.Cleanup(stop)
	select {
	case info = <-ready:
		return info, stop
	case err := <-errc:
		stopped = true
		cancel()
		logf.Close()
		t.Fatalf("stack failed to start: %v\n%s", err, Tail(logPath))
	case <-time.After(4 * time.Minute):
		t.Fatalf("stack not ready after 4m\n%s", Tail(logPath))
	}
	return devstack.Info{}, stop
}

// Tail is the last 4,000 bytes of a log file.
func Tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

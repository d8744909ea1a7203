package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/localsvc"
)

var (
	mu       sync.Mutex
	cleanups []func()
	root     string

	pgOnce   sync.Once
	pg       *localsvc.Postgres
	pgErr    error
	rdOnce   sync.Once
	rd       *localsvc.Redis
	rdErr    error
	brkOnce  sync.Once
	brk      *localsvc.Broker
	brkErr   error
	dbSerial atomic.Int64
)

// Main runs the package's tests and then stops every shared server. A
// test binary started as an embedded broker child (see
// localsvc.StartBrokerProcess, which `loanflow dev`'s stack uses) runs the
// broker instead.
func Main(m *testing.M) {
	localsvc.MaybeRunBrokerChild()
	code := m.Run()
	stopAll()
	os.Exit(code)
}

// InCI reports whether the tests run in CI (CI=true), where a missing server
// is a failure rather than a skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

func atExit(fn func()) {
	mu.Lock()
	defer mu.Unlock()
	cleanups = append(cleanups, fn)
}

func stopAll() {
	mu.Lock()
	fns := cleanups
	cleanups = nil
	dir := root
	mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	if dir != "" && os.Getenv("LOANFLOW_KEEP_TESTENV") == "" {
		_ = os.RemoveAll(dir)
	}
}

// Dir returns a directory under the package's scratch root, readable by the
// unprivileged server user (unlike t.TempDir, which is private to root).
func Dir(t testing.TB, name string) string {
	t.Helper()
	mu.Lock()
	if root == "" {
		d, err := os.MkdirTemp("", "loanflow-test-")
		if err == nil {
			err = os.Chmod(d, 0o755)
		}
		if err != nil {
			mu.Unlock()
			t.Fatalf("testenv: creating scratch dir: %v", err)
		}
		root = d
	}
	base := root
	mu.Unlock()
	d, err := os.MkdirTemp(base, sanitize(name)+"-")
	if err == nil {
		err = os.Chmod(d, 0o755)
	}
	if err != nil {
		t.Fatalf("testenv: creating %s dir: %v", name, err)
	}
	return d
}

// require turns a server start error into a skip (locally, binary missing)
// or a failure (CI, or any other error).
func require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, localsvc.ErrNotInstalled) && !InCI() {
		t.Skipf("testenv: skipping, %s is not available: %v", what, err)
	}
	t.Fatalf("testenv: %s: %v", what, err)
}

// Postgres returns the package's shared PostgreSQL cluster.
func Postgres(t testing.TB) *localsvc.Postgres {
	t.Helper()
	pgOnce.Do(func() {
		dir := Dir(t, "postgres")
		pg, pgErr = localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{Dir: dir})
		if pgErr == nil {
			atExit(pg.Stop)
		}
	})
	require(t, "PostgreSQL", pgErr)
	return pg
}

// NewDatabase creates a fresh database on the shared cluster for this test
// and returns its DSN.
func NewDatabase(t testing.TB) string {
	t.Helper()
	p := Postgres(t)
	name := fmt.Sprintf("t%d_%s", dbSerial.Add(1), sanitize(t.Name()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, err := p.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return dsn
}

// Redis returns the package's shared redis-server.
func Redis(t testing.TB) *localsvc.Redis {
	t.Helper()
	rdOnce.Do(func() {
		rd, rdErr = localsvc.StartRedis(context.Background(), localsvc.RedisOptions{Dir: Dir(t, "redis")})
		if rdErr == nil {
			atExit(rd.Stop)
		}
	})
	require(t, "redis-server", rdErr)
	return rd
}

// NewRedis starts a redis-server for this test alone (one it may stop and
// restart); it is stopped when the test ends.
func NewRedis(t testing.TB) *localsvc.Redis {
	t.Helper()
	r, err := localsvc.StartRedis(context.Background(), localsvc.RedisOptions{Dir: Dir(t, "redis")})
	require(t, "redis-server", err)
	t.Cleanup(r.Stop)
	return r
}

// Broker returns the package's shared embedded broker. Tests share it, so
// they name their topics and groups after themselves (see Name). It keeps
// everything in memory and never compacts (see localsvc.BrokerOptions):
// a test that restarts its broker or needs compaction starts its own with
// NewBroker, or runs on Apache Kafka.
func Broker(t testing.TB) *localsvc.Broker {
	t.Helper()
	brkOnce.Do(func() {
		brk, brkErr = localsvc.StartBroker(localsvc.BrokerOptions{Retention: 24 * time.Hour})
		if brkErr == nil {
			atExit(brk.Stop)
		}
	})
	require(t, "embedded broker", brkErr)
	return brk
}

// NewBroker starts a broker for this test alone; it is stopped when the test
// ends.
func NewBroker(t testing.TB, opts localsvc.BrokerOptions) *localsvc.Broker {
	t.Helper()
	b, err := localsvc.StartBroker(opts)
	require(t, "embedded broker", err)
	t.Cleanup(b.Stop)
	return b
}

// Name returns a name unique to this test and run, for topics, groups,
// slots and key prefixes on shared servers.
func Name(t testing.TB, base string) string {
	return fmt.Sprintf("%s_%s_%d", base, sanitize(t.Name()), dbSerial.Add(1))
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > 40 {
		out = out[len(out)-40:]
	}
	return out
}

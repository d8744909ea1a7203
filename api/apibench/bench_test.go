package apibench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/api/pii"
	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv("APIBENCH_LOADGEN") == "1" {
		loadGenerator() // this binary as TestRunShortFromALoadGenerator's child
		return
	}
	testenv.Main(m)
}

// loadGenerator is `loanflow bench-api-load` for the tests.
func loadGenerator() {
	var spec LoadSpec
	if err := json.NewDecoder(os.Stdin).Decode(&spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	res, err := Generate(context.Background(), spec, func(t time.Time) { fmt.Printf("%s%s\n", StartedLine, t.Format(time.RFC3339Nano)) })
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	os.Exit(0)
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}

// startServer runs an api.Server on the test servers.
func startServer(tb testing.TB) (*api.Server, string, string) {
	ctx := context.Background()
	brokers := testenv.Broker(tb).Addrs()
	cl, _ := kgo.NewClient(kgo.SeedBrokers(brokers...))
	topics := []string{testenv.Name(tb, "apps"), testenv.Name(tb, "dec"), testenv.Name(tb, "met")}
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 3, 1, nil, topics...); err != nil {
		tb.Fatal(err)
	}
	cl.Close()
	reg, err := schemaregistry.New(schemaregistry.Config{Brokers: brokers, Listen: "127.0.0.1:0", Topic: testenv.Name(tb, "schemas")})
	if err != nil {
		tb.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(rctx) }()
	tb.Cleanup(func() { cancel(); <-done })
	<-reg.Ready()
	dir := tb.TempDir()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	rd := testenv.Redis(tb)
	cfg := api.Config{DevIssuer: true, Addr: ln.Addr().String(), PublicURL: "http://" + ln.Addr().String(), DatabaseURL: testenv.NewDatabase(tb),
		RedisURL: rd.URL(), KafkaBrokers: brokers, SchemaRegistryURL: reg.URL(),
		ApplicationsTopic: topics[0], DecisionsTopic: topics[1], MetricsTopic: topics[2], DBMaxConns: 32,
		PII:    pii.Config{KEKURI: pii.LocalKMSPrefix + filepath.Join(dir, "kek.json"), DataKeysetPath: filepath.Join(dir, "d.json"), IndexKeysetPath: filepath.Join(dir, "i.json")},
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}
	if err := pii.Init(ctx, cfg.PII); err != nil {
		tb.Fatal(err)
	}
	srv, err := api.New(ctx, cfg, nil)
	if err != nil {
		tb.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() { _ = srv.Serve(sctx, ln); close(served) }()
	tb.Cleanup(func() { stop(); <-served; srv.Close() })
	return srv, "http://" + ln.Addr().String(), rd.Addr()
}

// BenchmarkAPIGoals runs the open-loop goals once (b.N is ignored: the
// run is time-bound). Durations: LOANFLOW_BENCH_LOOKUP_DURATION and
// LOANFLOW_BENCH_UPDATE_DURATION (default 5s; the goal runs use 60s);
// rates: LOANFLOW_BENCH_LOOKUP_RATE (5000), LOANFLOW_BENCH_UPDATE_RATE (1000).
func BenchmarkAPIGoals(b *testing.B) {
	srv, url, raddr := startServer(b)
	cfg := Config{Server: srv, URL: url, RedisAddr: raddr,
		PgBenchDir: testenv.Postgres(b).BinDir(), PgBenchDSN: testenv.NewDatabase(b),
		LookupRate: envInt("LOANFLOW_BENCH_LOOKUP_RATE", 5000), LookupDuration: envDuration("LOANFLOW_BENCH_LOOKUP_DURATION", 5*time.Second),
		UpdateRate: envInt("LOANFLOW_BENCH_UPDATE_RATE", 1000), UpdateDuration: envDuration("LOANFLOW_BENCH_UPDATE_DURATION", 5*time.Second)}
	b.ResetTimer()
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	for _, l := range rep.Results {
		b.ReportMetric(float64(l.P99.Microseconds())/1000, "p99-ms/"+short(l.Name))
	}
	b.ReportMetric(rep.PgBenchTPS, "pgbench-tps")
	b.Log("\n" + rep.Markdown())
}

func short(name string) string {
	m := map[string]string{"credit lookup (cache hit)": "hit", "credit lookup (cache miss)": "miss", "baseline: go-redis GET": "redis-get",
		"baseline: PostgreSQL point select": "pg-select", "loan update (PATCH)": "update",
		"baseline: GET /healthz (load generator + HTTP floor)": "healthz"}
	return m[name]
}

// TestRunShort runs the benchmark for a moment so it stays working.
func TestRunShort(t *testing.T) {
	srv, url, raddr := startServer(t)
	rep, err := Run(context.Background(), Config{Server: srv, URL: url, RedisAddr: raddr, LookupRate: 200, LookupDuration: 300 * time.Millisecond,
		UpdateRate: 100, UpdateDuration: 300 * time.Millisecond, Customers: 50, Loans: 20,
		PgBenchDir: testenv.Postgres(t).BinDir(), PgBenchDSN: testenv.NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rep.Results {
		if l.Sent == 0 || l.Errors != 0 {
			t.Errorf("%s: sent %d, errors %d", l.Name, l.Sent, l.Errors)
		}
	}
	if rep.PgBenchTPS <= 0 {
		t.Errorf("pgbench: %s", rep.PgBenchNote)
	}
	t.Log("\n" + rep.Markdown())
}

// TestRunShortFromALoadGenerator runs the phases from a separate process
// (this test binary as the load generator): every phase sends without
// errors, the server saw the requests (its histogram), the update phases
// get their loans back from the child (else the second one would fail),
// and the miss phase's janitor, following the child's schedule, makes
// lookups miss.
func TestRunShortFromALoadGenerator(t *testing.T) {
	t.Setenv("APIBENCH_LOADGEN", "1")
	srv, url, raddr := startServer(t)
	rep, err := Run(context.Background(), Config{Server: srv, URL: url, RedisAddr: raddr, LookupRate: 200, LookupDuration: 500 * time.Millisecond,
		UpdateRate: 100, UpdateDuration: 500 * time.Millisecond, Customers: 200, Loans: 20, LoadCommand: []string{os.Args[0]}})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rep.Results {
		if l.Sent == 0 || l.Errors != 0 {
			t.Errorf("%s: sent %d, errors %d (%s)", l.Name, l.Sent, l.Errors, l.FirstError)
		}
		if l.Rate > 0 && !strings.Contains(l.Server, "server-measured p99") {
			t.Errorf("%s: no server-side p99: %q", l.Name, l.Server)
		}
	}
	if miss := rep.Results[2]; !strings.Contains(miss.Note, "misses") || strings.Contains(miss.Note, " 0 misses") {
		t.Errorf("miss phase: %s", miss.Note)
	}
	t.Log("\n" + rep.Markdown())
}

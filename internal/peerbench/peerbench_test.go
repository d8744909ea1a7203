package peerbench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/postgres"
	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/testenv"
)

// TestMain lets the test binary play the Loanflow side: a worker (as
// `loanflow bench-peer-worker`) or the CDC reader (as `loanflow cdc run`).
func TestMain(m *testing.M) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if spec := os.Getenv("LOANFLOW_PEER_WORKER"); spec != "" {
		if err := WorkerMain(ctx, spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if path := os.Getenv("LOANFLOW_PEER_CDC"); path != "" {
		cfg, err := postgres.LoadConfig(path)
		if err == nil {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			var r *postgres.Reader
			if r, err = postgres.NewReader(cfg); err == nil {
				err = r.Run(ctx)
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func self(env string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env)
	return cmd
}

func needJavaAndMaven(t *testing.T) {
	for _, bin := range []string{"java", "mvn"} {
		if _, err := exec.LookPath(bin); err != nil {
			if testenv.InCI() {
				t.Fatalf("%s not found (make deps installs it)", bin)
			}
			t.Skipf("%s not found; the peers need it (make deps)", bin)
		}
	}
}

// TestPeersSmoke builds every peer with Maven and runs each one beside
// Loanflow on a few records against Apache Kafka: the window count for
// Kafka Streams and Flink, CDC for Debezium. Every run's output is checked
// by the harness (result count and sum, change count); a failed side is
// reported as "failed:" in the table, which fails the test.
func TestPeersSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts JVMs and builds the peers with Maven")
	}
	needJavaAndMaven(t)
	kfk := testenv.Kafka(t)
	pg := testenv.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	reg, err := schemaregistry.New(schemaregistry.Config{Brokers: kfk.Addrs(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rstop := context.WithCancel(ctx)
	rdone := make(chan error, 1)
	go func() { rdone <- reg.Run(rctx) }()
	defer func() { rstop(); <-rdone }()
	select {
	case <-reg.Ready():
	case err := <-rdone:
		t.Fatal(err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Brokers: kfk.Addrs(), BrokerPID: func() int { return kfk.PID(1) }, Root: root, Dir: t.TempDir(),
		Scale: 0.001, Runs: 1, Workloads: []string{"window", "cdc"}, Progress: testWriter{t},
		LoanflowCommand: func(spec string) *exec.Cmd { return self("LOANFLOW_PEER_WORKER=" + spec) },
		Postgres: &PostgresEnv{CreateDatabase: pg.CreateDatabase, Port: pg.Port(), BinDir: pg.BinDir(),
			DataDir: filepath.Join(pg.Dir(), "data"), RegistryURL: reg.URL(),
			LoanflowCLI: func(args ...string) *exec.Cmd { return self("LOANFLOW_PEER_CDC=" + args[len(args)-1]) }}}
	md, err := Run(ctx, cfg)
	t.Log("\n" + md)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(md, "failed:") {
		t.Fatal("a side failed (see the table above)")
	}
	for _, row := range []string{"| Loanflow |", "| " + KStreams.Version + " |", "| " + Flink.Version + " |",
		"| Loanflow (`loanflow cdc run`) |", "| " + Debezium.Version + " |", "| pg_recvlogical"} {
		if !strings.Contains(md, row) {
			t.Errorf("no row %q in the report", row)
		}
	}
}

// TestPeerFailureIsReported is the smoke test's negative control: a peer
// that exits at once (an unknown workload) is reported with its log, not
// waited for.
func TestPeerFailureIsReported(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a peer with Maven")
	}
	needJavaAndMaven(t)
	kfk := testenv.Kafka(t)
	root, _ := filepath.Abs("../..")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b, err := Build(ctx, root, KStreams)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Brokers: kfk.Addrs(), Dir: t.TempDir()}
	if err := createTopics(ctx, cfg.Brokers, 1, "peer-negative-out"); err != nil {
		t.Fatal(err)
	}
	_, _, err = cfg.measure(ctx, "kstreams", b.Command("no-such-workload", map[string]string{"app": "x", "brokers": cfg.Brokers[0], "state": cfg.Dir}),
		filepath.Join(cfg.Dir, "x.log"), "peer-negative-out", func(o output) bool { return o.records > 0 }, time.Minute)
	if err == nil || !strings.Contains(err.Error(), "exited early") || !strings.Contains(err.Error(), "unknown workload") {
		t.Fatalf("err = %v, want an early exit naming the unknown workload", err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestCPUSeconds compares /proc with the kernel's getrusage for this
// process (and its children) after burning some CPU.
func TestCPUSeconds(t *testing.T) {
	x := uint64(1)
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
		for i := 0; i < 1_000_000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	// CPUSeconds counts the waited-for children too (Maven, in this
	// package's other tests).
	var self, kids syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids); err != nil {
		t.Fatal(err)
	}
	got, err := CPUSeconds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := time.Duration(self.Utime.Nano() + self.Stime.Nano() + kids.Utime.Nano() + kids.Stime.Nano()).Seconds()
	// /proc counts in 10ms ticks and was read after getrusage.
	if got < want-0.05 || got > want+1 || x == 0 {
		t.Fatalf("CPUSeconds = %.2f, getrusage %.2f", got, want)
	}
	if _, err := CPUSeconds(1 << 30); err == nil {
		t.Fatal("CPUSeconds of a pid that does not exist: no error")
	}
}

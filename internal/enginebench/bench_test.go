package enginebench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/localsvc"
)

// The benchmarks print the same figures as `loanflow bench`.

func BenchmarkStatelessChain(b *testing.B) {
	r, err := StatelessChain(max(b.N, 1_000_000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.Value, "records/s")
	b.ReportMetric(r.Ratio, "x-baseline")
}

func BenchmarkWindowCount(b *testing.B) {
	r, err := WindowCount(max(b.N, 3_000_000), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.Value, "records/s")
}

func BenchmarkTemporalJoin(b *testing.B) {
	r, err := TemporalJoin(max(b.N, 2_000_000), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.Value, "probes/s")
}

func BenchmarkAsyncEfficiency(b *testing.B) {
	r, err := AsyncEfficiency(3 * time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.Ratio, "efficiency")
}

func benchBroker(b *testing.B) []string {
	brk, err := localsvc.StartBroker(localsvc.BrokerOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(brk.Stop)
	return brk.Addrs()
}

func BenchmarkPassthrough(b *testing.B) {
	rs, err := Passthrough(context.Background(), KafkaConfig{Brokers: benchBroker(b), Dir: b.TempDir(), Records: 200_000, OverheadRecords: 2_000_000})
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range rs {
		b.Logf("%s: %.0f %s, ratio %.2f (%s)", r.Name, r.Value, r.Unit, r.Ratio, r.Note)
	}
}

func TestMain(m *testing.M) {
	if spec := os.Getenv("LOANFLOW_BENCH_WORKER"); spec != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		if err := WorkerMain(ctx, spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func BenchmarkRecovery(b *testing.B) {
	r, err := Recovery(context.Background(), KafkaConfig{Brokers: benchBroker(b), Dir: b.TempDir()}, 1_000_000, func(spec string) *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "LOANFLOW_BENCH_WORKER="+spec)
		return cmd
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.Value, "s-recovery")
}

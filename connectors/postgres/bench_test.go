package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
)

// BenchmarkCDC runs RunBenchmark once (it sizes itself; b.N is ignored):
//
//	go test ./connectors/postgres -run '^$' -bench CDC -benchtime 1x
func BenchmarkCDC(b *testing.B) {
	e := newEnv(b)
	// A broker of its own, so the figures do not include other tests' data.
	brk := testenv.NewBroker(b, localsvc.BrokerOptions{})
	reg := startRegistry(b, brk.Addrs(), e.cfg.Name+"_schemas")
	for i := 0; i < b.N; i++ {
		res, err := RunBenchmark(context.Background(), BenchConfig{
			DatabaseURL: e.dsn, Brokers: brk.Addrs(), SchemaRegistryURL: reg,
			PGBinDir: testenv.Postgres(b).BinDir(), Name: e.cfg.Name,
			BacklogChanges: benchBacklog(), RateDuration: benchDuration(), Logger: e.cfg.Logger,
		})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(res.RecvlogicalChangesPerSec, "recvlogical-changes/s")
		b.ReportMetric(res.BacklogChangesPerSec, "backlog-changes/s")
		b.ReportMetric(res.RatioToRecvlogical, "ratio")
		b.ReportMetric(res.Fixed.CommittedChangesPerSec, "fixed-changes/s")
		b.ReportMetric(float64(res.Fixed.LatencyP50.Microseconds())/1000, "fixed-p50-ms")
		b.ReportMetric(float64(res.Fixed.LatencyP99.Microseconds())/1000, "fixed-p99-ms")
		b.ReportMetric(float64(res.Fixed.LatencyMax.Microseconds())/1000, "fixed-max-ms")
		b.ReportMetric(res.Saturation.CommittedChangesPerSec, "sat-changes/s")
		b.ReportMetric(float64(res.Saturation.LatencyP50.Microseconds())/1000, "sat-p50-ms")
		b.ReportMetric(float64(res.Saturation.LatencyP99.Microseconds())/1000, "sat-p99-ms")
		b.Logf("%+v", res)
	}
}

func benchBacklog() int {
	if testing.Short() {
		return 20000
	}
	return 200000
}

func benchDuration() time.Duration {
	if testing.Short() {
		return 3 * time.Second
	}
	return 10 * time.Second
}

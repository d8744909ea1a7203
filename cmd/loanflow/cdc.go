package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/connectors/postgres"
)

func init() { addCommand(newCDCCmd) }

const exampleCDCConfig = `# loanflow cdc run --config cdc.yaml   (YAML or JSON; durations like "5s")
name: loanflow_cdc                  # position key, slot, publication, transactional id
database_url: postgres://postgres@127.0.0.1:5432/loanflow?sslmode=disable
brokers: [127.0.0.1:9092]
schema_registry_url: http://127.0.0.1:8081
tables:
  - table: public.customers
  - table: public.credit_profiles
  - table: public.loans
# - table: public.audit_log         # only if a consumer needs the audit trail in Kafka
# ensure_replica_identity_full: true  # needed for tables with text/bytea/jsonb/numeric columns
# heartbeat_interval: 5s
# commit_interval: 50ms
# txn_max_records: 20000
# metrics_addr: 127.0.0.1:9110
`

func newCDCCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cdc",
		Short: "PostgreSQL change-data-capture into Kafka (exactly once, Avro)",
	}
	cmd.AddCommand(newCDCRunCmd(), &cobra.Command{
		Use:   "example-config",
		Short: "Print an example config file",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprint(cmd.OutOrStdout(), exampleCDCConfig) },
	})
	return cmd
}

func newCDCRunCmd() *cobra.Command {
	var cfgPath, metricsAddr string
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the CDC reader until interrupted",
		Long: "Streams the configured tables from a logical replication slot into Kafka, " +
			"exactly once, as Avro registered in the schema registry. See `loanflow cdc example-config`.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" {
				return errors.New("cdc run: --config FILE is required (print an example with `loanflow cdc example-config`)")
			}
			cfg, err := postgres.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			if metricsAddr != "" {
				cfg.MetricsAddr = metricsAddr
			}
			return runCDC(cmd.Context(), cfg)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "config file (YAML or JSON)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (overrides metrics_addr)")
	return cmd
}

func runCDC(ctx context.Context, cfg postgres.Config) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Registerer = reg
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	r, err := postgres.NewReader(cfg)
	if err != nil {
		return fmt.Errorf("cdc run: %w", err)
	}
	if cfg.MetricsAddr != "" {
		stop, err := serveMetrics(cfg.MetricsAddr, reg)
		if err != nil {
			return err
		}
		defer stop()
	}
	if err := r.Run(ctx); err != nil {
		return fmt.Errorf("cdc run: %w", err)
	}
	return nil
}

func serveMetrics(addr string, reg *prometheus.Registry) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cdc run: metrics address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

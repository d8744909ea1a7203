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

	"github.com/jackc/pglogrepl"
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
  - table: public.customers         # no PII: an allow-list (the primary key must be in it)
    columns: [customer_id, credit_limit, credit_currency, current_balance, risk_tier, status, version, created_at, updated_at]
    truncate: true                  # write TRUNCATE as op t (off by default: Flink's debezium format rejects it)
  - table: public.credit_profiles
  - table: public.loans
#   exclude_columns: [notes]        # or a deny-list (columns and exclude_columns are exclusive)
# include_tables: ['public\.loan.*']     # regular expressions on schema.table, besides tables
# exclude_tables: ['public\.audit_.*']
# types: debezium                   # Debezium's semantic types (ZonedTimestamp, VariableScaleDecimal, Uuid, ...)
# provide_transaction_metadata: true  # BEGIN/END records in <topic_prefix>.transaction
# - table: public.audit_log         # only if a consumer needs the audit trail in Kafka
# ensure_replica_identity_full: true  # needed for tables with text/bytea/jsonb/numeric columns
# heartbeat_interval: 50ms
# commit_interval: 50ms
# streaming: auto                   # protocol v2: large transactions arrive while they run (PostgreSQL 14+; on|off)
# stream_buffer_bytes: 67108864      # memory for streamed transactions not yet committed; then files
# stream_spill_dir: /var/tmp         # where those files go (unlinked at creation)
# txn_max_records: 20000
# metrics_addr: 127.0.0.1:9110
# wal_guard:                         # watches pg_replication_slots from a side connection
#   poll_interval: 10s
#   max_retained_bytes: 21474836480  # stop past 20 GiB of retained WAL (0: never)
#   action: stop                     # or drop_slot (frees the WAL; the next start needs cdc reset)
`

func newCDCCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cdc",
		Short: "PostgreSQL change-data-capture into Kafka (exactly once, Avro)",
	}
	cmd.AddCommand(newCDCRunCmd(), newCDCResetCmd(), newCDCSkipCmd(), newCDCSnapshotCmd(), newCDCStatusCmd(), &cobra.Command{
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

func newCDCResetCmd() *cobra.Command {
	var cfgPath string
	var yes bool
	cmd := &cobra.Command{
		Use:   "reset --config FILE --yes",
		Short: "Delete the reader's committed position: its next start takes a new snapshot",
		Long: "Writes a tombstone for the reader's position in the positions topic. Stop the reader first. " +
			"The next `loanflow cdc run` drops the old slot, creates a new one and snapshots every table again " +
			"(use it after the reader refused a server or slot that does not match its position).",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" || !yes {
				return errors.New("cdc reset: --config FILE and --yes are required (the next start re-snapshots every table)")
			}
			cfg, err := postgres.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			if err := postgres.ResetPosition(cmd.Context(), cfg); err != nil {
				return fmt.Errorf("cdc reset: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "position of reader %q deleted; the next start takes a new snapshot\n", cfg.WithDefaults().Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "config file (YAML or JSON)")
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm")
	return cmd
}

func newCDCSkipCmd() *cobra.Command {
	var cfgPath, lsnText, reason string
	cmd := &cobra.Command{
		Use:   "skip --config FILE --lsn X/Y [--reason TEXT]",
		Short: "Send the change at an LSN to the dead-letter topic instead of its table topic",
		Long: "Records, in the positions topic, that the change at LSN (its source.lsn, or the LSN a reader's error names) " +
			"must not stop the reader: from its next start (or session restart) the reader writes it to the dead-letter topic " +
			"with reason skipped and goes on with the other changes.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" || lsnText == "" {
				return errors.New("cdc skip: --config FILE and --lsn X/Y are required (the LSN is in the reader's error or a record's source.lsn)")
			}
			lsn, err := pglogrepl.ParseLSN(lsnText)
			if err != nil {
				return fmt.Errorf("cdc skip: --lsn %q: want the X/Y form PostgreSQL prints (e.g. 0/16B3748): %w", lsnText, err)
			}
			cfg, err := postgres.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			if err := postgres.SkipChange(cmd.Context(), cfg, lsn, reason); err != nil {
				return fmt.Errorf("cdc skip: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "the change at %s goes to the dead-letter topic from the reader's next session\n", lsn)
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "config file (YAML or JSON)")
	cmd.Flags().StringVar(&lsnText, "lsn", "", "LSN of the change (X/Y)")
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the dead-letter record)")
	return cmd
}

package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/internal/devstack"
	"github.com/loanflow/loanflow/internal/logfmt"
)

func init() { addCommand(newDevCmd) }

func newDevCmd() *cobra.Command {
	var cfg devstack.Config
	var brokers, logLevel string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole system locally in one process (servers, registry, API, CDC, bureau, jobs)",
		Long: `Runs all of Loanflow on this machine until Ctrl-C: PostgreSQL (wal_level=logical,
from the installed server binaries), redis-server and an embedded Kafka-protocol
broker, then the schema registry, the API with its dev OAuth2 issuer, the
credit-bureau simulator, the CDC reader and one worker of each job. All data
lives in --dir; run it again to resume, delete the directory to start over.

The broker runs in a child process (broker.log in --dir) that saves its state
and exits when this one stops or dies, even by SIGKILL: a hard kill of
loanflow dev loses no accepted application. Killing the broker process itself,
or the machine, can tear the transaction being committed; use your own Kafka
(--brokers) where that matters.

Use your own servers instead of local ones by configuration alone:
--database-url, --redis-url, --brokers, --schema-registry.

Needs the Debian packages postgresql and redis-server (make deps installs them).`,
		Example: `  loanflow dev
  loanflow dev --dir /var/tmp/loanflow-dev --api-addr 127.0.0.1:9080
  loanflow dev --brokers kafka1:9092 --schema-registry http://registry:8081`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Brokers = splitList(brokers)
			// Only for the negative control of TestDevStackSurvivesSIGKILL.
			cfg.BrokerInProcess = os.Getenv("LOANFLOW_DEV_BROKER_IN_PROCESS") == "1"
			log, closeLog, err := devLogger(cfg.Dir, logLevel)
			if err != nil {
				return err
			}
			defer closeLog()
			cfg.Logger = log
			out := cmd.OutOrStdout()
			if cfg.DatabaseURL == "" && devstack.FirstStart(cfg.Dir) {
				fmt.Fprintln(out, "starting Loanflow for the first time in "+cfg.Dir+" (initialising PostgreSQL takes a little longer)...")
			} else {
				fmt.Fprintln(out, "starting Loanflow from "+cfg.Dir+"...")
			}
			start := time.Now()
			err = devstack.Run(cmd.Context(), cfg, func(info devstack.Info) {
				fmt.Fprintf(out, "ready in %s\n\n%s", time.Since(start).Round(100*time.Millisecond), info.Summary())
			})
			if err != nil {
				return fmt.Errorf("%w\n(log: %s)", err, filepath.Join(cfg.Dir, "loanflow.log"))
			}
			fmt.Fprintln(out, "stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "dir", envOr("LOANFLOW_DEV_DIR", filepath.Join(".loanflow", "dev")), "data directory of the stack (env LOANFLOW_DEV_DIR)")
	f.StringVar(&cfg.APIAddr, "api-addr", "127.0.0.1:8080", "API listen address")
	f.StringVar(&cfg.RegistryAddr, "registry-addr", "127.0.0.1:8081", "schema registry listen address")
	f.StringVar(&cfg.BureauAddr, "bureau-addr", "127.0.0.1:8090", "credit-bureau simulator listen address")
	f.StringVar(&cfg.CDCMetricsAddr, "cdc-metrics-addr", "127.0.0.1:9110", "CDC reader metrics listen address")
	f.IntVar(&cfg.WorkerAdminPort, "worker-admin-port", 9100, "admin port of the first job worker; the others follow")
	f.IntVar(&cfg.PostgresPort, "postgres-port", 55432, "port of the local PostgreSQL")
	f.IntVar(&cfg.RedisPort, "redis-port", 56379, "port of the local redis-server")
	f.IntVar(&cfg.BrokerPort, "broker-port", 9092, "port of the embedded broker")
	f.StringVar(&cfg.DatabaseURL, "database-url", "", "use this PostgreSQL (wal_level=logical) instead of a local one")
	f.StringVar(&cfg.RedisURL, "redis-url", "", "use this Redis instead of a local one")
	f.StringVar(&brokers, "brokers", "", "use these Kafka brokers (comma-separated) instead of the embedded one")
	f.StringVar(&cfg.SchemaRegistryURL, "schema-registry", "", "use this schema registry instead of the embedded one")
	f.Float64Var(&cfg.LenderRateLimitPerSec, "lender-rate-limit", 200, "API requests per second per lender (lenders created with their own limit keep it); raise it for loanflow load above 200/s per lender")
	f.IntVar(&cfg.LenderRateBurst, "lender-rate-burst", 0, "burst of the per-lender rate limit (default twice --lender-rate-limit)")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 500*time.Millisecond, "CDC heartbeat interval (bounds a known customer's decision wait)")
	f.DurationVar(&cfg.Bureau.LatencyMin, "bureau-latency-min", 200*time.Millisecond, "shortest simulated bureau latency")
	f.DurationVar(&cfg.Bureau.LatencyMax, "bureau-latency-max", 2*time.Second, "longest simulated bureau latency")
	f.StringVar(&logLevel, "log-level", "info", "level of the log file: debug, info, warn, error (warnings also go to stderr)")
	return cmd
}

// devLogger logs JSON to DIR/loanflow.log and warnings to stderr.
func devLogger(dir, level string) (*slog.Logger, func(), error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "loanflow.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	h := slog.NewMultiHandler(slog.NewJSONHandler(f, logfmt.Options(lv)),
		slog.NewTextHandler(os.Stderr, logfmt.Options(slog.LevelWarn)))
	return slog.New(h), func() { f.Close() }, nil
}

package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/devstack"
	"github.com/loanflow/loanflow/internal/logfmt"
	"github.com/loanflow/loanflow/jobs"
)

func init() { addCommand(newDevCmd) }

func newDevCmd() *cobra.Command {
	var cfg devstack.Config
	var brokers, logLevel, commitIntervals string
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
			var err error
			if cfg.CommitIntervals, err = parseCommitIntervals(commitIntervals); err != nil {
				return err
			}
			noneIfZero(&cfg.Bureau.ErrorRate, &cfg.Bureau.TimeoutRate, &cfg.Bureau.NoFileRate)
			if !cmd.Flags().Changed("decisions-bureau-capacity") {
				// Never ask the simulator for more than it serves: calls
				// beyond its capacity get 429, which the job retries and
				// which trip its circuit breaker (every applicant then
				// falls back). Beyond this many calls, applications wait
				// in the job (its input pauses), not in the bureau.
				cfg.Decisions.BureauCapacity = min(cfg.Decisions.BureauCapacity, cfg.Bureau.MaxInFlight)
			}
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
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 50*time.Millisecond, "CDC heartbeat interval (bounds a known customer's decision wait)")
	f.StringVar(&commitIntervals, "commit-interval", formatCommitIntervals(devstack.DefaultCommitIntervals),
		"checkpoint interval per job, JOB=DURATION,... (a decision is visible to read_committed readers when its checkpoint commits); a bare DURATION sets every job")
	f.StringVar(&cfg.Decisions.JoinMode, "decisions-join", envOr("LOANFLOW_DECISIONS_JOIN", jobs.JoinAsOf),
		"how the decisions job finds a known customer: as-of (the customer_360 version valid at the application's time; waits for CDC heartbeats) or lookup (the newest version read, at once) (env LOANFLOW_DECISIONS_JOIN)")
	f.IntVar(&cfg.Decisions.BureauCapacity, "decisions-bureau-capacity", 1000, "bureau calls in flight per task of the decisions job (also bounds the worker's connections to the bureau, which its tasks share); at most --bureau-capacity unless set")
	f.DurationVar(&cfg.Decisions.BureauTimeout, "decisions-bureau-timeout", 3*time.Second, "bound of one bureau attempt of the decisions job")
	f.DurationVar(&cfg.Bureau.LatencyMin, "bureau-latency-min", 200*time.Millisecond, "shortest simulated bureau latency")
	f.DurationVar(&cfg.Bureau.LatencyMax, "bureau-latency-max", 2*time.Second, "longest simulated bureau latency")
	f.StringVar(&cfg.Bureau.LatencyDistribution, "bureau-latency-distribution", bureau.Uniform, "simulated bureau latency: uniform or lognormal")
	f.Float64Var(&cfg.Bureau.ErrorRate, "bureau-error-rate", 0.01, "fraction of bureau requests answered 503")
	f.Float64Var(&cfg.Bureau.TimeoutRate, "bureau-timeout-rate", 0.005, "fraction of bureau requests that hang (then 504)")
	f.DurationVar(&cfg.Bureau.Hang, "bureau-hang", 30*time.Second, "how long a hanging bureau request hangs")
	f.Float64Var(&cfg.Bureau.NoFileRate, "bureau-no-file-rate", 0.03, "fraction of applicants without a credit file")
	f.IntVar(&cfg.Bureau.MaxInFlight, "bureau-capacity", 10000, "bureau requests served at once (its capacity); more get 429")
	f.Int32Var(&cfg.API.DBMaxConns, "api-db-max-conns", 20, "the API's PostgreSQL connection pool")
	f.DurationVar(&cfg.API.LongPollMax, "api-long-poll-max", 30*time.Second, "longest ?timeout= of the API's decision long-poll")
	f.IntVar(&cfg.API.MaxStreams, "api-max-streams", 1000, "concurrent SSE decision streams the API serves")
	f.IntVar(&cfg.API.SSEBuffer, "api-sse-buffer", 256, "events queued per SSE stream before it is dropped as slow")
	f.DurationVar(&cfg.API.RequestTimeout, "api-request-timeout", 10*time.Second, "bound of one non-streaming API request")
	f.StringVar(&logLevel, "log-level", "info", "level of the log file: debug, info, warn, error (warnings also go to stderr)")
	return cmd
}

// parseCommitIntervals reads --commit-interval: JOB=DURATION pairs, or
// one DURATION for every job.
func parseCommitIntervals(s string) (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	if d, err := time.ParseDuration(strings.TrimSpace(s)); err == nil {
		for _, j := range devstack.Jobs {
			out[j] = d
		}
		return out, nil
	}
	for _, kv := range splitList(s) {
		job, dur, ok := strings.Cut(kv, "=")
		d, err := time.ParseDuration(dur)
		if !ok || err != nil {
			return nil, fmt.Errorf("--commit-interval %q: write JOB=DURATION pairs, e.g. decisions=50ms,portfolio=1s, or one DURATION", kv)
		}
		out[strings.TrimSpace(job)] = d
	}
	return out, nil
}

func formatCommitIntervals(m map[string]time.Duration) string {
	parts := make([]string, 0, len(m))
	for _, j := range devstack.Jobs {
		if d, ok := m[j]; ok {
			parts = append(parts, j+"="+d.String())
		}
	}
	return strings.Join(parts, ",")
}

// noneIfZero turns a rate of 0 into the simulator's "none" (negative; its
// 0 means the default).
func noneIfZero(rates ...*float64) {
	for _, r := range rates {
		if *r == 0 {
			*r = -1
		}
	}
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

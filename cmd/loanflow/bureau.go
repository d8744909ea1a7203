package main

import (
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/internal/bureau"
)

func init() { addCommand(newBureauCmd) }

func newBureauCmd() *cobra.Command {
	var cfg bureau.Config
	cmd := &cobra.Command{
		Use:   "bureau",
		Short: "Run the credit-bureau simulator (POST /v1/credit-reports) until interrupted",
		Long: `Runs the credit-bureau simulator the decisions job pulls reports from for
applicants who are not customers. Scores are deterministic per applicant (a
hash of the SSN blind index); latency, 503 outages and hanging requests are
drawn per request. Metrics are served at /metrics.

  loanflow bureau --listen 127.0.0.1:8090 --latency-min 200ms --latency-max 2s --error-rate 0.01

Rates are fractions in [0, 1]; pass a negative rate for none.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
			s, err := bureau.New(cfg)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8090", "HTTP listen address")
	f.DurationVar(&cfg.LatencyMin, "latency-min", 200*time.Millisecond, "shortest simulated latency")
	f.DurationVar(&cfg.LatencyMax, "latency-max", 2*time.Second, "longest simulated latency")
	f.StringVar(&cfg.LatencyDistribution, "latency-distribution", bureau.Uniform, "uniform or lognormal")
	f.Float64Var(&cfg.ErrorRate, "error-rate", 0.01, "fraction of requests answered 503 (negative: none)")
	f.Float64Var(&cfg.TimeoutRate, "timeout-rate", 0.005, "fraction of requests that hang, then answer 504 (negative: none)")
	f.DurationVar(&cfg.Hang, "hang", 30*time.Second, "how long a hanging request hangs")
	f.Float64Var(&cfg.NoFileRate, "no-file-rate", 0.03, "fraction of applicants without a credit file (negative: none)")
	f.IntVar(&cfg.MaxInFlight, "max-in-flight", 10000, "requests served at once; more get 429")
	f.Int64Var(&cfg.Seed, "seed", 0, "seed of the latency and error draws (0: from the clock)")
	return cmd
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/loanflow/loanflow/api/apibench"
	"github.com/loanflow/loanflow/internal/benchreport"
	"github.com/loanflow/loanflow/internal/enginebench"
	"github.com/loanflow/loanflow/internal/peerbench"
	"github.com/spf13/cobra"
)

func init() { addCommand(newBenchCmd) }

func newBenchCmd() *cobra.Command {
	var out, only, steps, peerWorkloads, peerNames string
	var quick, peers bool
	var apiDuration time.Duration
	var apiClient string
	var peerScale float64
	var peerRuns int
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run every benchmark beside its same-run baseline and write the report",
		Long: `bench starts its own PostgreSQL, redis-server, embedded broker and schema
registry in a temporary directory, runs the engine, Avro, CDC and API
benchmarks, each beside a baseline measured in the same run, and writes the
report (Markdown) to --out. The end-to-end section (e2e) runs this binary's
own loanflow dev on free ports and drives it with loanflow load; its CPU
profile of loanflow dev goes to bench-profiles/ beside --out. A full run takes several minutes; --quick cuts
every run short to check the command works (its figures mean little).

--peers adds Loanflow beside its peers: Kafka Streams 4.4.0 and Flink 2.3.0
(windowed count, event-time stream-table join, recovery after SIGKILL) and
Debezium 3.6.1 embedded (PostgreSQL CDC into Kafka), each built from
bench/peers with Maven and run as its own process against one Apache Kafka
4.4 broker; it needs java (17+) and mvn, and takes long at full size
(--peer-scale 0.1 for a quick look).`,
		Example: "  loanflow bench --peers --out BENCHMARKS.md\n  loanflow bench --only engine --quick\n  loanflow bench --only peers --peer-scale 0.1 --peer-runs 1 --peer-workloads window",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if apiClient != apibench.ClientRaw && apiClient != apibench.ClientNetHTTP {
				return fmt.Errorf("--api-client %q: use %s or %s", apiClient, apibench.ClientRaw, apibench.ClientNetHTTP)
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			profiles := "bench-profiles"
			if out != "" && out != "-" {
				profiles = filepath.Join(filepath.Dir(out), "bench-profiles")
			}
			cfg := benchreport.Config{Quick: quick, APIDuration: apiDuration, APIClient: apiClient, Progress: cmd.ErrOrStderr(), Loanflow: exe, ProfileDir: profiles,
				WorkerCommand: func(spec string) *exec.Cmd { return exec.Command(exe, "bench-worker", spec) },
				PeerCommand:   func(spec string) *exec.Cmd { return exec.Command(exe, "bench-peer-worker", spec) },
				CLI:           func(args ...string) *exec.Cmd { return exec.Command(exe, args...) },
				Peers:         peers, PeerScale: peerScale, PeerRuns: peerRuns}
			if peerWorkloads != "" {
				cfg.PeerWorkloads = strings.Split(peerWorkloads, ",")
				for _, w := range cfg.PeerWorkloads {
					switch w {
					case "window", "join", "recovery", "cdc":
					default:
						return fmt.Errorf("unknown workload %q in --peer-workloads; choose from window, join, recovery, cdc", w)
					}
				}
			}
			if peerNames != "" {
				cfg.PeerNames = strings.Split(peerNames, ",")
				for _, p := range cfg.PeerNames {
					switch p {
					case "kstreams", "flink", "debezium":
					default:
						return fmt.Errorf("unknown peer %q in --peer-names; choose from kstreams, flink, debezium", p)
					}
				}
			}
			if only != "" {
				cfg.Sections = strings.Split(only, ",")
				for _, s := range cfg.Sections {
					switch s {
					case "engine", "avro", "cdc", "api", "e2e", "peers":
					default:
						return fmt.Errorf("unknown section %q in --only; choose from engine, avro, cdc, api, e2e, peers", s)
					}
				}
			}
			if cfg.E2ESteps, err = parseSteps(steps); err != nil {
				return err
			}
			md, err := benchreport.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = fmt.Fprint(cmd.OutOrStdout(), md)
				return err
			}
			if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "bench: report written to %s\n", out)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "-", "file to write the Markdown report to (- for stdout)")
	cmd.Flags().DurationVar(&apiDuration, "api-duration", 0, "length of each API phase (cache hits, misses, loan updates; default 60s, 3s with --quick)")
	cmd.Flags().StringVar(&apiClient, "api-client", apibench.ClientRaw, "the API load generator's HTTP client: raw (plain HTTP/1.1, the default) or net/http (to compare)")
	cmd.Flags().StringVar(&only, "only", "", "comma-separated sections to run: engine, avro, cdc, api, e2e, peers (default all; peers only with --peers)")
	cmd.Flags().StringVar(&steps, "e2e-steps", "", "sustained steps of the e2e section, RATE:DURATION,... (default 1000:1m,3000:5m; with --quick 200:5s,500:5s)")
	cmd.Flags().BoolVar(&peers, "peers", false, "also run Loanflow beside its peers (Kafka Streams, Flink, Debezium; needs java and mvn, builds bench/peers)")
	cmd.Flags().Float64Var(&peerScale, "peer-scale", 1, "multiply the peer workloads' sizes (0.1 for a quick look; the report says so)")
	cmd.Flags().IntVar(&peerRuns, "peer-runs", 3, "runs per side and peer workload (the median is shown)")
	cmd.Flags().StringVar(&peerWorkloads, "peer-workloads", "", "comma-separated peer workloads: window, join, recovery, cdc (default all)")
	cmd.Flags().StringVar(&peerNames, "peer-names", "", "comma-separated peers: kstreams, flink, debezium (default all)")
	cmd.Flags().BoolVar(&quick, "quick", false, "cut every run short (checks the command; the figures mean little)")
	return cmd
}

// parseSteps reads --e2e-steps: RATE:DURATION pairs.
func parseSteps(s string) ([]benchreport.E2EStep, error) {
	var out []benchreport.E2EStep
	for _, p := range splitList(s) {
		r, d, ok := strings.Cut(p, ":")
		rate, rerr := strconv.ParseFloat(r, 64)
		dur, derr := time.ParseDuration(d)
		if !ok || rerr != nil || derr != nil || rate <= 0 || dur <= 0 {
			return nil, fmt.Errorf("--e2e-steps %q: write RATE:DURATION pairs, e.g. 1000:1m,3000:5m", p)
		}
		out = append(out, benchreport.E2EStep{Rate: rate, Duration: dur})
	}
	return out, nil
}

func init() {
	addCommand(func() *cobra.Command {
		return &cobra.Command{
			Use:    "bench-worker SPEC",
			Short:  "Internal: a worker process of the recovery benchmark",
			Hidden: true,
			Args:   cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return enginebench.WorkerMain(cmd.Context(), args[0])
			},
		}
	})
}

func init() {
	addCommand(func() *cobra.Command {
		return &cobra.Command{
			Use:    "bench-peer-worker SPEC",
			Short:  "Internal: the Loanflow side of a peer benchmark",
			Hidden: true,
			Args:   cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return peerbench.WorkerMain(cmd.Context(), args[0])
			},
		}
	})
}

func init() {
	addCommand(func() *cobra.Command {
		return &cobra.Command{
			Use:    "bench-api-load",
			Short:  "Internal: the API benchmark's load generator, a process of its own (a LoadSpec as JSON on stdin, a LoadResult as JSON on stdout)",
			Hidden: true,
			Args:   cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				var spec apibench.LoadSpec
				if err := json.NewDecoder(cmd.InOrStdin()).Decode(&spec); err != nil {
					return fmt.Errorf("reading the load spec from stdin: %w", err)
				}
				out := cmd.OutOrStdout()
				res, err := apibench.Generate(cmd.Context(), spec, func(t time.Time) {
					fmt.Fprintf(out, "%s%s\n", apibench.StartedLine, t.Format(time.RFC3339Nano))
				})
				if err != nil {
					return err
				}
				return json.NewEncoder(out).Encode(res)
			},
		}
	})
}

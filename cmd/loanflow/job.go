package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/buildinfo"
	"github.com/loanflow/loanflow/internal/logfmt"
	"github.com/loanflow/loanflow/jobs"
)

func init() { addCommand(newJobCmd) }

func newJobCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Launch, inspect, stop and restore dataflow jobs",
		Long: `A job runs as one or more worker processes (loanflow job run NAME); workers
of one job share its partitions through the consumer group loanflow-NAME,
so starting another worker scales it out. Each worker serves /metrics,
/healthz, /readyz, /status, /debug/pprof/, POST /stop and POST /savepoint
on its admin address, which it advertises to the group: status, stop,
savepoint and reset address a job by NAME and find its workers themselves.

Admin ports (loanflow job run's default, loanflow dev and docker-compose):
decisions 9100, cache-invalidation 9101, portfolio 9102.`,
	}
	cmd.AddCommand(newJobListCmd(), newJobDescribeCmd(), newJobRunCmd(), newJobStatusCmd(), newJobStopCmd(),
		newJobSavepointCmd(), newJobResetCmd())
	return cmd
}

// envFlags are the job environment flags shared by run and describe.
type envFlags struct {
	brokers, registry, redis, database, bureau string
	decisionsJoin                              string
}

func (e *envFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&e.brokers, "brokers", envOr("LOANFLOW_BROKERS", "127.0.0.1:9092"), "Kafka seed brokers, comma-separated (env LOANFLOW_BROKERS)")
	f.StringVar(&e.registry, "schema-registry", envOr("LOANFLOW_SCHEMA_REGISTRY", "http://127.0.0.1:8081"), "schema registry URL (env LOANFLOW_SCHEMA_REGISTRY)")
	f.StringVar(&e.redis, "redis-url", envOr("REDIS_URL", "redis://127.0.0.1:6379/0"), "Redis URL (env REDIS_URL)")
	f.StringVar(&e.database, "database-url", os.Getenv("DATABASE_URL"), "PostgreSQL URL (env DATABASE_URL)")
	f.StringVar(&e.bureau, "bureau-url", envOr("LOANFLOW_BUREAU_URL", "http://127.0.0.1:8090"), "credit bureau URL (env LOANFLOW_BUREAU_URL)")
	f.StringVar(&e.decisionsJoin, "decisions-join", envOr("LOANFLOW_DECISIONS_JOIN", jobs.JoinAsOf),
		"decisions job: as-of (customer_360 as of the application's time) or lookup (the newest version read, at once) (env LOANFLOW_DECISIONS_JOIN)")
}

func (e *envFlags) env(log *slog.Logger) jobs.Env {
	return jobs.Env{Brokers: splitList(e.brokers), SchemaRegistryURL: e.registry, RedisURL: e.redis,
		DatabaseURL: e.database, BureauURL: e.bureau, Logger: log, Decisions: jobs.DecisionsConfig{JoinMode: e.decisionsJoin}}
}

func newJobListCmd() *cobra.Command {
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the jobs this binary can run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			type row struct {
				Job       string `json:"job"`
				Summary   string `json:"summary"`
				AdminPort int    `json:"admin_port,omitempty"`
			}
			var rows []row
			for _, j := range jobs.List() {
				rows = append(rows, row{j.Name, j.Summary, j.AdminPort})
			}
			return out.write(cmd.OutOrStdout(), rows, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "JOB\tADMIN PORT\tSUMMARY")
				for _, r := range rows {
					fmt.Fprintf(tw, "%s\t%d\t%s\n", r.Job, r.AdminPort, r.Summary)
				}
			})
		},
	}
	out.register(cmd)
	return cmd
}

func newJobDescribeCmd() *cobra.Command {
	var env envFlags
	var offline bool
	cmd := &cobra.Command{
		Use:   "describe NAME",
		Short: "Print a job's plan: subtopologies, tasks, topics and state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e := env.env(slog.New(slog.DiscardHandler))
			e.Offline = true // the plan needs the graph, not the servers (nor schema registrations)
			b, err := jobs.Builder(args[0], e)
			if err != nil {
				return err
			}
			plan, err := b.Plan()
			if err != nil {
				return err
			}
			if !offline {
				counts, err := topicCounts(cmd.Context(), splitList(env.brokers))
				if err != nil {
					return fmt.Errorf("%w (pass --offline to describe without a broker)", err)
				}
				if err := plan.Resolve(func(t string) (int32, bool) { c, ok := counts[t]; return c, ok }); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "note:", err)
				}
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), plan.Describe())
			return err
		},
	}
	env.register(cmd)
	cmd.Flags().BoolVar(&offline, "offline", false, "do not ask the broker for partition counts")
	return cmd
}

func topicCounts(ctx context.Context, brokers []string) (map[string]int32, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	td, err := kadm.NewClient(cl).ListTopics(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing topics on %v: %w", brokers, err)
	}
	out := map[string]int32{}
	for t, d := range td {
		out[t] = int32(len(d.Partitions))
	}
	return out, nil
}

// runFlags configure `job run`.
type runFlags struct {
	env                             envFlags
	stateDir, workerID, delivery    string
	admin, advertise, fromSavepoint string
	commitInterval, sessionTimeout  time.Duration
	transactionTimeout, summary     time.Duration
	defaultPartitions               int32
}

func newJobRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run NAME",
		Short: "Run a worker of a job (start more workers with the same NAME to scale out)",
		Long: `Runs one worker process of job NAME until SIGINT/SIGTERM, which stops it
gracefully (a final checkpoint, then leaving the group). The worker creates
missing topics, restores its tasks' state (local Pebble in --state-dir plus
the changelog tail) and checkpoints every --commit-interval. With
--from-savepoint it first resets the job to a savepoint written by
'loanflow job stop NAME --savepoint DIR' or 'loanflow job savepoint NAME DIR'
(the job must be stopped).`,
		Example: `  loanflow job run decisions --state-dir /var/lib/loanflow/w1
  loanflow job run portfolio --delivery at-least-once`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runJob(cmd.Context(), args[0], f, cmd.ErrOrStderr())
		},
	}
	f.env.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.stateDir, "state-dir", envOr("LOANFLOW_STATE_DIR", ".loanflow/state"), "directory of this worker's local state (env LOANFLOW_STATE_DIR)")
	fl.StringVar(&f.workerID, "worker-id", os.Getenv("LOANFLOW_WORKER_ID"), "stable id of this worker; a restarted worker with the same id takes its tasks back at once (default: host name + hash of --state-dir)")
	fl.StringVar(&f.delivery, "delivery", string(kafka.ExactlyOnce), "exactly-once or at-least-once")
	fl.StringVar(&f.admin, "admin-addr", envOr("LOANFLOW_ADMIN_ADDR", "auto"), "admin and metrics listen address; auto: 127.0.0.1 and the job's port (decisions 9100, cache-invalidation 9101, portfolio 9102); empty to disable (env LOANFLOW_ADMIN_ADDR)")
	fl.StringVar(&f.advertise, "admin-advertise-addr", os.Getenv("LOANFLOW_ADMIN_ADVERTISE_ADDR"), "admin address as loanflow job status/stop reach it, advertised to the group (default: --admin-addr, with this host's name when it listens on all interfaces; env LOANFLOW_ADMIN_ADVERTISE_ADDR)")
	fl.StringVar(&f.fromSavepoint, "from-savepoint", "", "start from this savepoint directory")
	fl.DurationVar(&f.commitInterval, "commit-interval", 0, "time between checkpoints (default: the job's own, decisions 100ms, the others 200ms)")
	fl.DurationVar(&f.sessionTimeout, "session-timeout", 10*time.Second, "consumer group session timeout")
	fl.DurationVar(&f.transactionTimeout, "transaction-timeout", 10*time.Second, "how long a crashed worker's open transaction can hold readers back")
	fl.DurationVar(&f.summary, "summary-interval", time.Minute, "how often the worker logs a summary line (rates, lag, checkpoint age) and warns about what degraded; -1ns disables it")
	fl.Int32Var(&f.defaultPartitions, "default-partitions", 6, "partitions of topics the worker creates when nothing else decides")
	return cmd
}

func runJob(ctx context.Context, name string, f runFlags, logw io.Writer) error {
	// The worker adds job itself; the job's own code logs through env.
	wlog := slog.New(slog.NewJSONHandler(logw, logfmt.Options(slog.LevelInfo)))
	log := wlog.With("job", name)
	switch kafka.Delivery(f.delivery) {
	case kafka.ExactlyOnce, kafka.AtLeastOnce:
	default:
		return fmt.Errorf("--delivery %q: use exactly-once or at-least-once", f.delivery)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}), buildinfo.Collector())
	env := f.env.env(log)
	env.Registerer = reg // the job's own metrics (portfolio gauges) beside the worker's
	b, err := jobs.Builder(name, env)
	if err != nil {
		return err
	}
	ln, advertised, err := adminListener(name, f.admin, f.advertise)
	if err != nil {
		return err
	}
	if ln != nil {
		defer ln.Close()
	}
	w, err := kafka.NewWorker(b, kafka.Config{
		Brokers: splitList(f.env.brokers), StateDir: f.stateDir, WorkerID: f.workerID, Delivery: kafka.Delivery(f.delivery),
		CommitInterval:    cmp.Or(f.commitInterval, jobs.CommitIntervalOf(name)),
		MinCommitInterval: jobs.MinCommitIntervalOf(name, cmp.Or(f.commitInterval, jobs.CommitIntervalOf(name))), SessionTimeout: f.sessionTimeout, TransactionTimeout: f.transactionTimeout,
		DefaultPartitions: f.defaultPartitions, FromSavepoint: f.fromSavepoint, AdminAddr: advertised, SummaryInterval: f.summary, Registerer: reg, Logger: wlog,
	})
	if err != nil {
		return err
	}
	if ln != nil {
		srv := &http.Server{Handler: kafka.AdminHandler(w, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("worker admin listening", "addr", ln.Addr().String(), "advertised", advertised)
	}
	return w.Run(ctx)
}

// adminListener binds a worker's admin address (auto: the job's port in
// the port map) and returns the address to advertise.
func adminListener(job, addr, advertise string) (net.Listener, string, error) {
	if addr == "" {
		return nil, "", nil
	}
	if addr == "auto" {
		addr = "127.0.0.1:0"
		if j, ok := jobs.Get(job); ok && j.AdminPort != 0 {
			addr = fmt.Sprintf("127.0.0.1:%d", j.AdminPort)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("admin address %s: %w (choose another with --admin-addr)", addr, err)
	}
	if advertise != "" {
		return ln, advertise, nil
	}
	tcp := ln.Addr().(*net.TCPAddr)
	host := tcp.IP.String()
	if tcp.IP.IsUnspecified() {
		if host, err = os.Hostname(); err != nil {
			ln.Close()
			return nil, "", fmt.Errorf("admin address %s listens on every interface and the host name is unknown (%w): give --admin-advertise-addr", addr, err)
		}
	}
	return ln, net.JoinHostPort(host, fmt.Sprint(tcp.Port)), nil
}

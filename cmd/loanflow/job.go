package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/connectors/kafka"
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
/healthz, /readyz, /status and POST /stop on its admin address.`,
	}
	cmd.AddCommand(newJobListCmd(), newJobDescribeCmd(), newJobRunCmd(), newJobStatusCmd(), newJobStopCmd())
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
	return &cobra.Command{
		Use:   "list",
		Short: "List the jobs this binary can run",
		RunE: func(cmd *cobra.Command, _ []string) error {
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB\tSUMMARY")
			for _, j := range jobs.List() {
				fmt.Fprintf(tw, "%s\t%s\n", j.Name, j.Summary)
			}
			return tw.Flush()
		},
	}
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
	env                            envFlags
	stateDir, workerID, delivery   string
	admin, fromSavepoint           string
	commitInterval, sessionTimeout time.Duration
	transactionTimeout             time.Duration
	defaultPartitions              int32
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
'loanflow job stop --savepoint DIR' (the job must be stopped).`,
		Example: `  loanflow job run decisions --state-dir /var/lib/loanflow/w1 --admin-addr 127.0.0.1:9100
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
	fl.StringVar(&f.admin, "admin-addr", envOr("LOANFLOW_ADMIN_ADDR", "127.0.0.1:9100"), "admin and metrics listen address (empty to disable)")
	fl.StringVar(&f.fromSavepoint, "from-savepoint", "", "start from this savepoint directory")
	fl.DurationVar(&f.commitInterval, "commit-interval", 200*time.Millisecond, "time between checkpoints")
	fl.DurationVar(&f.sessionTimeout, "session-timeout", 10*time.Second, "consumer group session timeout")
	fl.DurationVar(&f.transactionTimeout, "transaction-timeout", 10*time.Second, "how long a crashed worker's open transaction can hold readers back")
	fl.Int32Var(&f.defaultPartitions, "default-partitions", 6, "partitions of topics the worker creates when nothing else decides")
	return cmd
}

func runJob(ctx context.Context, name string, f runFlags, logw io.Writer) error {
	log := slog.New(slog.NewJSONHandler(logw, nil)).With("job", name)
	switch kafka.Delivery(f.delivery) {
	case kafka.ExactlyOnce, kafka.AtLeastOnce:
	default:
		return fmt.Errorf("--delivery %q: use exactly-once or at-least-once", f.delivery)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	env := f.env.env(log)
	env.Registerer = reg // the job's own metrics (portfolio gauges) beside the worker's
	b, err := jobs.Builder(name, env)
	if err != nil {
		return err
	}
	w, err := kafka.NewWorker(b, kafka.Config{
		Brokers: splitList(f.env.brokers), StateDir: f.stateDir, WorkerID: f.workerID, Delivery: kafka.Delivery(f.delivery),
		CommitInterval: f.commitInterval, SessionTimeout: f.sessionTimeout, TransactionTimeout: f.transactionTimeout,
		DefaultPartitions: f.defaultPartitions, FromSavepoint: f.fromSavepoint, Registerer: reg, Logger: log,
	})
	if err != nil {
		return err
	}
	if f.admin != "" {
		ln, err := net.Listen("tcp", f.admin)
		if err != nil {
			return fmt.Errorf("admin address %s: %w (choose another with --admin-addr)", f.admin, err)
		}
		srv := &http.Server{Handler: kafka.AdminHandler(w, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("worker admin listening", "addr", ln.Addr().String())
	}
	return w.Run(ctx)
}

func newJobStatusCmd() *cobra.Command {
	var admins, brokers string
	cmd := &cobra.Command{
		Use:   "status [NAME]",
		Short: "Show a job's workers, their tasks and checkpoints, and its consumer lag",
		Long: `With NAME, asks the brokers for the job's consumer group: members, the
partitions each owns and the lag per partition. With --admin, asks workers
directly for their tasks and last checkpoint.`,
		Example: "  loanflow job status decisions\n  loanflow job status --admin 127.0.0.1:9100,127.0.0.1:9101",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if len(args) == 0 && admins == "" {
				return errors.New("give a job NAME (group status from the brokers) or --admin addresses (worker status)")
			}
			if len(args) == 1 {
				if err := groupStatus(cmd.Context(), out, args[0], splitList(brokers)); err != nil {
					return err
				}
			}
			for _, a := range splitList(admins) {
				var st kafka.WorkerStatus
				if err := getJSON(cmd.Context(), "http://"+a+"/status", &st); err != nil {
					return fmt.Errorf("worker at %s: %w", a, err)
				}
				age := "never"
				if !st.LastCheckpoint.IsZero() {
					age = time.Since(st.LastCheckpoint).Round(time.Millisecond).String() + " ago"
				}
				fmt.Fprintf(out, "worker %s (job %s, %s): ready=%v, %d checkpoints, last %s, tasks %s\n",
					st.Worker, st.Job, a, st.Ready, st.Checkpoints, age, strings.Join(st.Tasks, " "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&admins, "admin", "", "worker admin addresses, comma-separated")
	cmd.Flags().StringVar(&brokers, "brokers", envOr("LOANFLOW_BROKERS", "127.0.0.1:9092"), "Kafka seed brokers (env LOANFLOW_BROKERS)")
	return cmd
}

func groupStatus(ctx context.Context, out io.Writer, job string, brokers []string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	group := kafka.Group(job)
	lags, err := adm.Lag(ctx, group)
	if err != nil {
		return fmt.Errorf("describing group %s: %w", group, err)
	}
	l, ok := lags[group]
	if !ok {
		return fmt.Errorf("group %s not found: has job %s ever run?", group, job)
	}
	if err := l.Error(); err != nil {
		return fmt.Errorf("group %s: %w", group, err)
	}
	fmt.Fprintf(out, "job %s: group %s, state %s, %d workers\n", job, group, l.State, len(l.Members))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tPARTITION\tWORKER\tCOMMITTED\tEND\tLAG")
	var rows []kadm.GroupMemberLag
	for _, ps := range l.Lag {
		for _, m := range ps {
			rows = append(rows, m)
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Topic != rows[j].Topic {
			return rows[i].Topic < rows[j].Topic
		}
		return rows[i].Partition < rows[j].Partition
	})
	for _, r := range rows {
		worker := "-"
		if r.Member != nil {
			worker = r.Member.ClientID
			if r.Member.InstanceID != nil {
				worker = *r.Member.InstanceID
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\n", r.Topic, r.Partition, worker, r.Commit.At, r.End.Offset, r.Lag)
	}
	return tw.Flush()
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func newJobStopCmd() *cobra.Command {
	var admins, savepoint string
	cmd := &cobra.Command{
		Use:   "stop --admin ADDR[,ADDR...] [--savepoint DIR]",
		Short: "Stop workers gracefully, optionally writing a savepoint",
		Long: `Asks each worker to take a final checkpoint and leave its group. With
--savepoint, every worker writes its tasks' state and offsets into DIR (give
all of the job's workers, sharing DIR); restart the job from it with
'loanflow job run NAME --from-savepoint DIR'.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addrs := splitList(admins)
			if len(addrs) == 0 {
				return errors.New("--admin is required: the admin addresses of the workers to stop")
			}
			for _, a := range addrs {
				url := "http://" + a + "/stop"
				if savepoint != "" {
					url += "?savepoint=" + savepoint
				}
				req, err := http.NewRequestWithContext(cmd.Context(), http.MethodPost, url, nil)
				if err != nil {
					return err
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return fmt.Errorf("worker at %s: %w", a, err)
				}
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("worker at %s: %s: %s", a, resp.Status, strings.TrimSpace(string(body)))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "worker at %s stopped\n", a)
			}
			if savepoint != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "savepoint in %s; restart with: loanflow job run NAME --from-savepoint %s\n", savepoint, savepoint)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&admins, "admin", "", "worker admin addresses, comma-separated")
	cmd.Flags().StringVar(&savepoint, "savepoint", "", "directory to write a savepoint to")
	return cmd
}

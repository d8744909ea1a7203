package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/jobs"
)

// brokersFlag registers --brokers.
func brokersFlag(cmd *cobra.Command, v *string) {
	cmd.Flags().StringVar(v, "brokers", envOr("LOANFLOW_BROKERS", "127.0.0.1:9092"), "Kafka seed brokers, comma-separated (env LOANFLOW_BROKERS)")
}

func newJobStatusCmd() *cobra.Command {
	var brokers string
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a job's workers and their health, its tasks and its lag",
		Long: `Finds the job's workers through its consumer group (each advertises its admin
address), asks each for its tasks, readiness, checkpoints and failed tasks,
and reports the lag of every input partition net of transaction markers and
aborted records (what a read_committed reader still has to read), with the
total. A worker is healthy when it is ready, has no failed task and
checkpointed within the last minute. Exits 1 when the job is unhealthy.`,
		Example: "  loanflow job status decisions\n  loanflow job status decisions --output json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			c, err := newJobCtl(args[0], splitList(brokers))
			if err != nil {
				return err
			}
			defer c.close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			st, err := c.state(ctx)
			if err != nil {
				return err
			}
			if err := out.write(cmd.OutOrStdout(), st, func(tw *tabwriter.Writer) { printJobState(tw, st) }); err != nil {
				return err
			}
			if !st.Healthy {
				return errUnhealthy
			}
			return nil
		},
	}
	brokersFlag(cmd, &brokers)
	out.register(cmd)
	return cmd
}

// errUnhealthy makes `job status` exit 1 after printing the state.
var errUnhealthy = errors.New("the job is not healthy (see HEALTH above)")

func printJobState(tw *tabwriter.Writer, st jobState) {
	fmt.Fprintf(tw, "job %s: group %s, state %s, %d workers, lag %d (net of transaction markers)\n\n",
		st.Job, st.Group, st.State, len(st.Workers), st.TotalLag)
	fmt.Fprintln(tw, "WORKER\tADMIN\tREADY\tTASKS\tCHECKPOINTS\tLAST CHECKPOINT\tHEALTH")
	for _, w := range st.Workers {
		ready, tasks, cps, last := "?", "?", "?", "?"
		if s := w.Status; s != nil {
			ready, tasks, cps, last = fmt.Sprint(s.Ready), fmt.Sprint(len(s.Tasks)), fmt.Sprint(s.Checkpoints), "never"
			if !s.LastCheckpoint.IsZero() {
				last = time.Since(s.LastCheckpoint).Round(100*time.Millisecond).String() + " ago"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", w.Worker, orDash(w.Admin), ready, tasks, cps, last, w.Health)
	}
	if len(st.Workers) == 0 {
		fmt.Fprintln(tw, "(no worker: the job is stopped; start it with loanflow job run "+st.Job+")")
	}
	fmt.Fprintln(tw, "\nTOPIC\tPARTITION\tWORKER\tCOMMITTED\tEND\tLAG")
	for _, p := range st.Partitions {
		lag := fmt.Sprint(p.Lag)
		if !p.Exact {
			lag = "≤" + lag
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\n", p.Topic, p.Partition, orDash(p.Worker), p.Committed, p.End, lag)
	}
	fmt.Fprintf(tw, "TOTAL\t\t\t\t\t%d\n", st.TotalLag)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// adminFlags are the flags of stop and savepoint.
type adminFlags struct {
	brokers, admins string
}

func (a *adminFlags) register(cmd *cobra.Command) {
	brokersFlag(cmd, &a.brokers)
	cmd.Flags().StringVar(&a.admins, "admin", "", "address the job's workers by admin address instead of through the group (each must run the job)")
}

// absDir resolves a savepoint directory against the current directory: a
// worker would resolve a relative one against its own.
func absDir(dir string) (string, error) {
	if dir == "" {
		return "", nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("savepoint directory %s: %w", dir, err)
	}
	return abs, nil
}

func newJobStopCmd() *cobra.Command {
	var af adminFlags
	var savepoint string
	cmd := &cobra.Command{
		Use:   "stop NAME [--savepoint DIR]",
		Short: "Stop a job's workers gracefully, optionally writing a savepoint",
		Long: `Finds the job's workers through its consumer group and asks all of them at
once to take a final checkpoint and leave the group, printing each worker's
outcome. A worker of another job is never stopped (each request names the
job; --admin addresses are checked first). With --savepoint every worker
writes its tasks' state and offsets into DIR (made absolute here; with
workers on several machines use a shared path), and the command prints how
to resume from it.`,
		Example: "  loanflow job stop decisions\n  loanflow job stop decisions --savepoint /var/lib/loanflow/savepoints/sp1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := absDir(savepoint)
			if err != nil {
				return err
			}
			q := url.Values{}
			if dir != "" {
				q.Set("savepoint", dir)
			}
			if err := fanOut(cmd, args[0], af, "/stop", q, "stopping", "stopped"); err != nil {
				if dir != "" {
					err = fmt.Errorf("%w\nthe savepoint in %s is incomplete: do not restore from it", err, dir)
				}
				return err
			}
			w := cmd.OutOrStdout()
			if dir != "" {
				fmt.Fprintf(w, "savepoint in %s\nresume with: loanflow job run %s --from-savepoint %s\n", dir, args[0], shellQuote(dir))
			} else {
				fmt.Fprintf(w, "resume with: loanflow job run %s\n", args[0])
			}
			return nil
		},
	}
	af.register(cmd)
	cmd.Flags().StringVar(&savepoint, "savepoint", "", "directory to write a savepoint to")
	return cmd
}

func newJobSavepointCmd() *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "savepoint NAME DIR",
		Short: "Write a savepoint of a running job without stopping it",
		Long: `Asks every worker of the job to take a checkpoint and write its tasks' state
and offsets into DIR (made absolute here), then to go on. Restore it like a
stop's savepoint: stop the job, then loanflow job run NAME --from-savepoint DIR.

A job whose workers send one another records through repartition topics
(portfolio) has a consistent savepoint only when one worker holds all its
tasks: with more workers, the command refuses; use
loanflow job stop NAME --savepoint DIR instead.`,
		Example: "  loanflow job savepoint decisions /var/lib/loanflow/savepoints/before-upgrade",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := absDir(args[1])
			if err != nil {
				return err
			}
			if err := refuseInconsistentSavepoint(cmd.Context(), args[0], af); err != nil {
				return err
			}
			if err := fanOut(cmd, args[0], af, "/savepoint", url.Values{"dir": {dir}}, "savepointing", "savepoint written"); err != nil {
				return fmt.Errorf("%w\nthe savepoint in %s is incomplete: do not restore from it", err, dir)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "savepoint in %s; the job keeps running\nrestore with: loanflow job stop %s && loanflow job run %s --from-savepoint %s\n",
				dir, args[0], args[0], shellQuote(dir))
			return nil
		},
	}
	af.register(cmd)
	return cmd
}

// refuseInconsistentSavepoint refuses a savepoint of a running job with
// repartition topics and several workers.
func refuseInconsistentSavepoint(ctx context.Context, job string, af adminFlags) error {
	b, err := jobs.Builder(job, jobs.Env{Offline: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	plan, err := b.Plan()
	if err != nil {
		return err
	}
	var reps []string
	for _, s := range plan.Subtopologies {
		for _, in := range s.Inputs {
			if in.Repartition {
				reps = append(reps, in.Topic)
			}
		}
	}
	if len(reps) == 0 {
		return nil
	}
	c, err := newJobCtl(job, splitList(af.brokers))
	if err != nil {
		return err
	}
	defer c.close()
	g, err := c.describe(ctx)
	if err != nil {
		return err
	}
	if n := len(g.Members); n > 1 {
		return fmt.Errorf("job %s has %d workers and repartition topics (%s): a savepoint of it while it runs would not be consistent; "+
			"use loanflow job stop %s --savepoint DIR", job, n, strings.Join(reps, ", "), job)
	}
	return nil
}

// fanOut posts path to every worker of the job at once and prints each
// outcome as it arrives.
func fanOut(cmd *cobra.Command, job string, af adminFlags, path string, q url.Values, doing, done string) error {
	c, err := newJobCtl(job, splitList(af.brokers))
	if err != nil {
		return err
	}
	defer c.close()
	ctx := cmd.Context()
	ws, err := c.targets(ctx, splitList(af.admins))
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format, a...)
	}
	for _, w := range ws {
		say("%s worker %s at %s (%d partitions)...\n", doing, w.Worker, w.Admin, w.Partitions)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(ws))
	for i, w := range ws {
		wg.Go(func() {
			res, err := c.post(ctx, w.Admin, path, q)
			if err != nil {
				errs[i] = fmt.Errorf("worker %s at %s: %w", w.Worker, w.Admin, err)
				say("worker %s at %s: FAILED: %v\n", w.Worker, w.Admin, err)
				return
			}
			say("worker %s at %s: %s (tasks %s)\n", w.Worker, w.Admin, done, strings.Join(res.Tasks, " "))
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+=:,@", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
